"""``benchmarks/advise.py advise-config``: the config it advises on, and how it reads results.

The benchmark itself trains for many minutes (its figures are in docs/results.md); here only the
parts that decide *what* is trained and *what* is compared, on configs and records built here:
a suite file stands for its first pair, the config is normalised like the advice's (equal
weights, a fixed split, baselines on), overrides reach dotted keys, and a bad override is named.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from polytask.config import parse_config

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("advise_bench", BENCHMARKS / "advise.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["advise_bench"] = module
    spec.loader.exec_module(module)
    return module


def test_suite_first_pair_normalised_with_overrides(bench: ModuleType, tmp_path: Path) -> None:
    raw = bench.advise_experiment(
        BENCHMARKS / "qm9.yaml", ["training.epochs=3", "data.options.subset=500",
                                  "model.trunk_options.hidden=[32, 16]"], tmp_path)
    config = parse_config(raw, "test")  # the benchmark validates the same mapping
    assert config.data.dataset == "qm9"
    assert config.data.options["subset"] == 500
    assert config.training.epochs == 3
    assert config.model_list[0].trunk_options["hidden"] == [32, 16]
    # the suite's six balancers and three seeds become the advice's starting point
    assert [b.name for b in config.balancers] == ["equal"]
    assert config.seeds == [0]
    assert config.data.split_seed == 0
    assert config.baselines.stl is True
    assert config.output_dir == str(tmp_path / "runs")


def test_experiment_config_keeps_its_split_seed(bench: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(
        "name: t\ndata: {dataset: census, options: {max_rows: 300}, split_seed: 4}\n"
        "model: {trunk: mlp}\nbalancers: [{name: uncertainty}]\nseeds: [0, 1]\n"
    )
    raw = bench.advise_experiment(path, [], tmp_path)
    assert raw["data"]["split_seed"] == 4
    assert raw["balancers"] == [{"name": "equal"}]


@pytest.mark.parametrize(
    ("override", "named"),
    [("training", "KEY=VALUE"), ("=3", "KEY=VALUE"), ("training.epochs.x=3", "'epochs'")],
)
def test_bad_override_is_named(
    bench: ModuleType, tmp_path: Path, override: str, named: str
) -> None:
    with pytest.raises(SystemExit, match=named):
        bench.advise_experiment(BENCHMARKS / "qm9.yaml", [override], tmp_path)


def _run(kind: str, seed: int, test: dict, dm: float | None = None) -> SimpleNamespace:
    return SimpleNamespace(kind=kind, seed=seed, test=test, delta_m=dm)


def test_per_seed_metrics_splits_models_and_baselines(bench: ModuleType) -> None:
    group = SimpleNamespace(runs=[
        _run("stl", 0, {"a": {"mae": 2.0}}), _run("stl", 0, {"b": {"mae": 4.0}}),
        _run("mtl", 0, {"a": {"mae": 1.0}, "b": {"mae": 5.0}}, dm=-12.5),
    ])
    single = SimpleNamespace(runs=[_run("mtl", 0, {"c": {"mae": 3.0}})])
    mtl, stl, own = bench.per_seed_metrics([group, single], [0])
    assert mtl[0] == {"a": {"mae": 1.0}, "b": {"mae": 5.0}, "c": {"mae": 3.0}}
    assert stl[0] == {"a": {"mae": 2.0}, "b": {"mae": 4.0}}
    assert own[0] == pytest.approx(2 * -12.5)  # |g| Δm_g; the one-task model counts 0


def test_per_seed_metrics_refuses_a_task_twice(bench: ModuleType) -> None:
    twice = SimpleNamespace(runs=[_run("mtl", 1, {"a": {"mae": 1.0}}),
                                  _run("mtl", 1, {"a": {"mae": 2.0}})])
    with pytest.raises(SystemExit, match="task 'a' has two mtl runs on seed 1"):
        bench.per_seed_metrics([twice], [1])
