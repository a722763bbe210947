"""The training loop: exact resume, non-finite losses, checkpoints, model selection."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from polytask.balancing import create_balancer
from polytask.data.base import MultiTaskData, Splits
from polytask.data.multimnist import load_multimnist
from polytask.models import create_model, create_trunk
from polytask.tasks import Task
from polytask.training import (
    CheckpointError,
    NonFiniteLossError,
    TrainSettings,
    fit,
    load_checkpoint,
)
from polytask.training.checkpoint import load_model_state


@pytest.fixture(scope="module")
def mnist() -> Splits:
    return load_multimnist(n=600, seed=0)


def _train(splits: Splits, run_dir: Path, balancer: str = "uncertainty", **kw: object):
    torch.manual_seed(0)
    model = create_model("hard_sharing", create_trunk("mlp", in_features=784, hidden=(32,)), splits.tasks)
    bal = create_balancer(balancer, [t.name for t in splits.tasks])
    settings = TrainSettings(epochs=4, batch_size=64, lr=3e-3, progress=False, tensorboard=False)
    return model, fit(model, splits, bal, settings, run_dir, **kw)  # type: ignore[arg-type]


def _rows(path: Path) -> list[list[str]]:
    with path.open() as fh:
        return list(csv.reader(fh))


@pytest.mark.parametrize("balancer", ["uncertainty", "dwa"])
def test_interrupted_and_resumed_run_ends_exactly_like_an_uninterrupted_one(
    mnist: Splits, tmp_path: Path, balancer: str
) -> None:
    model_a, full = _train(mnist, tmp_path / "full", balancer)
    with pytest.raises(KeyboardInterrupt):
        _train(mnist, tmp_path / "resumed", balancer, stop_after_epoch=1)
    model_b, resumed = _train(mnist, tmp_path / "resumed", balancer, resume=True)
    assert resumed.test == full.test
    assert resumed.best_epoch == full.best_epoch
    for (na, pa), (nb, pb) in zip(model_a.state_dict().items(), model_b.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb), na
    # the logs of the resumed run are the same as the uninterrupted run's (times aside)
    def stable(rows: list[list[str]]) -> list[list[str]]:
        return [r for r in rows if r[3] not in ("epoch_time_s",)]

    assert stable(_rows(tmp_path / "full" / "metrics.csv")) == stable(
        _rows(tmp_path / "resumed" / "metrics.csv")
    )
    assert _rows(tmp_path / "full" / "weights.csv") == _rows(tmp_path / "resumed" / "weights.csv")
    # the divergence watch resumes from the same references (initial norm, per-task lowest loss)
    watch_full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["divergence"]
    watch_resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["divergence"]
    assert watch_full["lowest"] and set(watch_full["lowest"]) == set(model_a.task_names)
    assert watch_resumed == watch_full


def test_run_directory_contents(mnist: Splits, tmp_path: Path) -> None:
    _, result = _train(mnist, tmp_path / "run")
    for name in ["metrics.csv", "weights.csv", "results.json", "tasks.json", "checkpoints/best.pt", "checkpoints/last.pt"]:
        assert (tmp_path / "run" / name).exists(), name
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["selection"] == "val mean_primary"
    assert set(results["test"]) == {"left", "right"}
    weights = _rows(tmp_path / "run" / "weights.csv")
    assert weights[0] == ["step", "epoch", "task", "weight"] and len(weights) > 10
    assert result.test["left"]["accuracy"] > 0.3  # learned something within 4 short epochs


def test_model_selection_never_reads_the_test_split(mnist: Splits, tmp_path: Path) -> None:
    """Scrambling the test labels changes the test metrics but not the selected epoch."""
    _, clean = _train(mnist, tmp_path / "a")
    gen = torch.Generator().manual_seed(1)
    scrambled_test = MultiTaskData(
        inputs=mnist.test.inputs,
        targets={k: v[torch.randperm(len(v), generator=gen)] for k, v in mnist.test.targets.items()},
        tasks=mnist.tasks,
    )
    _, scrambled = _train(Splits(mnist.train, mnist.val, scrambled_test), tmp_path / "b")
    assert scrambled.best_epoch == clean.best_epoch
    assert scrambled.val == clean.val
    assert scrambled.test != clean.test


def test_nan_loss_stops_naming_task_and_step_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    tasks = [Task("ok", "regression"), Task("bad", "regression", standardize=False)]
    x = torch.randn(64, 4)
    y_bad = torch.randn(64)
    data = MultiTaskData(x, {"ok": torch.randn(64), "bad": y_bad}, tasks)
    splits = Splits(data, data.subset(range(16)), data.subset(range(16)))
    splits.fit_target_scalers()
    torch.manual_seed(0)
    model = create_model("hard_sharing", create_trunk("mlp", in_features=4, hidden=(8,)), tasks)
    bal = create_balancer("equal", ["ok", "bad"])
    settings = TrainSettings(epochs=3, batch_size=16, progress=False, tensorboard=False)
    fit(model, splits, bal, settings, tmp_path / "run")  # a good run writes last.pt
    before = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    with torch.no_grad():
        model.heads["bad"].weight.fill_(float("inf"))
    with pytest.raises(NonFiniteLossError, match=r"task 'bad' is (nan|inf) at step 0 \(epoch 0\)") as err:
        fit(model, splits, bal, settings, tmp_path / "run")
    assert "last good checkpoint" in str(err.value)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == before


def test_corrupt_and_mismatched_checkpoints_are_named(mnist: Splits, tmp_path: Path) -> None:
    _train(mnist, tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / "best.pt"
    with pytest.raises(CheckpointError, match="trained on tasks"):
        load_checkpoint(path, task_names=["left", "middle"])
    other = create_model("hard_sharing", create_trunk("mlp", in_features=784, hidden=(16,)), mnist.tasks)
    with pytest.raises(CheckpointError, match="has shape"):
        load_model_state(other, load_checkpoint(path), path)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(broken)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_non_finite_inputs_are_refused_with_the_row() -> None:
    x = torch.randn(5, 3)
    x[3, 1] = float("nan")
    data = MultiTaskData(x, {"t": torch.randn(5)}, [Task("t", "regression")])
    with pytest.raises(ValueError, match="row 3"):
        data.validate()


def test_task_without_training_labels_is_refused() -> None:
    tasks = [Task("a", "binary"), Task("b", "binary")]
    x = torch.randn(6, 2)
    train = MultiTaskData(x, {"a": torch.ones(6), "b": torch.full((6,), float("nan"))}, tasks)
    with pytest.raises(ValueError, match="task 'b' has no label in the training split"):
        Splits(train, train, train).validate()
