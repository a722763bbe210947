"""Adding tasks to a trained run, on a small slice of real Tox21 (500 molecules, 128-bit ECFP)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from polytask.config import parse_config
from polytask.experiment import run_experiment
from polytask.inference import load_run
from polytask.lifecycle import load_run_model
from polytask.lifecycle.extend import (
    ExtendError,
    check_new_tasks,
    extend_run,
    extension_options,
    transplant_weights,
)
from polytask.models.base import MultiTaskModel
from polytask.tasks import Task

OPTIONS = {"split": "random", "features": "ecfp", "max_rows": 500, "n_bits": 128}
TRAINING = {"epochs": 1, "batch_size": 64, "progress": False, "tensorboard": False,
            "selection": "mean_primary"}  # fmt: skip
OLD = ["NR-AhR", "SR-ARE"]
NEW = ["SR-MMP", "NR-ER"]


@pytest.fixture(scope="module")
def tox_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    config = parse_config({
        "name": "tox3", "data": {"dataset": "tox21", "options": {**OPTIONS, "tasks": OLD}},
        "model": {"trunk": "mlp", "trunk_options": {"hidden": [16]}},
        "baselines": {"stl": False}, "training": {**TRAINING, "epochs": 2}, "seeds": [0],
    })  # fmt: skip
    out = tmp_path_factory.mktemp("extend") / "tox3"
    return run_experiment(config, out, report=False, log=lambda m: None).runs[0].run_dir


def _new_config(tasks: list[str], **options: object) -> object:
    return parse_config({
        "name": "add", "data": {"dataset": "tox21", "options": {**OPTIONS, **options, "tasks": tasks}},
        "training": TRAINING,
    })  # fmt: skip


def _trunk_state(run_dir: Path) -> dict[str, torch.Tensor]:
    model = load_run_model(run_dir).model
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_frozen_mode_leaves_trunk_and_old_heads_unchanged(tox_run: Path, tmp_path: Path) -> None:
    before = _trunk_state(tox_run)
    result = extend_run(tox_run, _new_config(NEW), tmp_path / "ext", mode="frozen",
                        scratch=False, log=lambda m: None)  # fmt: skip
    after = load_run_model(result.run_dir).model.state_dict()
    assert load_run(result.run_dir).tasks[-2:][0].name == NEW[0]
    assert [t.name for t in load_run(result.run_dir).tasks] == OLD + NEW
    for key, value in before.items():  # the trunk and every old head: bit for bit
        assert torch.equal(after[key], value), key
    new_keys = [k for k in after if k not in before]
    assert new_keys and all(k.startswith("heads.") for k in new_keys)
    old_rows = [r for r in result.rows if r["group"] == "old"]
    assert [r["val_extended"] for r in old_rows] == [r["val_reference"] for r in old_rows]
    # the written run reloads and scores every task with its own data
    metrics = load_run(result.run_dir).evaluate()
    assert set(metrics["test"]) == set(OLD + NEW)
    saved = json.loads((result.run_dir / "results.json").read_text())
    assert saved["test"]["SR-MMP"]["auroc"] == pytest.approx(metrics["test"]["SR-MMP"]["auroc"])


def test_keep_old_keeps_old_outputs_close(tox_run: Path, tmp_path: Path) -> None:
    result = extend_run(tox_run, _new_config(NEW), tmp_path / "ext", mode="finetune",
                        keep_old=True, scratch=False, log=lambda m: None)  # fmt: skip
    old = load_run_model(tox_run)
    new = load_run_model(result.run_dir)
    x = old.splits.val.inputs if old.splits is not None else None
    assert isinstance(x, torch.Tensor)
    with torch.no_grad():
        before, after = old.model(x), new.model(x)
    for name in OLD:
        diff = (torch.sigmoid(after[name]) - torch.sigmoid(before[name])).abs().mean()
        assert float(diff) < 0.05, (name, float(diff))
    old_state, new_state = old.model.state_dict(), new.model.state_dict()
    trunk_moved = any(
        not torch.equal(value, new_state[k]) for k, value in old_state.items() if k.startswith("trunk.")
    )
    assert trunk_moved  # finetune did train the trunk: closeness is not the frozen case again


def test_name_clash_is_refused_and_offers_replace(tox_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ExtendError, match=r"SR-ARE.*already exist.*--replace"):
        extend_run(tox_run, _new_config(["SR-ARE", "SR-MMP"]), tmp_path / "x", scratch=False,
                   log=lambda m: None)  # fmt: skip
    assert not (tmp_path / "x").exists()


def test_task_kind_that_does_not_fit_the_trunk_names_both(tox_run: Path) -> None:
    loaded = load_run_model(tox_run)
    seg = Task("mask", "segmentation", num_classes=3)
    with pytest.raises(ExtendError, match=r"'mask'.*segmentation.*vector"):
        check_new_tasks(loaded.model, loaded.run.tasks, [seg])


def test_input_shape_mismatch_names_both_shapes(tox_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ExtendError, match=r"\[256\].*\[128\]"):
        extend_run(tox_run, _new_config(NEW, n_bits=256), tmp_path / "x", scratch=False,
                   log=lambda m: None)  # fmt: skip


def test_keep_old_with_frozen_is_refused(tox_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ExtendError, match="no effect with --mode frozen"):
        extend_run(tox_run, _new_config(NEW), tmp_path / "x", keep_old=True, log=lambda m: None)


ARCHS = ["hard_sharing", "mtan", "cross_stitch", "mmoe", "cgc", "ple", "dselect_k"]


def _old_and_extended(arch: str, x: torch.Tensor) -> tuple[MultiTaskModel, MultiTaskModel]:
    """A 2-task model and, drawn with another seed, its architecture with a task "c" added."""
    from polytask.models import create_model, create_trunk

    old_tasks = [Task("a", "binary"), Task("b", "regression")]
    torch.manual_seed(0)
    old = create_model(arch, create_trunk("mlp", in_features=10, hidden=[8, 8]), old_tasks,
                       example_input=x)  # fmt: skip
    torch.manual_seed(1)  # a different draw: only the transplant can make the outputs agree
    new = create_model(arch, create_trunk("mlp", in_features=10, hidden=[8, 8]),
                       [*old_tasks, Task("c", "binary")], example_input=x,
                       **extension_options(old, 1))  # fmt: skip
    return old, new


@pytest.mark.parametrize("arch", ARCHS)
def test_transplant_keeps_every_old_output(arch: str) -> None:
    x = torch.randn(4, 10)
    old, new = _old_and_extended(arch, x)
    transplant_weights(new, old, ["c"], set())
    with torch.no_grad():
        before, after = old.eval()(x), new.eval()(x)
    for name in ("a", "b"):
        assert torch.equal(before[name], after[name]), name  # bit for bit


@pytest.mark.parametrize("arch", ["cross_stitch", "ple", "cgc"])
def test_a_new_path_starts_as_a_copy_of_the_source_task(arch: str) -> None:
    """The new task's features equal its source's (to rounding: its sums run over more terms);
    with a copy of the source's head on top, it predicts what the source predicts."""
    x = torch.randn(6, 10)
    old, new = _old_and_extended(arch, x)
    transplant_weights(new, old, ["c"], set(), source="a")
    new.heads["c"].load_state_dict(old.heads["a"].state_dict())
    with torch.no_grad():
        torch.testing.assert_close(new.eval()(x)["c"], old.eval()(x)["a"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ExtendError, match=r"init_from task 'zz' is not a kept old task"):
        transplant_weights(_old_and_extended(arch, x)[1], old, ["c"], set(), source="zz")


def test_cross_stitch_new_rows_and_columns_train_while_old_ones_stay() -> None:
    """Only the new task's column, rows and head take gradients; the old tasks read no new column."""
    x = torch.randn(8, 10)
    old, new = _old_and_extended("cross_stitch", x)
    transplant_weights(new, old, ["c"], set())
    mats = new.mixing_matrices()  # type: ignore[operator]
    for m, trained in zip(mats, old.mixing_matrices(), strict=True):  # type: ignore[operator]
        assert m.shape == (3, 3)
        assert torch.equal(m[:2, :2], trained) and torch.equal(m[:2, 2], torch.zeros(2))
        assert m[2, 2] == trained[0, 0] and m[2, 0] == 0  # a's self weight moved to c's column
    for p in new.parameters():
        p.requires_grad_(False)
    for module in new.task_modules("c"):
        module.requires_grad_(True)
    new(x)["c"].sum().backward()
    owned = {id(p) for m in new.task_modules("c") for p in m.parameters()}
    assert {id(p) for p in new.parameters() if p.grad is not None} == owned
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for m in new.task_modules("c")
               for p in m.parameters())  # fmt: skip


@pytest.mark.parametrize("arch", ["cross_stitch", "ple"])
def test_replacing_a_task_whose_path_others_read_is_refused(arch: str) -> None:
    from polytask.models import create_model, create_trunk

    x = torch.randn(4, 10)
    old_tasks = [Task("a", "binary"), Task("b", "binary")]
    old = create_model(arch, create_trunk("mlp", in_features=10, hidden=[8, 8]), old_tasks,
                       example_input=x)  # fmt: skip
    new = create_model(arch, create_trunk("mlp", in_features=10, hidden=[8, 8]),
                       [old_tasks[0], Task("b", "binary")], example_input=x,
                       **extension_options(old, 1))  # fmt: skip
    with pytest.raises(ExtendError, match=r"replacing \['b'\] would remove a path.*another name"):
        transplant_weights(new, old, ["b"], {"b"})


def test_a_shared_part_sized_by_the_task_count_is_still_refused_without_the_option() -> None:
    from polytask.models import create_model, create_trunk

    x = torch.randn(4, 10)
    old_tasks = [Task("a", "binary"), Task("b", "binary")]
    old = create_model("cross_stitch", create_trunk("mlp", in_features=10, hidden=[8, 8]),
                       old_tasks, example_input=x)  # fmt: skip
    new = create_model("cross_stitch", create_trunk("mlp", in_features=10, hidden=[8, 8]),
                       [*old_tasks, Task("c", "binary")], example_input=x)  # fmt: skip
    with pytest.raises(ExtendError, match=r"tensor '.*' has shape .* depends on the number of tasks"):
        transplant_weights(new, old, ["c"], set())


@pytest.mark.parametrize("arch", ["cross_stitch", "ple", "cgc"])
@pytest.mark.parametrize("added", [-1, 2])
def test_added_tasks_must_leave_a_trained_task(arch: str, added: int) -> None:
    from polytask.models import create_model, create_trunk

    x = torch.randn(4, 10)
    with pytest.raises(ValueError, match=rf"added_tasks must be in \[0, 1\] for 2 tasks.*{added}"):
        create_model(arch, create_trunk("mlp", in_features=10, hidden=[8, 8]),
                     [Task("a", "binary"), Task("b", "binary")], example_input=x,
                     added_tasks=added)  # fmt: skip
