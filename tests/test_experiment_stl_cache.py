"""The single-task baseline cache: keyed by the data, and safe when two processes share it.

Why: two suites running side by side (or DDP ranks) train the same STL model; both used one
``<key>.partial`` directory and the slower one failed renaming it onto the published entry,
which failed every multi-task cell of that seed. And the cache key covered the config but not the
data: a rerun on other arrays with the same config (``splits_override``) reused the old baselines
("found in cache"), scored on the old test rows, and reported Δm against them without a word.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import polytask.experiment as experiment
from polytask.config import ExperimentConfig
from polytask.data.base import MultiTaskData, Splits
from polytask.tasks import Task


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
    record = experiment.train_single_task_baseline(config, splits, task, 0, tmp_path / "out", said.append)
    assert any("published meanwhile" in line for line in said), said
    assert json.loads((record.run_dir / "results.json").read_text())["published_by"] == "other"
    cache = tmp_path / "cache" / "stl"
    assert not [p.name for p in cache.iterdir() if ".partial" in p.name]  # ours was removed


def _arrays(seed: int, *, shift_test_a: float = 0.0, named: bool = False) -> Splits:
    """Two tasks on 4 features; every call builds new tensor objects from the seed.

    ``shift_test_a`` changes task ``a``'s test targets only; ``named`` serves the same numbers as
    named inputs (a dict of tensors).
    """
    gen = torch.Generator().manual_seed(seed)
    tasks = [Task("a", "regression"), Task("b", "binary")]

    def part(n: int, name: str) -> MultiTaskData:
        x = torch.randn(n, 4, generator=gen)
        a = x[:, 0] - 0.5 * x[:, 1] + 0.1 * torch.randn(n, generator=gen)
        if name == "test":
            a = a + shift_test_a
        b = (x[:, 2] > 0).float()
        inputs = {"left": x[:, :2].clone(), "right": x[:, 2:].clone()} if named else x
        return MultiTaskData(inputs=inputs, targets={"a": a, "b": b}, tasks=tasks, name=name)

    return Splits(part(64, "train"), part(32, "val"), part(32, "test")).fit_target_scalers()


def _run(config: ExperimentConfig, splits: Splits, out: Path) -> tuple[dict[str, str], dict]:
    """One experiment on ``splits``; per task, whether its baseline trained or came from the cache,
    and the baselines' test metrics."""
    said: list[str] = []
    result = experiment.run_experiment(
        config, out, log=said.append, splits_override=splits, report=False
    )
    how = {}
    for task in ("a", "b"):
        trained = any(f"training single-task baseline for {task!r}" in line for line in said)
        cached = any(f"baseline for {task!r} (seed 0) found in cache" in line for line in said)
        assert trained != cached, said
        how[task] = "trained" if trained else "cached"
    stl = {r.label: r.test for r in result.runs if r.kind == "stl"}
    return how, stl


@pytest.fixture
def tiny_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ExperimentConfig:
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    return ExperimentConfig.model_validate({
        "data": {"dataset": "arrays_from_python"},
        "model": {"trunk": "mlp", "trunk_options": {"hidden": [8]}},
        "training": {
            "epochs": 1, "batch_size": 16, "device": "cpu", "progress": False,
            "tensorboard": False,
        },
    })


def test_a_changed_data_set_retrains_and_an_unchanged_one_hits_the_cache(
    tmp_path: Path, tiny_config: ExperimentConfig, single_thread: None
) -> None:
    how, first = _run(tiny_config, _arrays(0), tmp_path / "first")
    assert how == {"a": "trained", "b": "trained"}
    # the same numbers in new tensor objects: the key is the content, not the object
    how, again = _run(tiny_config, _arrays(0), tmp_path / "again")
    assert how == {"a": "cached", "b": "cached"}
    assert again == first
    # other arrays, same config and shapes: both baselines train again, on the new rows
    how, other = _run(tiny_config, _arrays(1), tmp_path / "other")
    assert how == {"a": "trained", "b": "trained"}
    assert other["stl:a"] != first["stl:a"] and other["stl:b"] != first["stl:b"]
    assert len(list((tmp_path / "cache" / "stl").iterdir())) == 4


def test_only_the_baseline_whose_data_changed_retrains(
    tmp_path: Path, tiny_config: ExperimentConfig, single_thread: None
) -> None:
    _, first = _run(tiny_config, _arrays(0), tmp_path / "first")
    # task a's test labels moved: its baseline is scored on other rows; task b saw nothing new
    how, shifted = _run(tiny_config, _arrays(0, shift_test_a=3.0), tmp_path / "shifted")
    assert how == {"a": "trained", "b": "cached"}
    assert shifted["stl:a"] != first["stl:a"] and shifted["stl:b"] == first["stl:b"]
    key = json.loads(next((tmp_path / "cache" / "stl").glob("*/stl_key.json")).read_text())
    assert len(key["data_fingerprint"]) == 64 and key["version"] == 2


def test_named_inputs_are_fingerprinted_too(
    tmp_path: Path, tiny_config: ExperimentConfig, single_thread: None
) -> None:
    splits = _arrays(0, named=True)
    task = splits.tasks[0]
    same = experiment._data_fingerprint(_arrays(0, named=True), task, None)
    assert experiment._data_fingerprint(splits, task, None) == same
    assert isinstance(splits.test.inputs, dict)
    splits.test.inputs["right"][0, 0] += 1.0  # one number of one named input
    assert experiment._data_fingerprint(splits, task, None) != same
    # the plain-tensor form of the same numbers is another data set for the trunk
    assert experiment._data_fingerprint(_arrays(0), task, None) != same
