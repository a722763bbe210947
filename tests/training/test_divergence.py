"""A diverging run stops with an error naming the task; a healthy one is never stopped.

Why: with lr 10, or DWA at lr 1e4, the losses stay finite (1e10 to 1e30), so the non-finite check
never fires and the run used to end with exit code 0 and absurd results.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from polytask.balancing import create_balancer
from polytask.data import load_table
from polytask.data.base import Splits
from polytask.models import create_model, create_trunk
from polytask.tasks import Task
from polytask.training import DivergenceError, DivergenceMonitor, TrainingError, TrainSettings, fit
from polytask.training.divergence import chance_loss


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Splits:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 6))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(6)])
    frame["y_reg"] = 2 * x[:, 0] + x[:, 1] ** 2 + rng.normal(scale=0.3, size=len(x))
    frame["y_bin"] = (x[:, 2] + x[:, 3] > 0).astype(int)
    path = tmp_path_factory.mktemp("divergence") / "table.csv"
    frame.to_csv(path, index=False)
    return load_table(path, ["y_reg", "y_bin"])


def _fit(splits: Splits, run_dir: Path, balancer: str, lr: float) -> None:
    torch.manual_seed(0)
    trunk = create_trunk("mlp", in_features=6, hidden=(32, 32))
    model = create_model("hard_sharing", trunk, splits.tasks)
    settings = TrainSettings(epochs=3, batch_size=32, lr=lr, progress=False, tensorboard=False)
    fit(model, splits, create_balancer(balancer, [t.name for t in splits.tasks]), settings, run_dir)


@pytest.mark.parametrize(("balancer", "lr"), [("equal", 10.0), ("dwa", 1e4)])
def test_a_diverging_run_stops_naming_the_task(
    table: Splits, tmp_path: Path, balancer: str, lr: float
) -> None:
    with pytest.raises(DivergenceError) as info:
        _fit(table, tmp_path / "run", balancer, lr)
    message = str(info.value)
    assert "task 'y_reg'" in message or "task 'y_bin'" in message
    assert "epoch 0" in message and "steps up to" in message
    assert "training.lr" in message and "grad_clip" in message and "balancer" in message
    assert isinstance(info.value, TrainingError)
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_healthy_run_is_not_stopped(table: Splits, tmp_path: Path) -> None:
    _fit(table, tmp_path / "run", "dwa", 3e-3)
    assert (tmp_path / "run" / "results.json").exists()


def _model(*tasks: Task) -> nn.Module:
    torch.manual_seed(0)
    return create_model("hard_sharing", create_trunk("mlp", in_features=4, hidden=(8,)), list(tasks))


def test_chance_levels() -> None:
    assert chance_loss(Task("b", "binary")) == pytest.approx(math.log(2))
    assert chance_loss(Task("c", "multiclass", num_classes=10)) == pytest.approx(math.log(10))
    assert chance_loss(Task("r", "regression")) == 1.0
    assert chance_loss(Task("r", "regression", standardize=False)) is None


def test_growth_against_the_lowest_epoch_without_a_chance_level() -> None:
    task = Task("raw", "regression", standardize=False)  # no chance level: relative rule only
    model = _model(task)
    monitor = DivergenceMonitor.for_model(model)
    for epoch, loss in enumerate([5e3, 2e3, 1e3, 4e3]):  # noisy but healthy: never stopped
        monitor.update(epoch, 10 * (epoch + 1), ["raw"], [loss], model)
    with pytest.raises(DivergenceError, match=r"task 'raw' .* in epoch 4 \(steps up to 49\)"):
        monitor.update(4, 50, ["raw"], [2e7], model)


def test_a_loss_fitted_to_almost_zero_may_come_back_up() -> None:
    model = _model(Task("raw", "regression", standardize=False))
    monitor = DivergenceMonitor.for_model(model)
    for epoch, loss in enumerate([1.0, 1e-6, 1e-3, 5.0]):  # floor: 1% of the first epoch
        monitor.update(epoch, epoch, ["raw"], [loss], model)


def test_non_finite_loss_and_exploding_parameters() -> None:
    model = _model(Task("y", "binary"))
    with pytest.raises(DivergenceError, match="task 'y' has a mean training loss of inf"):
        DivergenceMonitor.for_model(model).update(0, 5, ["y"], [math.inf], model)
    monitor = DivergenceMonitor.for_model(model)
    with torch.no_grad():
        next(model.heads["y"].parameters()).mul_(1e6)
    with pytest.raises(DivergenceError, match=r"parameter norm .* \(largest: heads\.y\."):
        monitor.update(0, 5, ["y"], [0.5], model)
