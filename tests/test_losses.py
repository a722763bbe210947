"""``batched_sample_losses`` equals ``Task.sample_losses`` task by task, to the last bit."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from polytask.losses import batched_sample_losses, normalized_sample_losses
from polytask.tasks import Task


class _OwnLoss(Task):
    """A subclass that redefines the loss: it must be computed alone, by its own method."""

    def sample_losses(self, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        per, count = super().sample_losses(output, target)
        return 2.0 * per, count


@st.composite
def task_specs(draw: st.DrawFn) -> dict[str, object]:
    kind = draw(st.sampled_from(["binary", "multilabel", "multiclass", "regression", "own"]))
    spec: dict[str, object] = {"kind": kind}
    if kind == "multilabel":
        spec["num_classes"] = draw(st.sampled_from([2, 3]))
    if kind == "multiclass":
        spec["num_classes"] = draw(st.sampled_from([3, 4]))
        spec["ignore_index"] = draw(st.sampled_from([-1, -100, 99]))
        spec["long_targets"] = draw(st.booleans())
    if kind in ("binary", "multilabel"):
        spec["pos_weight"] = draw(st.one_of(st.none(), st.floats(0.25, 4.0)))
    if kind == "regression":
        spec["loss"] = draw(st.sampled_from([None, "mse", "l1", "huber"]))
        spec["out_dim"] = draw(st.sampled_from([None, 1, 2]))
        spec["standardize"] = draw(st.booleans())
        spec["mean"] = draw(st.floats(-3, 3))
        spec["std"] = draw(st.floats(0.1, 10))
    return spec


def _build(spec: dict[str, object], i: int, batch: int, g: torch.Generator, missing: float):
    """A task, its output and its targets with about ``missing`` of the labels absent."""
    kind = str(spec["kind"])
    name = f"t{i}"
    if kind == "own":
        task: Task = _OwnLoss(name, "regression", standardize=False)
    elif kind == "regression":
        task = Task(name, "regression", loss=spec["loss"], out_dim=spec["out_dim"],
                    standardize=bool(spec["standardize"]))
        task.target_mean_, task.target_std_ = float(spec["mean"]), float(spec["std"])
    elif kind == "multiclass":
        task = Task(name, "multiclass", num_classes=int(spec["num_classes"]),
                    ignore_index=int(spec["ignore_index"]))
    else:
        task = Task(name, kind, num_classes=spec.get("num_classes"),  # type: ignore[arg-type]
                    pos_weight=spec["pos_weight"])  # type: ignore[arg-type]
    width = task.output_dim
    output = 3 * torch.randn(batch, width, generator=g)
    drop = torch.rand(batch, width, generator=g) < missing
    if kind == "multiclass":
        y = torch.randint(0, width, (batch,), generator=g)
        y = torch.where(drop[:, 0], torch.full_like(y, task.ignore_index), y)
        target = y if spec["long_targets"] else y.float()
    elif kind in ("binary", "multilabel"):
        target = torch.randint(0, 2, (batch, width), generator=g).float()
        target = torch.where(drop, torch.full_like(target, math.nan), target)
        if kind == "binary":
            target = target.reshape(batch)  # [B] targets for a [B, 1] output, as datasets give
    else:
        target = 5 * torch.randn(batch, width, generator=g)
        target = torch.where(drop, torch.full_like(target, math.nan), target)
    return task, output, target


def _reference(tasks, outputs, targets) -> tuple[list[Tensor], list[int]]:
    pairs = [t.sample_losses(outputs[t.name], targets[t.name]) for t in tasks]
    return [p for p, _ in pairs], [c for _, c in pairs]


def _engine_loss_before(tasks, outputs, targets, weights: Tensor) -> Tensor:
    """The engine's weighted loss as it computed it task by task (its former ``_sample_losses``)."""
    ref, counts = _reference(tasks, outputs, targets)
    stacked = torch.stack([p / max(c, 1) for p, c in zip(ref, counts, strict=True)], dim=1)
    return (weights * stacked.sum(dim=0)).sum()


@settings(max_examples=150, deadline=None)
@given(
    specs=st.lists(task_specs(), min_size=1, max_size=9),
    batch=st.integers(1, 40),
    missing=st.sampled_from([0.0, 0.3, 0.8, 1.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_batched_equals_per_task_bit_for_bit(
    specs: list[dict[str, object]], batch: int, missing: float, seed: int
) -> None:
    """Values, counts, and the gradients of heads and representation, to the last bit.

    Batches up to 40 put an element in the vector body of a CPU kernel in one layout and in its
    scalar tail in the other, where transcendental functions (BCE's sigmoid) round differently.
    """
    g = torch.Generator().manual_seed(seed)
    built = [_build(s, i, batch, g, missing) for i, s in enumerate(specs)]
    tasks = [b[0] for b in built]
    targets = {t.name: b[2] for t, b in zip(tasks, built, strict=True)}
    rep = 3 * torch.randn(batch, 4, generator=g)
    heads = [torch.nn.Linear(4, t.output_dim) for t in tasks]
    weights = torch.rand(len(tasks), generator=g)

    def forward() -> tuple[Tensor, list[torch.nn.Linear], dict[str, Tensor]]:
        r = rep.clone().requires_grad_(True)
        hs = [copy.deepcopy(h) for h in heads]
        return r, hs, {t.name: h(r) for t, h in zip(tasks, hs, strict=True)}

    r_new, h_new, outputs = forward()
    per_sample, counts = batched_sample_losses(tasks, outputs, targets)
    ref, ref_counts = _reference(tasks, outputs, targets)
    assert per_sample.shape == (batch, len(tasks))
    assert counts.dtype == torch.int64 and counts.tolist() == ref_counts
    for i, expected in enumerate(ref):
        assert torch.equal(per_sample[:, i], expected), f"task {i} {specs[i]}"

    # The engine's layout: each column divided by max(count, 1), and the update it gives.
    normalized, float_counts = normalized_sample_losses(tasks, outputs, targets)
    assert float_counts.dtype == torch.float64 and float_counts.tolist() == ref_counts
    for i, (expected, count) in enumerate(zip(ref, ref_counts, strict=True)):
        assert torch.equal(normalized[:, i], expected / max(count, 1))
    if not normalized.requires_grad:
        return
    (weights * normalized.sum(dim=0)).sum().backward()
    r_old, h_old, old_outputs = forward()
    _engine_loss_before(tasks, old_outputs, targets, weights).backward()
    assert torch.equal(r_new.grad, r_old.grad)
    for a, b in zip(h_new, h_old, strict=True):
        assert torch.equal(a.weight.grad, b.weight.grad) and torch.equal(a.bias.grad, b.bias.grad)


def test_forty_binary_tasks_are_one_group_in_task_order() -> None:
    """The benchmark's case: one BCE kernel for all tasks, columns in task order, no .item()."""
    g = torch.Generator().manual_seed(0)
    tasks = [Task(f"t{i:02d}", "binary") for i in range(40)]
    outputs = {t.name: torch.randn(8, 1, generator=g) for t in tasks}
    targets = {t.name: torch.randint(0, 2, (8,), generator=g).float() for t in tasks}
    targets["t07"][:] = math.nan  # one task absent from the batch
    per_sample, counts = batched_sample_losses(tasks, outputs, targets)
    ref, ref_counts = _reference(tasks, outputs, targets)
    assert counts[7] == 0 and not per_sample[:, 7].any()
    assert counts.tolist() == ref_counts
    assert torch.equal(per_sample, torch.stack(ref, dim=1))


def test_mixed_kinds_come_back_in_task_order() -> None:
    """Batched groups and tasks computed alone (a Task subclass, a dense kind, a kind derived
    from a built-in one) interleaved: every column where its task is."""
    g = torch.Generator().manual_seed(1)
    tasks = [
        Task("r0", "regression", standardize=False),
        Task("c0", "multiclass", num_classes=3),
        Task("seg", "segmentation", num_classes=3),
        Task("r1", "regression", standardize=False),
        _OwnLoss("own", "regression", standardize=False),
        Task("text", "text_classification", num_classes=3),
        Task("c1", "multiclass", num_classes=3),
    ]
    outputs = {t.name: torch.randn(5, t.output_dim, generator=g) for t in tasks}
    outputs["seg"] = torch.randn(5, 3, 4, 4, generator=g)
    targets = {
        t.name: torch.randint(0, 3, (5,), generator=g) if t.output_dim == 3
        else torch.randn(5, 1, generator=g)
        for t in tasks
    }
    targets["seg"] = torch.randint(-1, 3, (5, 4, 4), generator=g)
    per_sample, counts = batched_sample_losses(tasks, outputs, targets)
    ref, ref_counts = _reference(tasks, outputs, targets)
    assert torch.equal(per_sample, torch.stack(ref, dim=1))
    assert counts.tolist() == ref_counts


def test_no_task_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one task"):
        batched_sample_losses([], {}, {})
