"""A tiny finished run on real data (2,000 Census rows), trained once for the lifecycle tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from polytask.config import parse_config
from polytask.experiment import run_experiment


@pytest.fixture(scope="session")
def census_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A run directory (config.yaml, tasks.json, checkpoints/best.pt) whose data reloads."""
    config = parse_config({
        "name": "tiny-census",
        "data": {"dataset": "census", "options": {"max_rows": 2000}},
        "model": {"architecture": "hard_sharing", "trunk": "mlp",
                  "trunk_options": {"hidden": [32, 16]}},
        "balancers": [{"name": "equal"}],
        "baselines": {"stl": False},
        "training": {"epochs": 2, "batch_size": 128, "progress": False, "tensorboard": False},
        "seeds": [0],
    })  # fmt: skip
    out = tmp_path_factory.mktemp("lifecycle") / "tiny-census"
    result = run_experiment(config, out, report=False, log=lambda message: None)
    return result.runs[0].run_dir
