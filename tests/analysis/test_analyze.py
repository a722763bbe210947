"""``polytask analyze`` on a run directory and on a config; its errors say what to do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from polytask.analysis.analyze import AnalyzeError, analyze, analyze_run, format_analysis
from polytask.analysis.relations import read_relations
from polytask.balancing import create_balancer
from polytask.cli import app
from polytask.data.base import MultiTaskData, random_split
from polytask.models import create_model, create_trunk
from polytask.tasks import Task
from polytask.training import TrainSettings, fit

pytestmark = pytest.mark.usefixtures("single_thread")


def write_table(path: Path, targets: int = 3) -> Path:
    """A small table: two related binary targets and an unrelated regression."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 6))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(6)])
    frame["t1"] = (x[:, 0] + 0.2 * x[:, 1] > 0).astype(int)
    frame["t2"] = (x[:, 0] - 0.2 * x[:, 1] > 0).astype(int)
    frame["t3"] = x[:, 5] ** 2 + rng.normal(scale=0.1, size=len(x))
    frame.loc[::4, "t2"] = np.nan  # missing labels
    frame[[f"x{i}" for i in range(6)] + ["t1", "t2", "t3"][:targets]].to_csv(path, index=False)
    return path


def config_file(tmp_path: Path, targets: int = 3, relations: bool = False) -> Path:
    config = {
        "name": "rel",
        "data": {"table": str(write_table(tmp_path / "t.csv", targets)),
                 "targets": ["t1", "t2", "t3"][:targets]},
        "model": {"trunk": "mlp", "trunk_options": {"hidden": [16]}},
        "balancers": [{"name": "equal"}, {"name": "uncertainty"}],
        "training": {"epochs": 9, "batch_size": 32, "lr": 1e-2, "progress": False,
                     "tensorboard": False,
                     **({"relations": {"every": 1, "lookahead_every": 2}} if relations else {})},
        "seeds": [0, 1],
        "output_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / "rel.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def trained_run(tmp_path: Path, relations: dict[str, object] | None) -> Path:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 5, generator=g)
    y = {"a": (x[:, 0] > 0).float(), "b": (x[:, 0] + 0.1 * x[:, 1] > 0).float(), "c": x[:, 3]}
    tasks = [Task("a", "binary"), Task("b", "binary"), Task("c", "regression")]
    torch.manual_seed(0)
    model = create_model("hard_sharing", create_trunk("mlp", in_features=5, hidden=[8]), tasks)
    s = TrainSettings(epochs=3, batch_size=32, lr=1e-2, progress=False, tensorboard=False,
                      relations=relations)
    run_dir = tmp_path / "run"
    splits = random_split(MultiTaskData(x, y, tasks), seed=0)
    fit(model, splits, create_balancer("equal", ["a", "b", "c"]), s, run_dir)
    return run_dir


def test_analyze_a_run_directory(tmp_path: Path) -> None:
    run_dir = trained_run(tmp_path, {"every": 1, "lookahead_every": 1})
    (result,) = analyze(run_dir)
    saved = json.loads((run_dir / "analysis.json").read_text())
    assert saved["version"] == 1 and saved["tasks"] == ["a", "b", "c"]
    assert [p["tasks"] for p in saved["pairs"]] == [["a", "b"], ["a", "c"], ["b", "c"]]
    rel = read_relations(run_dir)
    for name in ("grad_cosine", "lookahead_affinity"):
        per_epoch = rel.measures[name].per_epoch
        sym = (per_epoch[:, 0, 2] + per_epoch[:, 2, 0]) / 2
        stats = saved["pairs"][1][name]
        assert stats["mean"] == pytest.approx(sym.mean()) and stats["epochs"] == 3
        assert stats["std"] == pytest.approx(sym.std(ddof=1))
        np.testing.assert_allclose(saved["measures"][name]["affinity"], rel.affinity(name)[1])
    directed = saved["pairs"][0]["lookahead_affinity"]
    assert directed["a_to_b"] == pytest.approx(rel.affinity("lookahead_affinity")[1][0, 1])
    clusters = saved["measures"]["grad_cosine"]["clustering"]["clusters"]
    assert sorted(n for g in clusters for n in g) == ["a", "b", "c"]
    assert "clustering" not in saved["measures"]["conflict_frequency"]
    table = format_analysis(result)
    assert "a ~ b" in table and "TAG exact" in table and "analysis.json" in table


def test_analyze_a_config_trains_briefly_then_analyses(tmp_path: Path) -> None:
    cfg = config_file(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["analyze", str(cfg), "--out", str(out), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert runs == ["equal-seed0"]  # first balancer, first seed, no single-task baselines
    rel = read_relations(out / "equal-seed0")
    assert rel.epochs == [0, 1] and rel.settings["every"] == 10  # the defaults, 2 epochs
    assert (out / "equal-seed0" / "analysis.json").exists()
    assert "t1 ~ t2" in result.output
    # a second call on the experiment directory analyses the runs it holds
    again = CliRunner().invoke(app, ["analyze", str(out)])
    assert again.exit_code == 0 and "t1 ~ t3" in again.output


def test_config_relations_settings_are_honored(tmp_path: Path) -> None:
    cfg = config_file(tmp_path, relations=True)
    (result,) = analyze(cfg, out=tmp_path / "out", epochs=1, log=lambda _: None)
    rel = read_relations(result.run_dir)
    assert rel.settings["every"] == 1 and rel.settings["lookahead_every"] == 2
    assert rel.counts["steps_recorded"] == 6 and rel.counts["lookahead_steps"] == 3  # 6 steps


def test_errors_say_what_to_do(tmp_path: Path) -> None:
    run_dir = trained_run(tmp_path, None)
    with pytest.raises(AnalyzeError, match=r"no relations\.json.*relations: \{every: 10\}.*"
                       r"polytask train CONFIG\.yaml.*polytask analyze CONFIG\.yaml"):
        analyze_run(run_dir)
    result = CliRunner().invoke(app, ["analyze", str(run_dir)])
    assert result.exit_code == 2 and "relations: {every: 10}" in result.output
    single = tmp_path / "single"
    single.mkdir()
    (single / "tasks.json").write_text(json.dumps([{"name": "only"}]))
    with pytest.raises(AnalyzeError, match=r"single task \(only\): there is nothing to relate"):
        analyze(single)
    (tmp_path / "c1").mkdir()
    one_task = config_file(tmp_path / "c1", targets=1)
    with pytest.raises(AnalyzeError, match=r"single task \(t1\).*nothing to relate"):
        analyze(one_task, out=tmp_path / "never")
    assert not (tmp_path / "never").exists()  # refused before training
    with pytest.raises(AnalyzeError, match="neither a run directory"):
        analyze(tmp_path / "missing.txt")
