"""The quick automatic choice (``polytask fit``'s default) on small tables built to decide it.

Each table is made so that the answer is known: two unrelated targets through a one-unit trunk
(sharing hurts), one function labelled on disjoint halves of the rows (sharing helps: each task
sees the other's rows), and both at once (the two related targets share, the third stays alone).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from polytask.auto import table_config
from polytask.auto.quick import HELPED_DIR, quick_advise, split_by_help
from polytask.cli import app
from polytask.config import ExperimentConfig
from polytask.evaluation.metrics import delta_m
from polytask.tasks import Task

pytestmark = pytest.mark.usefixtures("single_thread")


def _table(path: Path, kind: str, n: int = 300) -> tuple[Path, list[str]]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(8)])
    if kind == "unrelated":  # each target reads its own feature
        frame["a"] = x[:, 0] + 0.1 * rng.normal(size=n)
        frame["b"] = x[:, 1] + 0.1 * rng.normal(size=n)
        targets = ["a", "b"]
    else:  # one linear function, each of a and b labelled on its own half of the rows
        signal = x @ rng.normal(size=8)
        half = rng.integers(0, 2, size=n)
        frame["a"] = np.where(half == 0, signal + 0.3 * rng.normal(size=n), np.nan)
        frame["b"] = np.where(half == 1, signal + 0.3 * rng.normal(size=n), np.nan)
        targets = ["a", "b"]
        if kind == "mixed":  # plus a target of its own: a sine of a feature the others ignore
            frame["c"] = np.sin(3 * x[:, 7]) + 0.05 * rng.normal(size=n)
            targets.append("c")
    table = path / f"{kind}.csv"
    frame.to_csv(table, index=False)
    return table, targets


def _config(table: Path, targets: list[str], hidden: int, epochs: int) -> ExperimentConfig:
    config = table_config(table, targets, epochs=epochs, hidden=(hidden,))
    return config.model_copy(update={
        "training": config.training.model_copy(update={"batch_size": 32, "lr": 1e-2}),
    })


def _val(run_dir: Path) -> dict[str, dict[str, float]]:
    return json.loads((Path(run_dir) / "results.json").read_text())["val"]


def test_separate_models_when_sharing_hurts(tmp_path: Path) -> None:
    table, targets = _table(tmp_path, "unrelated")
    out = tmp_path / "q"
    advice = quick_advise(_config(table, targets, hidden=1, epochs=5), out=out,
                          log=lambda _: None, report=False)
    shared, separate = advice.candidates[:2]
    assert shared.label == "all-shared" and shared.delta_m[0] > 0  # one unit cannot serve both
    assert advice.structure == "separate" and advice.groups == [["a"], ["b"]]
    assert advice.val_delta_m == {0: 0.0} and separate.delta_m == {0: 0.0}
    assert len(advice.candidates) == 2 and not (out / HELPED_DIR).exists()
    assert any("not trained" in n for n in advice.notes)
    # the final models are the single-task baselines, and each written config names one target
    assert [Path(f["run_dir"]).name for f in advice.final] == ["stl-a-seed0", "stl-b-seed0"]
    assert [yaml.safe_load(p.read_text())["data"]["targets"] for p in advice.configs] == [
        ["a"], ["b"]
    ]
    record = json.loads((out / "advice.json").read_text())
    assert record["mode"] == "quick" and record["budget_s"] is None and record["trials"] == []
    assert "the quick choice: no budget" in advice.format()


def test_one_shared_model_when_sharing_helps(tmp_path: Path) -> None:
    table, targets = _table(tmp_path, "related")
    out = tmp_path / "q"
    advice = quick_advise(_config(table, targets, hidden=4, epochs=8), out=out,
                          log=lambda _: None, report=False)
    assert advice.structure == "all-shared" and advice.groups == [["a", "b"]]
    shared = advice.candidates[0]
    assert advice.val_delta_m == shared.delta_m and shared.delta_m[0] < 0
    # Δm of the chosen run recomputed from the files the runs wrote
    stl = {t: _val(out / f"stl-{t}-seed0")[t] for t in targets}
    tasks = [Task("a", "regression"), Task("b", "regression")]
    assert delta_m(_val(out / "equal-seed0"), stl, tasks) == pytest.approx(shared.delta_m[0])
    assert advice.configs == [out / "recommended.yaml"]
    assert advice.final[0]["run_dir"] == str(out / "equal-seed0")
    assert len(advice.candidates) == 2 and not (out / HELPED_DIR).exists()


def test_the_helped_tasks_share_when_sharing_is_mixed(tmp_path: Path) -> None:
    table, targets = _table(tmp_path, "mixed")
    out = tmp_path / "q"
    advice = quick_advise(_config(table, targets, hidden=8, epochs=6), out=out,
                          log=lambda _: None, report=False)
    labels = [c.label for c in advice.candidates]
    assert labels == ["all-shared", "separate", "helped tasks share"]
    helped = advice.candidates[2]
    assert helped.groups == [["a", "b"], ["c"]]
    # its Δm is the helped model's own against the same baselines, counted over all 3 tasks
    run = out / HELPED_DIR / "equal-seed0"
    stl = {t: _val(out / f"stl-{t}-seed0")[t] for t in ("a", "b")}
    own = delta_m(_val(run), stl, [Task("a", "regression"), Task("b", "regression")])
    assert helped.delta_m[0] == pytest.approx(2 * own / 3)
    values = {c.label: c.delta_m[0] for c in advice.candidates}
    assert advice.candidates[advice.chosen].delta_m[0] == min(values.values())
    assert advice.structure == "grouped" and advice.groups == [["a", "b"], ["c"]]
    assert [f["run_dir"] for f in advice.final] == [str(run), str(out / "stl-c-seed0")]
    first = yaml.safe_load((out / "recommended-model1.yaml").read_text())
    assert first["data"]["targets"] == ["a", "b"] and "c" not in first["data"]["features"]
    grouping = json.loads((out / "grouping.json").read_text())
    assert grouping["chosen"] == advice.chosen and len(grouping["candidates"]) == 3


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0.01, 100), st.floats(0.01, 100), st.booleans()),
             min_size=1, max_size=6)
)
def test_helped_means_a_negative_delta_m_term(values: list[tuple[float, float, bool]]) -> None:
    tasks = [Task(f"t{i}", "binary" if up else "regression") for i, (_, _, up) in
             enumerate(values)]
    shared = {t.name: {t.primary: m} for t, (m, _, _) in zip(tasks, values, strict=True)}
    stl = {t.name: {t.primary: b} for t, (_, b, _) in zip(tasks, values, strict=True)}
    helped, others = split_by_help(shared, stl, tasks)
    order = [t.name for t in tasks]
    assert helped == [n for n in order if n in helped]  # the tasks' order kept
    assert others == [n for n in order if n in others]
    assert set(helped) | set(others) == {t.name for t in tasks}
    for t, (m, b, up) in zip(tasks, values, strict=True):
        better = m > b if up else m < b  # ROC-AUC up, regression error down; a tie is not better
        assert (t.name in helped) == better


def test_fit_defaults_to_the_quick_choice_and_fixed_trains_one_model(
    census_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "fit"
    args = ["fit", str(census_csv), "-t", "female", "-t", "full_year", "--epochs", "1",
            "--hidden", "8", "--out", str(out)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "recommendation:" in first.output and "validation Δm" in first.output
    record = json.loads((out / "advice.json").read_text())
    assert record["mode"] == "quick" and record["structure"] in {"all-shared", "separate"}
    assert [c["label"] for c in record["candidates"]] == ["all-shared", "separate"]
    assert (out / "equal-seed0" / "results.json").exists() and (out / "report.html").exists()
    # runs that exist are refused, read back with --resume, trained again with --overwrite
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and str(out / "equal-seed0") in refused.output
    resumed = CliRunner().invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0 and "already finished" in resumed.output
    assert json.loads((out / "advice.json").read_text())["candidates"] == record["candidates"]
    again = CliRunner().invoke(app, [*args, "--overwrite"])
    assert again.exit_code == 0 and "overwriting the run in" in again.output
    # --fixed (and --balancer, --no-stl): one shared model and the baselines, no choice made
    fixed = tmp_path / "fixed"
    done = CliRunner().invoke(app, [*args[:-1], str(fixed), "--fixed"])
    assert done.exit_code == 0, done.output
    assert "recommendation:" not in done.output and not (fixed / "advice.json").exists()
    assert (fixed / "equal-seed0" / "results.json").exists()
    implied = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "b"), "-b", "uncertainty"])
    assert implied.exit_code == 0 and not (tmp_path / "b" / "advice.json").exists()
    assert (tmp_path / "b" / "uncertainty-seed0" / "results.json").exists()
    both = CliRunner().invoke(app, [*args, "--fixed", "--auto"])
    assert both.exit_code == 2 and "--fixed and --auto exclude each other" in both.output
