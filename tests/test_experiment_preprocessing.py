"""Each run directory keeps its own seed's table preprocessing (training-split statistics).

Why: when the split follows the seed, every seed fits its standardisation on other training rows;
a run read back with another seed's statistics would predict from shifted features.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from polytask.config import parse_config
from polytask.experiment import run_experiment

pytestmark = pytest.mark.usefixtures("single_thread")


def test_every_run_directory_has_its_own_seeds_preprocessing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3)) * [1.0, 10.0, 100.0]
    table = pd.DataFrame(x, columns=["a", "b", "c"])
    table["y"] = (x[:, 0] > 0).astype(float)
    table["z"] = x[:, 1] + rng.normal(size=120)
    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    config = parse_config({
        "name": "pre", "data": {"table": str(path), "targets": ["y", "z"]},
        "model": {"trunk": "mlp", "trunk_options": {"hidden": [4]}},
        "training": {"epochs": 1, "batch_size": 32, "progress": False},
        "seeds": [0, 1], "output_dir": str(tmp_path / "runs"),
    })  # fmt: skip
    result = run_experiment(config, tmp_path / "exp", log=lambda _: None, report=False)
    saved = {
        (r.kind, r.seed, r.run_dir.name): json.loads((r.run_dir / "preprocessing.json").read_text())
        for r in result.runs
    }
    assert {k[:2] for k in saved} == {("mtl", 0), ("mtl", 1), ("stl", 0), ("stl", 1)}
    means = {seed: [v["means"] for (_, s, _), v in saved.items() if s == seed] for seed in (0, 1)}
    for seed in (0, 1):  # one seed's runs share one fit ...
        assert all(m == means[seed][0] for m in means[seed])
    assert means[0][0] != means[1][0]  # ... and the two seeds' training rows differ
    top = json.loads((tmp_path / "exp" / "preprocessing.json").read_text())
    assert top["means"] == means[0][0]  # the experiment-level copy is the first seed's
