"""Masked per-sample losses of many tasks at once: one kernel per group of alike tasks.

:meth:`polytask.tasks.Task.sample_losses` is the definition of a task's loss, and it stays the
only one: this module computes exactly its values (bit for bit, tested with hypothesis on random
masks) for all the tasks of a step, faster. Why it exists: calling ``sample_losses`` once per task
costs about ten small tensor operations and one host synchronisation (``int(mask.sum())``) per
task. With 40 tasks on a small model that was a quarter of the equal-weights step, and on a GPU
the 40 synchronisations per step stall the device. Tasks whose losses are the same function of
their own columns (same kind, loss, output width, dtypes) are therefore stacked side by side and
their masks, targets, elementwise losses and label counts computed in one operation each, with the
counts left on the device.

Exactness, of the values and of the gradients (runs must not change when the engine switches to
this function), and why the groups are what they are:

* Every elementwise operation (mask, ``where``, standardisation, MSE / L1 / Huber, BCE with
  logits) gives per element what it gives on one task's tensor; per-task constants (a task's target
  mean and standard deviation, its ``pos_weight``, its ``ignore_index``) become a broadcast row
  of the same float32 values.
* Gradients: arithmetic backward formulas (MSE, L1, Huber, the masks, the division by the count,
  log-softmax along a row) are layout-independent too. BCE's is not: its backward evaluates a
  sigmoid, and torch's CPU kernels evaluate a transcendental with vector instructions on most
  elements of a tensor but with the scalar library function on its last few (the tail), so an
  element's last bit depends on where it sits in the tensor. BCE groups therefore run their
  backward task by task, on exactly the tensors the per-task loss would have (:class:`_StackedBCE`).
* Each task's output receives a contiguous gradient (:class:`_StackTasks`), as from the per-task
  loss: a head's bias gradient, a sum over the batch, adds in another order over a strided one.
* BCE with a ``pos_weight`` and BCE without one are different formulas inside torch (not equal to
  the last bit even with ``pos_weight=1``), so a task with a ``pos_weight`` never shares a group
  with one without.
* Multiclass tasks of the same number of classes are laid out as ``[B * Tg, C]`` rows: the
  log-softmax of a row does not depend on how many rows there are.
* A task's sum over its own columns (multilabel, multi-output regression) is a reduction over the
  innermost contiguous dimension of the same length as in the per-task computation.

Only the built-in sample kinds are batched (``binary``, ``multilabel``, ``regression``,
``multiclass``: their specs exactly, :mod:`polytask.task_kinds.sample`). Everything else falls back
to ``Task.sample_losses`` of that task alone: ``custom``, dense and token kinds and kinds registered
by users (their losses and layouts are their own), custom loss callables (an elementwise loss of
one task need not be elementwise over stacked tasks), subclasses of :class:`~polytask.tasks.Task`
(which may redefine ``sample_losses``), and outputs or targets of unusual shapes (a multiclass
output that is not ``[B, C]``, a target whose size differs from its output's).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from polytask.task_kinds.sample import (
    REGRESSION_LOSSES,
    BinaryKind,
    MulticlassKind,
    MultilabelKind,
    RegressionKind,
)
from polytask.tasks import Task

__all__ = ["batched_sample_losses", "normalized_sample_losses"]

_ELEMENTWISE = frozenset(REGRESSION_LOSSES)


@dataclass(frozen=True)
class _Group:
    """Tasks (their positions in the task list) whose losses are computed in one kernel."""

    key: tuple[Hashable, ...]
    index: tuple[int, ...]


def _group_key(task: Task, output: Tensor, target: Tensor) -> tuple[Hashable, ...] | None:
    """What must be equal for two tasks to share a kernel; ``None``: compute this task alone.

    The exact shapes are part of the key so that a group's tensors stack as they are (one
    ``reshape`` of the stacked tensor instead of one per task).
    """
    if type(task) is not Task or callable(task.loss):
        return None
    # Exactly the built-in specs: a kind registered by a user (or a subclass of a built-in spec)
    # may define its loss otherwise, and dense / token kinds lay their targets out otherwise.
    spec = type(task.kind_spec)
    oshape, tshape = output.shape, target.shape
    if not oshape or not tshape or oshape[0] != tshape[0] or oshape[0] == 0:
        return None
    common = (oshape, tshape, output.dtype, target.dtype, output.device)
    if spec is MulticlassKind:
        if len(oshape) != 2 or len(tshape) != 1:
            return None
        return ("multiclass", *common)
    if output.numel() != target.numel():
        return None
    if spec is RegressionKind:
        name = task.loss or "mse"
        if name not in _ELEMENTWISE:
            return None
        return ("regression", name, task.standardize, *common)
    if spec is BinaryKind or spec is MultilabelKind:
        # the same BCE-with-logits, with or without a pos_weight
        return ("bce", task.pos_weight is None, *common)
    return None


def _plan(
    tasks: Sequence[Task], outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]
) -> tuple[list[_Group], list[int]]:
    """Groups of batchable tasks (in first-appearance order) and the tasks computed alone."""
    groups: dict[tuple[Hashable, ...], list[int]] = {}
    alone: list[int] = []
    for i, task in enumerate(tasks):
        key = _group_key(task, outputs[task.name], targets[task.name])
        if key is None:
            alone.append(i)
        else:
            groups.setdefault(key, []).append(i)
    return [_Group(k, tuple(v)) for k, v in groups.items()], alone


class _StackTasks(torch.autograd.Function):
    """``torch.stack(outputs, dim=1)`` whose backward hands every output a contiguous gradient.

    The plain stack's backward gives each output a strided slice of the stacked gradient; a head
    reducing it (its bias gradient sums over the batch) would add in another order than it does
    from the per-task loss, and the last bit of the update would change.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, *outputs: Tensor) -> Tensor:
        return torch.stack(outputs, dim=1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, ...]:
        return tuple(g.contiguous() for g in grad.unbind(1))


class _StackedBCE(torch.autograd.Function):
    """Elementwise BCE with logits of a group of tasks: forward stacked, backward task by task.

    Forward: the tasks' outputs stacked to ``[B, Tg, k]`` and one BCE kernel (its values are
    those of the per-task kernels, tested). Backward: each task's BCE gradient computed by
    differentiating the per-task loss itself, on the task's own contiguous ``[B, k]`` tensors,
    because the sigmoid in BCE's backward rounds an element differently depending on its position
    in the tensor (vector body or scalar tail of torch's CPU kernel); the result is then, to the
    last bit, the gradient the per-task loss gives. The kernels saved are the forward's and the
    masking's; the backward costs what the per-task one cost.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        y: Tensor,
        pos_weights: tuple[float, ...] | None,
        *outputs: Tensor,
    ) -> Tensor:
        batch, tg = outputs[0].shape[0], len(outputs)
        out = _as_3d(torch.stack(outputs, dim=1), batch, tg)
        row = None if pos_weights is None else _row(pos_weights, out, (tg, 1))
        ctx.save_for_backward(y, *outputs)
        ctx.pos_weights = pos_weights  # type: ignore[attr-defined]
        return F.binary_cross_entropy_with_logits(out, y, reduction="none", pos_weight=row)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor | None, ...]:
        y, *outputs = ctx.saved_tensors  # type: ignore[attr-defined]
        pos_weights = ctx.pos_weights  # type: ignore[attr-defined]
        grads: list[Tensor | None] = [None, None]
        with torch.enable_grad():
            for i, output in enumerate(outputs):
                if not ctx.needs_input_grad[2 + i]:
                    grads.append(None)
                    continue
                # what KindSpec.sample_losses differentiates: the [B, k] view of the output, the
                # masked target, a 0-dim pos_weight
                leaf = output.detach().requires_grad_(True)
                out = leaf.reshape(leaf.shape[0], -1)
                pw = None if pos_weights is None else out.new_tensor(pos_weights[i])
                loss = F.binary_cross_entropy_with_logits(
                    out, y[:, i].contiguous(), reduction="none", pos_weight=pw
                )
                (g,) = torch.autograd.grad(loss, leaf, grad[:, i].contiguous())
                grads.append(g)
        return tuple(grads)


def _row(values: Sequence[float], like: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Per-task constants as a broadcastable tensor of ``like``'s dtype and device."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(shape)


def _multiclass(
    tasks: Sequence[Task], outputs: Sequence[Tensor], targets: Sequence[Tensor]
) -> tuple[Tensor, Tensor]:
    """``[B, Tg]`` masked cross-entropies and ``[Tg]`` label counts of same-width multiclass tasks."""
    batch, classes = outputs[0].shape
    out = _StackTasks.apply(*outputs)  # [B, Tg, C]: row (b, i) is task i's logits of b
    target = torch.stack(list(targets), dim=1)  # [B, Tg]
    ignore = torch.tensor(
        [t.ignore_index for t in tasks], dtype=target.dtype, device=target.device
    )
    mask = target != ignore
    y = torch.where(mask, target, 0).long()
    per = F.cross_entropy(out.reshape(-1, classes), y.reshape(-1), reduction="none")
    per = per.view(batch, len(tasks))
    return torch.where(mask, per, 0.0), mask.sum(dim=0)


def _as_3d(stacked: Tensor, batch: int, tg: int) -> Tensor:
    """``[B, Tg, k]``; already so for ``[B, k]`` tensors, the usual case (no call then)."""
    return stacked if stacked.ndim == 3 else stacked.reshape(batch, tg, -1)


def _elementwise(
    key: tuple[Hashable, ...],
    tasks: Sequence[Task],
    outputs: Sequence[Tensor],
    targets: Sequence[Tensor],
) -> tuple[Tensor, Tensor]:
    """``[B, Tg]`` masked losses and ``[Tg]`` counts of same-kind regression / BCE tasks."""
    batch, tg = outputs[0].shape[0], len(tasks)
    # Stacking on dim 1 then flattening each task's trailing dimensions gives, per task, exactly
    # its ``reshape(B, -1)``: the [B, Tg, k] layout with one reshape instead of one per task.
    raw = _as_3d(torch.stack(list(targets), dim=1), batch, tg)
    # ``x == x`` is ``~isnan(x)`` in one kernel instead of two
    mask = raw == raw if raw.is_floating_point() else torch.ones_like(raw, dtype=torch.bool)
    dtype = outputs[0].dtype
    y = torch.where(mask, raw if raw.dtype == dtype else raw.to(dtype), 0.0)
    if key[0] == "regression":
        out = _as_3d(_StackTasks.apply(*outputs), batch, tg)
        name, standardize = key[1], key[2]
        if standardize:
            shape = (1, tg, 1)
            y = (y - _row([t.target_mean_ for t in tasks], y, shape)) / _row(
                [t.target_std_ for t in tasks], y, shape
            )
        elementwise = REGRESSION_LOSSES[str(name)](out, y)
    else:
        pos_weights = None
        if tasks[0].pos_weight is not None:
            pos_weights = tuple(float(t.pos_weight or 0.0) for t in tasks)
        elementwise = _StackedBCE.apply(y, pos_weights, *outputs)
    kept = torch.where(mask, elementwise, 0.0)
    # One entry per task and sample (binary, single-output regression): the sum over it is the
    # entry itself, so a view replaces the reduction kernel and its backward node.
    per = kept.squeeze(2) if kept.shape[2] == 1 else kept.sum(dim=2)
    return per, mask.sum(dim=(0, 2))


def batched_sample_losses(
    tasks: Sequence[Task], outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]
) -> tuple[Tensor, Tensor]:
    """Every task's :meth:`~polytask.tasks.Task.sample_losses`, computed group by group.

    Args:
        tasks: the tasks, in the order of the result's columns.
        outputs: task name -> the model's output for that task (``[B, ...]``).
        targets: task name -> the task's targets (``NaN`` / ``ignore_index`` where unlabelled).

    Returns:
        ``(per_sample, counts)``: ``per_sample[:, i]`` equals ``tasks[i].sample_losses(...)[0]``
        exactly, and ``counts[i]`` (an int64 tensor on the outputs' device, never read back to the
        host here) equals its label count. The task's mean loss is
        ``per_sample[:, i].sum() / counts[i]`` where ``counts[i] > 0``.

    A loss column of a batched group is a slice of one graph: differentiating it alone goes back
    through the whole group (every head of the group receives a zero gradient). Code that needs
    one task's gradient at a time should differentiate the group's loss once with respect to the
    outputs (each task's loss depends on its own output only) instead of slicing.
    """
    if not tasks:
        raise ValueError("batched_sample_losses needs at least one task")
    groups, alone = _plan(tasks, outputs, targets)
    parts: list[Tensor] = []
    count_parts: list[Tensor] = []
    order: list[int] = []
    for group in groups:
        members = [tasks[i] for i in group.index]
        outs = [outputs[t.name] for t in members]
        tgts = [targets[t.name] for t in members]
        if group.key[0] == "multiclass":
            per, counts = _multiclass(members, outs, tgts)
        else:
            per, counts = _elementwise(group.key, members, outs, tgts)
        parts.append(per)
        count_parts.append(counts)
        order.extend(group.index)
    for i in alone:
        task = tasks[i]
        per, count = task.sample_losses(outputs[task.name], targets[task.name])
        parts.append(per.reshape(per.shape[0], 1))
        count_parts.append(torch.tensor([count], dtype=torch.int64, device=per.device))
        order.append(i)
    per_sample = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    counts = count_parts[0] if len(count_parts) == 1 else torch.cat(count_parts)
    if order != list(range(len(tasks))):
        position = torch.empty(len(order), dtype=torch.long)
        position[torch.tensor(order)] = torch.arange(len(order))
        position = position.to(per_sample.device)
        per_sample = per_sample.index_select(1, position)
        counts = counts.index_select(0, position)
    return per_sample, counts


def normalized_sample_losses(
    tasks: Sequence[Task], outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]
) -> tuple[Tensor, Tensor]:
    """``[B, T]`` per-sample losses divided by each task's label count (at least 1), and counts.

    The engine's loss layout: a column sums to the task's mean loss over its labelled entries.
    Equal, to the last bit, to dividing each task's ``sample_losses`` by ``max(count, 1)``.
    Counts come back as float64, the engine's dtype for its reductions across processes.
    """
    per_sample, counts = batched_sample_losses(tasks, outputs, targets)
    # Dividing by the int64 counts computes in the losses' float dtype (type promotion), exactly
    # as dividing by the Python int ``max(count, 1)`` does, without a conversion kernel.
    return per_sample / counts.clamp(min=1), counts.to(torch.float64)
