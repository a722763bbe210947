"""The experiment's result table: per-task means over seeds and the mean over tasks."""

from __future__ import annotations

from pathlib import Path

import pytest

from polytask.experiment import ExperimentResult, RunRecord, format_table
from polytask.tasks import Task


def _run(label: str, kind: str, seed: int, test: dict[str, float]) -> RunRecord:
    metrics = {name: {"auroc": value} for name, value in test.items()}
    return RunRecord(label, kind, seed, Path("."), metrics, metrics, None, 1.0)


def test_mean_over_tasks_is_per_seed_then_over_seeds() -> None:
    tasks = [Task("a", "binary"), Task("b", "binary")]
    runs = [
        _run("equal", "mtl", 0, {"a": 0.8, "b": 0.6}),  # seed mean 0.7
        _run("equal", "mtl", 1, {"a": 0.9, "b": 0.9}),  # seed mean 0.9
        # single-task baselines: one run per task and seed, merged per seed
        _run("STL", "stl", 0, {"a": 0.7}),
        _run("STL", "stl", 0, {"b": 0.5}),
    ]
    rows = {r["label"]: r for r in ExperimentResult(Path("."), tasks, runs).rows()}
    mean, std = rows["equal"]["mean_primary"]
    assert mean == pytest.approx(0.8) and std == pytest.approx(0.1414213, rel=1e-5)
    assert rows["STL"]["mean_primary"] == pytest.approx((0.6, 0.0))
    table = format_table(ExperimentResult(Path("."), tasks, runs))
    assert "mean auroc" in table.splitlines()[0]
    assert "0.8000 ± 0.1414" in table


def test_no_mean_over_tasks_with_mixed_metrics() -> None:
    tasks = [Task("a", "binary"), Task("r", "regression")]
    runs = [
        RunRecord(
            "equal", "mtl", 0, Path("."),
            {"a": {"auroc": 0.8}, "r": {"mae": 2.0}}, {"a": {"auroc": 0.8}, "r": {"mae": 2.0}},
            None, 1.0,
        )
    ]
    assert ExperimentResult(Path("."), tasks, runs).rows()[0]["mean_primary"] is None
    assert "mean" not in format_table(ExperimentResult(Path("."), tasks, runs)).splitlines()[0]
