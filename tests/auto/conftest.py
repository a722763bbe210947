"""A real 200-row table (census-income.sample) and small settings for the advisor's tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from polytask.auto import table_config
from polytask.config import ExperimentConfig


@pytest.fixture
def census_csv(data_dir: Path, tmp_path: Path) -> Path:
    """The 200 real rows of census-income.sample: numeric features, three binary targets."""
    raw = pd.read_csv(data_dir / "census" / "census-income.sample", header=None,
                      skipinitialspace=True)
    features = [1, 3, 4, 6, 17, 18, 19, 25, 31, 37, 39, 41]  # numeric columns; 0 is an id
    frame = raw[features].astype(float).rename(columns=lambda c: f"c{c}")
    frame["never_married"] = (raw[8] == "Never married").astype(int)
    frame["female"] = (raw[13] == "Female").astype(int)
    frame["full_year"] = (raw[40] >= 52).astype(int)
    path = tmp_path / "census.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def small_config(tmp_path: Path) -> Callable[[Path, list[str]], ExperimentConfig]:
    """``(table, targets) -> config``: an 8-unit MLP, 2 epochs, runs under ``tmp_path``."""

    def make(table: Path, targets: list[str]) -> ExperimentConfig:
        config = table_config(table, targets, epochs=2, hidden=(8,))
        return config.model_copy(update={
            "training": config.training.model_copy(update={"batch_size": 32, "lr": 1e-2}),
            "output_dir": str(tmp_path / "runs"),
        })

    return make
