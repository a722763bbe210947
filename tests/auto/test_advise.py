"""``polytask advise`` / ``fit --auto`` on a real 200-row Census slice with a tiny budget."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from polytask.auto import AdviceError, BudgetError, advise, advise_config
from polytask.auto.advise import subset_config
from polytask.auto.search import HyperParams, Problem
from polytask.cli import app
from polytask.config import ExperimentConfig, load_config
from polytask.experiment import load_data

pytestmark = pytest.mark.usefixtures("single_thread")
Small = Callable[[Path, list[str]], ExperimentConfig]

TARGETS = ["never_married", "female", "full_year"]


def test_advise_writes_configs_that_train(
    census_csv: Path, small_config: Small, tmp_path: Path
) -> None:
    table = census_csv
    out = tmp_path / "advice"
    advice = advise_config(
        small_config(table, TARGETS), 300, out=out, log=lambda _: None, seeds=(0,),
        candidates=1, max_trials=1,
    )
    assert advice.structure in {"all-shared", "grouped", "separate"}
    assert sorted(n for g in advice.groups for n in g) == sorted(TARGETS)
    grouping = json.loads((out / "grouping.json").read_text())
    assert grouping["tasks"] == TARGETS
    assert 0 <= grouping["chosen"] < len(grouping["candidates"])
    labels = [c["label"] for c in grouping["candidates"]]
    assert labels[:2] == ["all-shared", "separate"]
    for c in grouping["candidates"]:
        assert set(c) >= {"groups", "score", "val_delta_m", "val_delta_m_std", "time_per_epoch_s"}
    chosen = grouping["candidates"][grouping["chosen"]]
    assert grouping["candidates"][1]["val_delta_m"] == 0.0  # separate models are the baselines
    assert chosen["val_delta_m"] <= 0.0  # never worse than them on validation
    if "tuned" not in chosen["label"]:  # at the base settings: the lowest of the compared
        trained = [c["val_delta_m"] for c in grouping["candidates"]
                   if c["val_delta_m"] is not None and "tuned" not in c["label"]]
        assert chosen["val_delta_m"] == min(trained)
    record = json.loads((out / "advice.json").read_text())
    assert record["elapsed_s"] > 0 and record["budget_s"] == 300
    # a sharing structure was tuned (the chosen one, or the best against separate models):
    # tuned equal weights and the cheap balancers were tried, one Optuna trial allowed
    assert [b["balancer"] for b in record["balancers"]] == ["equal", "uncertainty", "dwa"]
    assert len(record["trials"]) == 1
    # every written config trains with `polytask train`
    for path in advice.configs:
        raw = yaml.safe_load(path.read_text())
        assert raw["data"]["split_seed"] == 0
        result = CliRunner().invoke(app, ["train", str(path), "--out", str(tmp_path / path.stem)])
        assert result.exit_code == 0, result.output
    assert "recommendation:" in advice.format() and "validation Δm" in advice.format()


def test_a_group_config_keeps_the_other_targets_out_of_the_features(
    census_csv: Path, small_config: Small, tmp_path: Path
) -> None:
    table = census_csv
    config = small_config(table, TARGETS)
    config = config.model_copy(update={"data": config.data.model_copy(update={"split_seed": 0})})
    splits = load_data(config, 0)
    problem = Problem(config, splits, tmp_path)
    sub = subset_config(problem, ["female"], HyperParams("uncertainty", 3e-3, 1e-4, 2.0), stl=False)
    assert sub.data.targets == ["female"]
    assert sub.data.features is not None and not set(sub.data.features) & set(TARGETS)
    assert sub.training.lr == 3e-3 and sub.training.weight_decay == 1e-4
    assert sub.model_list[0].trunk_options["hidden"] == [16]  # width x2 of [8]
    assert sub.balancers[0].name == "uncertainty"
    reloaded = load_data(sub, 0)
    assert reloaded.train.task_names == ["female"]
    assert reloaded.train.inputs.shape[1] == splits.train.inputs.shape[1]  # same features
    assert np.array_equal(reloaded.val.row_ids, splits.val.row_ids)  # same split


def test_a_budget_below_one_candidate_is_refused_with_the_minimum(
    census_csv: Path, small_config: Small, tmp_path: Path
) -> None:
    table = census_csv
    with pytest.raises(BudgetError, match=r"too small.*needs about .*one epoch of the shared"):
        advise_config(small_config(table, TARGETS), 0.05, out=tmp_path / "a",
                      log=lambda _: None)
    args = ["advise", str(table), "-t", "female", "-t", "full_year", "--budget", "0.05s",
            "--epochs", "2", "--out", str(tmp_path / "b")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "too small" in result.output and "--budget" in result.output
    result = CliRunner().invoke(app, [*args[:-4], "--budget", "soon"])
    assert result.exit_code == 2 and "budget 'soon'" in result.output


def test_a_single_task_is_trained_as_it_is(
    census_csv: Path, small_config: Small, tmp_path: Path
) -> None:
    table = census_csv
    messages: list[str] = []
    advice = advise_config(small_config(table, ["female"]), 300, out=tmp_path / "one",
                           log=messages.append)
    assert advice.structure == "single-task" and advice.groups == [["female"]]
    assert any("nothing to group" in m for m in messages)
    assert advice.configs == [tmp_path / "one" / "recommended.yaml"]
    assert load_config(advice.configs[0]).data.targets == ["female"]
    assert (Path(advice.final[0]["run_dir"]) / "results.json").exists()


def test_tasks_without_validation_labels_are_named(
    census_csv: Path, small_config: Small, tmp_path: Path
) -> None:
    table = census_csv
    frame = pd.read_csv(table)
    frame["split"] = np.where(np.arange(len(frame)) % 5 == 0, "val",
                              np.where(np.arange(len(frame)) % 5 == 1, "test", "train"))
    frame.loc[frame["split"] == "val", "full_year"] = np.nan
    frame.to_csv(table, index=False)
    config = {
        "name": "noval",
        "data": {"table": str(table), "targets": TARGETS, "options": {"split_column": "split"}},
        "model": {"trunk": "mlp", "trunk_options": {"hidden": [8]}},
        "training": {"epochs": 1},
        "output_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / "noval.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(AdviceError, match=r"\['full_year'\] have no labelled row in the val"):
        advise(path, 300, out=tmp_path / "x", log=lambda _: None)


def test_fit_auto_goes_through_the_advisor(
    census_csv: Path, small_config: Small, tmp_path: Path
) -> None:
    table = census_csv
    base = ["fit", str(table), "-t", "female", "-t", "full_year", "--epochs", "2",
            "--out", str(tmp_path / "fa")]
    result = CliRunner().invoke(app, [*base, "--auto", "--budget", "0.05s"])
    assert result.exit_code == 2 and "too small" in result.output
    result = CliRunner().invoke(app, [*base, "--auto", "-b", "equal", "-b", "uncertainty"])
    assert result.exit_code == 2 and "--auto chooses the balancer" in result.output
