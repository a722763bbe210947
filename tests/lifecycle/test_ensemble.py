"""Ensembles of runs: on the tiny real Census run of conftest.py, and on hand-made predictions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from polytask.lifecycle.ensemble import (
    EnsembleError,
    RunEnsemble,
    build_ensemble,
    greedy_weights,
    score_prediction,
)
from polytask.tasks import Task


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def test_ensemble_of_identical_runs_equals_the_member(census_run: Path, tmp_path: Path) -> None:
    twin = _copy(census_run, tmp_path / "twin")
    result = build_ensemble([census_run, twin], tmp_path / "ens")
    member = json.loads((census_run / "results.json").read_text())
    for row in result.rows:
        task = row["task"]
        assert row["ensemble_val"] == pytest.approx(member["val"][task][row["metric"]], abs=1e-6)
        assert row["ensemble_test"] == pytest.approx(member["test"][task][row["metric"]], abs=1e-6)
        assert sum(row["weights"]) == pytest.approx(1.0)
    # saved, reloaded, predicts the member's probabilities
    reloaded = RunEnsemble.load(tmp_path / "ens")
    from polytask.inference import load_run
    from polytask.lifecycle import load_run_model

    loaded = load_run_model(census_run)
    assert loaded.splits is not None
    x = loaded.splits.test.inputs
    assert isinstance(x, torch.Tensor)
    preds = reloaded.predict(x[:50])
    with torch.no_grad():
        own = loaded.model(x[:50])
    for t in load_run(census_run).tasks:
        expected = t.predict(own[t.name]).double().numpy()
        assert preds[t.name] == pytest.approx(expected, abs=1e-7)


def test_greedy_selection_picks_the_better_member_on_validation() -> None:
    task = Task("y", "binary")
    gen = torch.Generator().manual_seed(0)
    y = (torch.rand(400, generator=gen) < 0.4).float()
    good = torch.where(y == 1, 0.7, 0.3) + 0.25 * torch.rand(400, generator=gen)  # informative
    bad = torch.rand(400, generator=gen)  # noise
    preds = [bad.double(), good.double()]
    w = greedy_weights(preds, lambda p: score_prediction(task, p, y)["auroc"], rounds=6)
    assert w[1] > w[0]
    assert w[1] == pytest.approx(1.0)  # adding noise never helped on validation
    mixed = score_prediction(task, 0.5 * (preds[0] + preds[1]), y)["auroc"]
    assert score_prediction(task, preds[1], y)["auroc"] > mixed


def test_regression_members_are_averaged_in_target_units() -> None:
    task = Task("v", "regression")
    task.target_mean_, task.target_std_ = 10.0, 2.0
    y = torch.tensor([9.0, 11.0, 13.0, 15.0])
    scores = score_prediction(task, y.double(), y)  # a perfect prediction, in target units
    assert scores["mae"] == pytest.approx(0.0, abs=1e-6)
    assert scores["loss"] == pytest.approx(0.0, abs=1e-9)


def test_ensemble_refuses_mismatched_tasks(census_run: Path, tmp_path: Path) -> None:
    other = _copy(census_run, tmp_path / "other")
    tasks = json.loads((other / "tasks.json").read_text())
    tasks[0]["name"] = "renamed"
    (other / "tasks.json").write_text(json.dumps(tasks))
    with pytest.raises(EnsembleError, match=r"differ in their tasks.*renamed"):
        build_ensemble([census_run, other])


def test_ensemble_refuses_different_data_and_splits(census_run: Path, tmp_path: Path) -> None:
    other = _copy(census_run, tmp_path / "other")
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["data"]["options"]["max_rows"] = 1500
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(EnsembleError, match=r"data\.options\.max_rows: 2000 vs 1500"):
        build_ensemble([census_run, other])
    shifted = _copy(census_run, tmp_path / "shifted")
    results = json.loads((shifted / "results.json").read_text())
    results["seed"] = 1
    (shifted / "results.json").write_text(json.dumps(results))
    with pytest.raises(EnsembleError, match=r"split differently.*split seed 0.*with 1"):
        build_ensemble([census_run, shifted])
