"""The LibMTL side-by-side training (:func:`polytask_bench.libmtl_side.fit_libmtl`) on real digits.

Why these checks: a side-by-side table is only worth printing if both columns trained the same
network on the same batches with the same rule; then methods both libraries implement the same
way must give the same numbers, and a difference in the table means a difference in the method.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from polytask_bench.libmtl_side import fit_libmtl, libmtl_version

from polytask.balancing import create_balancer
from polytask.data.multimnist import load_multimnist
from polytask.models import create_model, create_trunk
from polytask.training import fit
from polytask.training.loop import TrainingError
from polytask.training.settings import TrainSettings

pytestmark = pytest.mark.skipif(
    libmtl_version() is None,
    reason="LibMTL is not installed (scripts/setup.sh installs it: pip install --no-deps libmtl==1.1.5)",
)


def _model(splits, seed: int):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    trunk = create_trunk("small_cnn", channels=[4, 8], out_features=16)
    return create_model("hard_sharing", trunk, splits.tasks, example_input=splits.train.inputs[:2])


@pytest.mark.parametrize("method", ["uncertainty", "dwa", "pcgrad"])
def test_same_method_same_numbers(method: str, tmp_path: Path, data_dir: Path, single_thread: None) -> None:
    splits = load_multimnist(source="idx", n=240, seed=0)
    settings = TrainSettings(epochs=3, batch_size=64, lr=0.002, seed=0, device="cpu",
                             progress=False, tensorboard=False, selection="mean_primary")
    ours = fit(_model(splits, 0), splits, create_balancer(method, [t.name for t in splits.tasks]),
               settings, tmp_path / "ours")
    lib = fit_libmtl(_model(splits, 0), splits, method, settings, tmp_path / "lib")
    assert lib.epochs_run == 3 and len(lib.epoch_times) == 3 and lib.best_epoch == ours.best_epoch
    for task in ("left", "right"):
        # DWA weighs from epoch 2 on (both libraries), so three epochs exercise its weights
        assert lib.val[task]["loss"] == pytest.approx(ours.val[task]["loss"], rel=1e-4)
        assert lib.test[task]["loss"] == pytest.approx(ours.test[task]["loss"], rel=1e-4)
    assert (tmp_path / "lib" / "results.json").exists()


def test_refuses_what_it_cannot_reproduce(tmp_path: Path, data_dir: Path) -> None:
    splits = load_multimnist(source="idx", n=240, seed=0)
    settings = TrainSettings(epochs=1, scheduler="cosine", device="cpu")
    with pytest.raises(TrainingError, match="without scheduler"):
        fit_libmtl(_model(splits, 0), splits, "equal", settings, tmp_path)
    with pytest.raises(ValueError, match="no counterpart of 'nash_mtl'"):
        fit_libmtl(_model(splits, 0), splits, "nash_mtl", TrainSettings(epochs=1, device="cpu"), tmp_path)
