"""A dense model (ResNet feature map + upsampling decoders) trains through ``fit`` in every engine
mode, and its report shows predicted masks beside the truth.

Why: per-pixel tasks change what one row of the Jacobian is (a sample's loss summed over its
labelled pixels, divided by the batch's labelled-pixel count) and what the shared representation is
(a feature map ``[B, C, h, w]`` instead of a vector). A gradient balancer must see the same
Gramian whether it is built from the full Jacobian or directly (the jacobian and gramian modes take
the same steps), and representation mode must differentiate through the map.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from polytask.balancing import create_balancer
from polytask.data.base import Splits
from polytask.data.mnist_scenes import load_mnist_scenes
from polytask.evaluation.dense_samples import read_dense_samples, write_dense_samples
from polytask.models import create_model, create_trunk
from polytask.models.base import MultiTaskModel
from polytask.report.html import render_report
from polytask.training import FitResult, TrainSettings, fit

MODES = ("jacobian", "gramian", "representation")


@pytest.fixture(scope="module")
def scenes(data_dir: Path) -> Splits:
    return load_mnist_scenes(
        source="idx", path=data_dir, scenes=(8, 4, 4), canvas=32, digits=(2, 2), seed=1
    )


def _model(splits: Splits) -> MultiTaskModel:
    torch.manual_seed(0)
    trunk = create_trunk("resnet", depth=10, width=4, in_channels=1, output="map")
    return create_model("hard_sharing", trunk, splits.tasks, example_input=splits.train.example())


Trained = tuple[MultiTaskModel, list[torch.Tensor], FitResult]


def _train(scenes: Splits, mode: str, run_dir: Path) -> Trained:
    model = _model(scenes)
    start = [p.detach().clone() for p in model.parameters()]
    # SGD: Adam's first step, g / |g| per element, would turn float noise in a near-zero gradient
    # entry into a full-size step and hide whether the modes agree
    settings = TrainSettings(
        epochs=1, batch_size=4, lr=0.05, optimizer="sgd", momentum=0.0, device="cpu",
        engine=mode, progress=False, tensorboard=False, eval_batch_size=4,
    )
    balancer = create_balancer("upgrad", scenes.train.task_names)
    return model, start, fit(model, scenes, balancer, settings, run_dir)


@pytest.fixture(scope="module")
def trained(scenes: Splits, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trained]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: a second thread only waits on the first
    try:
        return {mode: _train(scenes, mode, tmp_path_factory.mktemp(mode)) for mode in MODES}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", MODES)
def test_upgrad_trains_segmentation_and_depth_in_every_engine_mode(
    mode: str, scenes: Splits, trained: dict[str, Trained]
) -> None:
    model, start, result = trained[mode]
    assert result.epochs_run == 1
    counts = scenes.test.label_counts()
    for split in (result.val, result.test):
        for task in ("segmentation", "depth"):
            assert all(math.isfinite(v) for v in split[task].values()), (mode, split[task])
    assert result.test["segmentation"]["labelled"] == counts["segmentation"]
    assert result.test["depth"]["labelled"] == counts["depth"]
    assert 0.0 <= result.test["segmentation"]["miou"] <= 1.0
    moved = [not torch.equal(a, b.detach()) for a, b in zip(start, model.parameters(), strict=True)]
    assert all(moved), f"{mode}: {moved.count(False)} parameter tensors never moved"


def test_jacobian_and_gramian_modes_take_the_same_steps(trained: dict[str, Trained]) -> None:
    jac_model, gram_model = trained["jacobian"][0], trained["gramian"][0]
    for (name, a), b in zip(jac_model.named_parameters(), gram_model.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name


def test_the_report_shows_predicted_masks_beside_the_truth(
    scenes: Splits, trained: dict[str, Trained], tmp_path: Path
) -> None:
    model, _, result = trained["gramian"]
    # the run's results without its curves: the report then draws the dense figure alone
    shutil.copy(result.run_dir / "results.json", tmp_path / "results.json")
    path = write_dense_samples(model, scenes.tasks, scenes.val, tmp_path, n=2)
    assert path is not None
    samples = read_dense_samples(path)
    assert samples["input"].shape == (2, 32, 32)
    seg = samples["tasks"]["segmentation"]
    assert seg["truth"].shape == seg["pred"].shape == (2, 32, 32)
    assert np.array_equal(seg["truth"], scenes.val.targets["segmentation"][:2].numpy())
    assert samples["tasks"]["depth"]["pred"].shape == (2, 32, 32)
    page = render_report(tmp_path)
    section = page[page.index("Dense predictions"):]
    assert '<img src="data:image/png;base64,' in section[:2000]
    # a run without dense tasks writes nothing
    assert write_dense_samples(model, [], scenes.val, tmp_path / "none") is None
    assert not (tmp_path / "none").exists()
