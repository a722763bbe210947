"""The single-task baseline cache when two processes train the same baseline at once.

Why: two suites running side by side (or DDP ranks) train the same STL model; both used one
``<key>.partial`` directory and the slower one failed renaming it onto the published entry,
which failed every multi-task cell of that seed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import polytask.experiment as experiment
from polytask.config import ExperimentConfig


def test_a_baseline_published_meanwhile_is_used(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, single_thread: None
) -> None:
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    config = ExperimentConfig.model_validate({
        "data": {"dataset": "multimnist", "options": {"source": "idx", "n": 240}},
        "model": {"trunk": "small_cnn", "trunk_options": {"channels": [4, 8], "out_features": 16}},
        "training": {"epochs": 1, "device": "cpu", "progress": False, "tensorboard": False},
    })
    splits = experiment.load_data(config, 0)
    task = splits.tasks[0]
    real_fit = experiment.fit

    def fit_while_another_process_publishes(model, sub, balancer, settings, run_dir, **kw):  # type: ignore[no-untyped-def]
        result = real_fit(model, sub, balancer, settings, run_dir, **kw)
        other = Path(run_dir).with_name(Path(run_dir).name.split(".partial")[0])
        shutil.copytree(run_dir, other)  # the other process finished first
        results = json.loads((other / "results.json").read_text())
        results["published_by"] = "other"
        (other / "results.json").write_text(json.dumps(results))
        return result

    monkeypatch.setattr(experiment, "fit", fit_while_another_process_publishes)
    said: list[str] = []
    record = experiment._train_stl(config, splits, task, 0, tmp_path / "out", said.append)
    assert any("published meanwhile" in line for line in said), said
    assert json.loads((record.run_dir / "results.json").read_text())["published_by"] == "other"
    cache = tmp_path / "cache" / "stl"
    assert not [p.name for p in cache.iterdir() if ".partial" in p.name]  # ours was removed
