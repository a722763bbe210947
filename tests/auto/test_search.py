"""The trainings behind the advice: per-epoch reports, early stops, partition Δm."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from polytask.auto.search import (
    HyperParams,
    Problem,
    partition_delta_m,
    run_partition,
    train_reference,
)
from polytask.config import ExperimentConfig
from polytask.evaluation.metrics import delta_m
from polytask.experiment import load_data

pytestmark = pytest.mark.usefixtures("single_thread")


def test_partition_delta_m_weights_groups_by_size() -> None:
    groups = [["a", "b"], ["c"], ["d", "e", "f"]]
    assert partition_delta_m(groups, {("a", "b"): 3.0, ("d", "e", "f"): -1.0}, 6) == pytest.approx(
        (2 * 3.0 + 3 * -1.0) / 6
    )
    assert partition_delta_m([["a"], ["b"]], {}, 2) == 0.0


def test_a_partition_reports_every_epoch_and_a_raise_stops_it(
    census_csv: Path, small_config: Callable[[Path, list[str]], ExperimentConfig], tmp_path: Path
) -> None:
    config = small_config(census_csv, ["never_married", "female", "full_year"])
    config = config.model_copy(update={
        "data": config.data.model_copy(update={"split_seed": 0}),
        "training": config.training.model_copy(update={"epochs": 3, "tensorboard": False}),
    })
    problem = Problem(config, load_data(config, 0), tmp_path / "p", log=lambda _: None)
    baselines, shared = train_reference(problem, 0, relations=False)
    assert shared.delta_m == pytest.approx(delta_m(shared.val, baselines.val, problem.tasks))
    hp = HyperParams("equal", 1e-2, 0.0)
    reports: list[tuple[int, float]] = []
    groups = [["never_married", "female"], ["full_year"]]
    dm, runs = run_partition(problem, groups, 0, hp, baselines, tmp_path / "r",
                             lambda step, value: reports.append((step, value)))
    assert [s for s, _ in reports] == [0, 1, 2]
    run = runs[("never_married", "female")]
    # the partial Δm of the last epoch is that epoch's group Δm weighted by 2 of 3 tasks
    assert reports[-1][1] == pytest.approx(2 * run.per_epoch_delta_m[-1] / 3)
    assert dm == pytest.approx(2 * run.delta_m / 3)
    assert run.delta_m == pytest.approx(min(run.per_epoch_delta_m))  # selected on validation

    class Stop(Exception):
        pass

    def stop(step: int, value: float) -> None:
        raise Stop(f"step {step}")

    with pytest.raises(Stop, match="step 0"):
        run_partition(problem, groups, 0, hp, baselines, tmp_path / "s", stop)
    epochs = {line.split(",")[0] for line in
              (tmp_path / "s" / "group1-seed0" / "metrics.csv").read_text().splitlines()[1:]}
    assert epochs == {"0"}
