"""A small table the federated tests build: a regression and a binary target over 4 features."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("flwr", reason="pip install 'polytask[federated]'")


@pytest.fixture(scope="session")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    n = 240
    x = rng.normal(size=(n, 4))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(4)])
    frame["y_reg"] = 2 * x[:, 0] - x[:, 1] + 0.1 * rng.normal(size=n)
    frame["y_bin"] = (x[:, 2] + x[:, 3] > 0).astype(int)
    path = tmp_path_factory.mktemp("federated") / "table.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def raw_config(table: Path, tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """Three clients dealt at random, two rounds; keyword arguments override ``federated`` keys."""

    def make(**federated: Any) -> dict[str, Any]:
        return _raw(table, tmp_path, **federated)

    return make


def _raw(table: Path, out: Path, **federated: Any) -> dict[str, Any]:
    return {
        "name": "tiny",
        "data": {"table": str(table), "targets": ["y_reg", "y_bin"], "kinds": {"y_bin": "binary"}},
        "model": {"trunk": "mlp", "trunk_options": {"hidden": [16]}},
        "training": {
            "batch_size": 16, "lr": 0.01, "selection": "val_loss", "progress": False,
            "tensorboard": False, "device": "cpu",
        },
        "federated": {
            "rounds": 2, "local_epochs": 1, "partition": {"iid": {"clients": 3}}, **federated,
        },
        "summary_metrics": ["pooled_explained_variance"],
        "output_dir": str(out),
    }
