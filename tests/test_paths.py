"""Names from data become one safe path component each, and distinct names stay distinct.

Why: run folders are named after task names (``stl-<task>-seed0``) and labels, which come from a
table's header or a config; a column called ``price/m2`` used to create nested folders.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from polytask.config import parse_config
from polytask.experiment import run_experiment
from polytask.paths import safe_name

SAFE = set(string.ascii_letters + string.digits + "-_.")


@given(st.text(max_size=300))
def test_output_is_always_one_safe_component(name: str) -> None:
    out = safe_name(name)
    assert out and set(out) <= SAFE
    assert not out.startswith(".")  # never ".", "..", nor a hidden file
    assert Path(out).name == out and len(out) <= 111


@given(st.text(max_size=60), st.text(max_size=60))
def test_distinct_names_give_distinct_outputs(a: str, b: str) -> None:
    if a != b:
        assert safe_name(a) != safe_name(b)


@given(st.text(alphabet=sorted(SAFE), min_size=1, max_size=100).filter(lambda s: s[0] != "."))
def test_safe_names_are_kept_as_they_are(name: str) -> None:
    assert safe_name(name) == name


@pytest.mark.parametrize(
    ("name", "kept"),
    [("a/b", "a_b-"), ("a b", "a_b-"), ("..", "_.-"), ("", "-"), ("température", "temp_rature-")],
)
def test_unsafe_names_keep_a_readable_prefix_and_a_hash(name: str, kept: str) -> None:
    out = safe_name(name)
    assert out.startswith(kept) and len(out) == len(kept) + 10
    assert safe_name("a/b") != safe_name("a b")  # same readable part, told apart by the hash


def test_a_target_column_with_a_slash_gives_flat_run_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(80, 3)), columns=["a", "b", "c"])
    frame["price/m2"] = frame["a"] * 3.0 + rng.normal(scale=0.1, size=80)
    frame["up?/ down"] = (frame["b"] > 0).astype(int)
    frame.to_csv(tmp_path / "t.csv", index=False)
    config = parse_config({
        "data": {"table": str(tmp_path / "t.csv"), "targets": ["price/m2", "up?/ down"]},
        "model": {"trunk": "mlp", "trunk_options": {"hidden": [8]}},
        "training": {"epochs": 1, "progress": False, "tensorboard": False},
    })
    out = tmp_path / "out"
    result = run_experiment(config, out, log=lambda _: None, report=False)
    for run in result.runs:
        assert run.run_dir.parent == out, run.run_dir
        assert (run.run_dir / "results.json").exists()
    stl = sorted(p.name for p in out.iterdir() if p.name.startswith("stl-"))
    assert stl == sorted([f"stl-{safe_name('price/m2')}-seed0", f"stl-{safe_name('up?/ down')}-seed0"])
    assert not (out / "stl-up?").exists() and not (out / "stl-price").exists()
