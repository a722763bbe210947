"""The lifecycle on every architecture: compress, ensemble and extend each of the seven, plus a
model with two named inputs and a dense (segmentation + depth map) model.

Export of every architecture, of two named inputs and of a feature-map model is checked in
test_export.py. The data are built here (a registered loader of a few hundred rows whose targets
follow fixed rules of the inputs), the models are tiny and train one epoch: what is checked is
that each step runs, writes what reloads, and keeps its promises (pruned sparsity, reloaded
outputs equal, ensemble at least as good as its best member on validation, old tasks unchanged
by a frozen extension), not how good the models are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from polytask.cli import app
from polytask.config import parse_config
from polytask.data import Splits, register_dataset
from polytask.data.base import MultiTaskData, random_split
from polytask.experiment import run_experiment
from polytask.inference import load_run
from polytask.lifecycle import (
    EnsembleError,
    ExtendError,
    RunEnsemble,
    build_ensemble,
    compress_run,
    export_model,
    extend_run,
    load_compressed,
    load_run_model,
)
from polytask.tasks import Task

ARCHS = ["hard_sharing", "mtan", "cross_stitch", "mmoe", "cgc", "ple", "dselect_k"]
OPTIONS: dict[str, dict[str, Any]] = {"mmoe": {"num_experts": 2}, "dselect_k": {"num_experts": 3}}
DATASET = "lifecycle_coverage"
TRAINING = {"epochs": 1, "batch_size": 64, "lr": 0.01, "progress": False, "tensorboard": False,
            "selection": "mean_primary"}  # fmt: skip
pytestmark = pytest.mark.usefixtures("single_thread")


def _tasks(layout: str) -> dict[str, Task]:
    if layout == "dense":
        return {"mask": Task("mask", "segmentation", num_classes=2), "depth": Task("depth", "depth"),
                "area": Task("area", "regression")}  # fmt: skip
    return {"a": Task("a", "binary"), "b": Task("b", "regression"), "c": Task("c", "binary"),
            "d": Task("d", "regression")}  # fmt: skip


def load_coverage(
    layout: str = "vector", tasks: list[str] | None = None, n: int = 240, seed: int = 0
) -> Splits:
    """``n`` rows drawn once (generator seed 7); ``seed`` only splits them 80/10/10.

    vector: x [n, 10]; two: {"bits": [n, 12] in {0, 1}, "desc": [n, 4]}; dense: images
    [n, 1, 16, 16] with a bright square, its mask, a depth map and its area.
    """
    g = torch.Generator().manual_seed(7)
    kinds = _tasks(layout)
    names = tasks or [k for k in kinds if k not in ("c", "d")]
    inputs: Any
    if layout == "dense":
        images = 0.1 * torch.rand(n, 1, 16, 16, generator=g)
        side = torch.randint(3, 9, (n,), generator=g)
        for i in range(n):
            images[i, 0, 2 : 2 + side[i], 3 : 3 + side[i]] += 0.8
        mask = (images[:, 0] > 0.5).long()
        targets = {"mask": mask, "depth": 2.0 * images, "area": mask.flatten(1).float().mean(1)}
        inputs = images
    else:
        x = torch.randn(n, 10, generator=g)
        targets = {"a": (x[:, 0] + x[:, 1] > 0).float(), "b": 2 * x[:, 2] - x[:, 3],
                   "c": (x[:, 4] > 0).float(), "d": x[:, 5] + 0.5 * x[:, 0]}  # fmt: skip
        inputs = x if layout == "vector" else {"bits": (x[:, :10] > 0).float()[:, [*range(10), 0, 1]],
                                               "desc": x[:, 6:10]}  # fmt: skip
        if layout == "two":  # targets of the second input's columns, so both inputs matter
            targets["b"] = 2 * x[:, 6] - x[:, 7]
    data = MultiTaskData(inputs, {k: targets[k] for k in names}, [kinds[k] for k in names],
                         name=DATASET)  # fmt: skip
    return random_split(data, seed=seed)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Per model: two finished runs (seeds 0 and 1, one split), trained once for the module.

    The loader is registered under a name of its own (extend reloads data sets by name) and stays
    registered for the session: the registry has no public way to remove a name, and registering
    the same loader again is allowed.
    """
    register_dataset(DATASET, "tiny rows built by tests/lifecycle/test_coverage.py")(load_coverage)
    root = tmp_path_factory.mktemp("coverage")
    models: dict[str, dict[str, Any]] = {
        arch: {"architecture": arch, "trunk": "mlp", "trunk_options": {"hidden": [8, 8]},
               "options": OPTIONS.get(arch, {})}
        for arch in ARCHS
    }  # fmt: skip
    models["two_inputs"] = {
        "architecture": "mmoe", "trunk": "multi_input", "options": {"num_experts": 2},
        "trunk_options": {"fusion": "gated", "width": 8, "encoders": {
            "bits": {"trunk": "mlp", "options": {"hidden": [8]}},
            "desc": {"trunk": "mlp", "options": {"hidden": [6]}}}},
    }  # fmt: skip
    models["dense"] = {"architecture": "hard_sharing", "trunk": "resnet",
                       "trunk_options": {"depth": 10, "width": 4, "in_channels": 1,
                                         "output": "map"}}  # fmt: skip
    layouts = {"two_inputs": "two", "dense": "dense"}
    out: dict[str, list[Path]] = {}
    for label, model in models.items():
        config = parse_config({
            "name": label, "seeds": [0, 1], "baselines": {"stl": False}, "training": TRAINING,
            "data": {"dataset": DATASET, "split_seed": 0,
                     "options": {"layout": layouts.get(label, "vector")}},
            "model": model,
        })  # fmt: skip
        result = run_experiment(config, root / label, report=False, log=lambda m: None)
        out[label] = [r.run_dir for r in result.runs]
    return out


def _outputs_equal(a: torch.nn.Module, b: torch.nn.Module, x: Any) -> None:
    with torch.no_grad():
        got, expected = a.eval()(x), b.eval()(x)
    assert list(got) == list(expected)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


@pytest.mark.parametrize("label", [*ARCHS, "two_inputs", "dense"])
def test_compress_prunes_quantizes_and_reloads(
    label: str, runs: dict[str, list[Path]], tmp_path: Path
) -> None:
    out = tmp_path / "compressed"
    result = compress_run(runs[label][0], quantize="int8", prune=0.5, out=out, latency_batch=16,
                          latency_repeats=1, log=lambda m: None)  # fmt: skip
    assert result.recipe["prune"]["layers"]  # the trunk (experts, columns, convolutions) was found
    assert result.recipe["prune"]["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert result.recipe["quantize"]["linear_layers"] > 0
    names = [t.name for t in load_run(runs[label][0]).tasks]
    assert list(result.after["test"]) == names  # every task measured after
    reloaded = load_compressed(out)
    loaded = load_run_model(runs[label][0])
    assert loaded.splits is not None and result.model is not None
    _outputs_equal(reloaded, result.model, loaded.splits.val.example(8))


@pytest.mark.parametrize("label", [*ARCHS, "two_inputs"])
def test_an_ensemble_of_two_runs_works_and_reloads(
    label: str, runs: dict[str, list[Path]], tmp_path: Path
) -> None:
    result = build_ensemble(runs[label], tmp_path / "ens")
    assert [r["task"] for r in result.rows] == ["a", "b"]
    for r in result.rows:  # greedy selection starts from the best member: never worse on val
        sign = 1 if r["higher_is_better"] else -1
        assert sign * r["ensemble_val"] >= sign * r["member_val"] - 1e-12, r
        assert sum(r["weights"]) == pytest.approx(1.0) and len(r["weights"]) == 2
    reloaded = RunEnsemble.load(tmp_path / "ens")
    splits = load_run_model(runs[label][0]).splits
    assert splits is not None
    rows = splits.test.example(9)
    again, first = reloaded.predict(rows), result.ensemble.predict(rows)
    for name, value in first.items():
        assert (again[name] == value).all(), name


def test_an_ensemble_of_dense_runs_is_refused_naming_the_task_kind(
    runs: dict[str, list[Path]],
) -> None:
    with pytest.raises(EnsembleError, match=r"task 'mask': kind segmentation cannot be averaged"):
        build_ensemble(runs["dense"])


NEW_TASKS = {"name": "add", "training": TRAINING,
             "data": {"dataset": DATASET, "split_seed": 0, "options": {"tasks": ["c", "d"]}}}  # fmt: skip


def _new_tasks() -> Any:
    return parse_config(NEW_TASKS)


@pytest.mark.parametrize("arch", ARCHS)
def test_extend_frozen_keeps_the_old_tasks_on_every_architecture(
    arch: str, runs: dict[str, list[Path]], tmp_path: Path
) -> None:
    run = runs[arch][0]
    result = extend_run(run, _new_tasks(), tmp_path / "ext", mode="frozen", scratch=False,
                        log=lambda m: None)  # fmt: skip
    old_rows = [r for r in result.rows if r["group"] == "old"]
    assert [r["task"] for r in old_rows] == ["a", "b"]
    for r in old_rows:  # the metric of every old task on val and test: exactly as before
        assert (r["val_extended"], r["test_extended"]) == (r["val_reference"], r["test_reference"])
    old = load_run_model(run)
    ext = load_run_model(result.run_dir)  # the written run rebuilds from its own config
    assert ext.model.task_names == ["a", "b", "c", "d"]
    assert old.splits is not None
    x = old.splits.test.inputs
    with torch.no_grad():
        before, after = old.model(x), ext.model(x)
    for name in ("a", "b"):
        assert torch.equal(before[name], after[name]), name
    new_state, old_state = ext.model.state_dict(), old.model.state_dict()
    assert all(torch.equal(new_state[k], v) for k, v in old_state.items())  # nothing old moved
    assert set(load_run(result.run_dir).evaluate()["test"]) == {"a", "b", "c", "d"}


@pytest.mark.parametrize("arch", ["cross_stitch", "ple"])
def test_extend_finetune_with_old_tasks_trains_the_shared_part(
    arch: str, runs: dict[str, list[Path]], tmp_path: Path
) -> None:
    run = runs[arch][0]
    result = extend_run(run, _new_tasks(), tmp_path / "ext", mode="finetune", keep_old=True,
                        scratch=False, init_from="b", log=lambda m: None)  # fmt: skip
    old = load_run_model(run).model.state_dict()
    new = load_run_model(result.run_dir).model.state_dict()
    shared = [k for k in old if k.startswith(("units.", "shared_experts."))]
    assert shared and any(not torch.equal(old[k], new[k]) for k in shared)
    assert {r["task"] for r in result.rows} == {"a", "b", "c", "d"}
    # the extended run is an ordinary run of its architecture: it exports and verifies
    exported = export_model(result.run_dir, "pt2", tmp_path / "extended.pt2", rows=16)
    assert exported.output_names == ["a", "b", "c", "d"]
    assert all(d <= 1e-4 for d in exported.max_abs_diff.values())


def test_extend_partial_and_init_from_are_refused_where_they_do_not_apply(
    runs: dict[str, list[Path]], tmp_path: Path
) -> None:
    with pytest.raises(ExtendError, match=r"partial unfreezes the trunk's last stages; CrossStitch"):
        extend_run(runs["cross_stitch"][0], _new_tasks(), tmp_path / "p", mode="partial",
                   scratch=False, log=lambda m: None)  # fmt: skip
    with pytest.raises(ExtendError, match=r"init_from applies to .*HardSharing"):
        extend_run(runs["hard_sharing"][0], _new_tasks(), tmp_path / "h", init_from="a",
                   scratch=False, log=lambda m: None)  # fmt: skip
    with pytest.raises(ExtendError, match=r"init_from 'zz' is not an old task"):
        extend_run(runs["ple"][0], _new_tasks(), tmp_path / "z", init_from="zz",
                   scratch=False, log=lambda m: None)  # fmt: skip
    new_yaml = tmp_path / "add.yaml"
    new_yaml.write_text(yaml.safe_dump(NEW_TASKS))
    cli = CliRunner().invoke(app, ["extend", str(runs["cross_stitch"][0]), "--config",
                                   str(new_yaml), "--init-from", "zz", "--no-scratch",
                                   "--out", str(tmp_path / "cli")])  # fmt: skip
    assert cli.exit_code != 0 and "init_from 'zz' is not an old task" in cli.output
    assert not (tmp_path / "cli").exists()  # refused before anything trained or was written
