"""The batch contract: ``(inputs, {task: target})``, and the collate that builds it from items.

``inputs`` is a tensor ``[B, ...]`` or, for several inputs, a dict of named tensors that share the
batch dimension (``{"smiles_ids": [B, L], "fingerprint": [B, 2048]}``). ``targets`` maps every task
of the run to a tensor ``[B, ...]`` in which missing labels are marked the task's way (NaN, or the
multiclass ``ignore_index``), per sample or per element (pixel, token) for dense and sequence
targets. Everything downstream (the gradient engine, the losses, the metrics) reads only this.

Items of a ``torch.utils.data.Dataset`` come in one of two forms:

* a pair ``(inputs, targets)``: ``inputs`` a tensor / array / number or a dict of them, ``targets``
  a dict over *some* tasks (a task that is absent, or ``None``, is a missing label);
* a flat dict (Hugging Face ``datasets`` rows), when the collate is told which keys are inputs
  (``input_keys``): every other key must be a task.

:class:`MultiTaskCollate` stacks items into a batch, fills absent labels with the task's missing
marker, and refuses keys that are no task, shapes that differ between items, and dicts of inputs
that lack a key, naming the dataset index of the offending item.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from polytask.task_kinds.sequence import token_alignment_problem
from polytask.tasks import Task

__all__ = [
    "Batch",
    "BatchError",
    "Inputs",
    "MultiTaskCollate",
    "batch_len",
    "cat_inputs",
    "input_device",
    "move_to",
    "slice_inputs",
]

Inputs = Union[Tensor, dict[str, Tensor]]  # noqa: UP007 (a runtime alias, used in isinstance-free hints)
Batch = tuple[Inputs, dict[str, Tensor]]


class BatchError(ValueError):
    """An item or batch that breaks the contract; the message names the key and the item."""


def batch_len(inputs: Inputs) -> int:
    """Number of samples in ``inputs`` (checked to agree across the keys of a dict)."""
    # shape[0], not int(shape[0]): eagerly it is an int already, and under torch.export / tracing
    # it stays symbolic, so an exported model keeps a dynamic batch size (lifecycle/export.py)
    if isinstance(inputs, Tensor):
        return inputs.shape[0]
    sizes = {k: v.shape[0] for k, v in inputs.items()}
    if not sizes:
        raise BatchError("inputs are an empty dict; give at least one named input tensor")
    first = next(iter(sizes.values()))
    if any(size != first for size in sizes.values()):
        raise BatchError(f"the named inputs have different batch sizes: {sizes}")
    return first


def slice_inputs(inputs: Inputs, index: Tensor | slice) -> Inputs:
    """Rows ``index`` of a tensor or of every tensor of a dict."""
    if isinstance(inputs, Tensor):
        return inputs[index]
    return {k: v[index] for k, v in inputs.items()}


def cat_inputs(parts: Sequence[Inputs]) -> Inputs:
    """Concatenate inputs along the batch dimension (tensors, or dicts with the same keys)."""
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(list(parts))  # type: ignore[arg-type]
    return {k: torch.cat([p[k] for p in parts]) for k in first}  # type: ignore[index]


def move_to(inputs: Inputs, device: torch.device, non_blocking: bool = False) -> Inputs:
    """``inputs`` on ``device``; ``non_blocking`` pays off with pinned memory on a GPU."""
    if isinstance(inputs, Tensor):
        return inputs.to(device, non_blocking=non_blocking)
    return {k: v.to(device, non_blocking=non_blocking) for k, v in inputs.items()}


def input_device(inputs: Inputs) -> torch.device:
    return inputs.device if isinstance(inputs, Tensor) else next(iter(inputs.values())).device


def missing_value(task: Task) -> float:
    """The marker of a missing label of ``task``: its ``ignore_index`` (class labels) or NaN.

    The task's kind decides (:attr:`polytask.tasks.Task.missing_marker`), so registered kinds
    (segmentation's ignore index, depth's NaN) are filled their own way.
    """
    return task.missing_marker


def _as_tensor(value: Any, where: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, bool | int | float | np.number):
        return torch.tensor(value)
    if isinstance(value, list | tuple):
        try:
            return torch.as_tensor(value)
        except (TypeError, ValueError) as err:
            raise BatchError(f"{where}: cannot make a tensor of this list ({err})") from None
    raise BatchError(
        f"{where}: expected a tensor, a NumPy array or a number, got {type(value).__name__}"
    )


class MultiTaskCollate:
    """Turn a list of dataset items into one batch ``(inputs, {task: target})``.

    Args:
        tasks: the run's tasks; every batch carries every task's key.
        input_keys: for flat dict items (Hugging Face rows): the keys that are inputs. One key gives
            a tensor input; several give a dict of named inputs.
        transform_inputs: an optional function applied to the stacked inputs of the batch
            (tokenisation of a batch of strings happens here: ``inputs`` may then be a list of
            strings, which is handed over as it is).

    Picklable (a class, not a closure), so DataLoader workers can use it.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        input_keys: Sequence[str] | None = None,
        transform_inputs: Callable[[Any], Inputs] | None = None,
    ) -> None:
        self.tasks = list(tasks)
        self.task_names = [t.name for t in self.tasks]
        self.input_keys = list(input_keys) if input_keys is not None else None
        self.transform_inputs = transform_inputs

    # ------------------------------------------------------------------ items
    def split_item(self, item: Any, index: int | str) -> tuple[Any, Mapping[str, Any]]:
        """``(inputs, targets)`` of one item, whichever form it has."""
        where = f"item {index}"
        if isinstance(item, Mapping):
            if self.input_keys is None:
                raise BatchError(
                    f"{where} is a dict with keys {sorted(item)}; dict items need input_keys "
                    "(which keys are inputs; the others must be tasks), or return a pair "
                    "(inputs, {task: target})"
                )
            missing = [k for k in self.input_keys if k not in item]
            if missing:
                raise BatchError(f"{where}: input key(s) {missing} missing; it has {sorted(item)}")
            inputs: Any = (
                item[self.input_keys[0]]
                if len(self.input_keys) == 1
                else {k: item[k] for k in self.input_keys}
            )
            targets = {k: v for k, v in item.items() if k not in self.input_keys}
            return inputs, targets
        if isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[1], Mapping):
            return item[0], item[1]
        raise BatchError(
            f"{where}: expected (inputs, {{task: target}}) or a dict row, got "
            f"{type(item).__name__}"
            + (f" of length {len(item)}" if isinstance(item, tuple | list) else "")
        )

    def __call__(self, items: Sequence[Any], indices: Sequence[int] | None = None) -> Batch:
        if not items:
            raise BatchError("cannot collate an empty list of items")
        ids: Sequence[int | str] = indices if indices is not None else list(range(len(items)))
        pairs = [self.split_item(item, i) for item, i in zip(items, ids, strict=True)]
        inputs = self._stack_inputs([p[0] for p in pairs], ids)
        targets = {
            task.name: self._stack_targets(task, [p[1] for p in pairs], ids) for task in self.tasks
        }
        unknown = {k for _, t in pairs for k in t} - set(self.task_names)
        if unknown:
            bad = sorted(unknown)[0]
            at = next(i for (_, t), i in zip(pairs, ids, strict=True) if bad in t)
            raise BatchError(
                f"item {at}: key {bad!r} is no task of this run (tasks: {self.task_names})"
            )
        if isinstance(inputs, Tensor):  # token labels must align with token ids (per item)
            for task in (t for t in self.tasks if t.layout == "token"):
                problem = token_alignment_problem(task, inputs, targets[task.name], ids)
                if problem is not None:
                    raise BatchError(problem)
        return inputs, targets

    def _stack_inputs(self, values: list[Any], ids: Sequence[int | str]) -> Inputs:
        first = values[0]
        if isinstance(first, Mapping):
            keys = list(first)
            for v, i in zip(values, ids, strict=True):
                if not isinstance(v, Mapping) or set(v) != set(keys):
                    have = sorted(v) if isinstance(v, Mapping) else type(v).__name__
                    raise BatchError(
                        f"item {i}: inputs {have} differ from the batch's first item's {keys}"
                    )
            stacked: Inputs = {
                k: self._stack([v[k] for v in values], ids, f"input {k!r}") for k in keys
            }
        elif isinstance(first, str) or (
            isinstance(first, list | tuple) and first and isinstance(first[0], str)
        ):
            if self.transform_inputs is None:
                raise BatchError(
                    f"item {ids[0]}: inputs are text; give a tokenizer (transform_inputs) that "
                    "turns a batch of strings into tensors"
                )
            return self.transform_inputs(list(values))
        else:
            stacked = self._stack(values, ids, "inputs")
        return self.transform_inputs(stacked) if self.transform_inputs is not None else stacked

    def _stack(self, values: list[Any], ids: Sequence[int | str], what: str) -> Tensor:
        tensors = [_as_tensor(v, f"item {i}: {what}") for v, i in zip(values, ids, strict=True)]
        shape = tensors[0].shape
        for t, i in zip(tensors, ids, strict=True):
            if t.shape != shape:
                raise BatchError(
                    f"item {i}: {what} has shape {list(t.shape)}, the batch's first item "
                    f"{list(shape)}"
                )
        out = torch.stack(tensors)
        return out.float() if out.dtype == torch.float64 else out

    def _stack_targets(
        self, task: Task, targets: list[Mapping[str, Any]], ids: Sequence[int | str]
    ) -> Tensor:
        rows = {
            row: _as_tensor(t[task.name], f"item {i}: task {task.name!r}")
            for row, (t, i) in enumerate(zip(targets, ids, strict=True))
            if t.get(task.name) is not None
        }
        if not rows:
            if task.layout != "sample":
                # a dense or token target's shape (H, W or L) cannot be guessed from the task
                raise BatchError(
                    f"items {ids[0]}..{ids[-1]}: no item labels the {task.layout} task "
                    f"{task.name!r}, so its target shape is unknown; return a target full of its "
                    f"missing marker ({task.missing_marker}) for unlabelled items instead"
                )
            scalar = task.output_dim == 1 or task.kind_spec.index_labels
            return _filled(task, len(targets), () if scalar else (task.output_dim,))
        ref = next(iter(rows.values()))
        for row, t in rows.items():
            if t.shape != ref.shape:
                raise BatchError(
                    f"item {ids[row]}: task {task.name!r} target has shape {list(t.shape)}, "
                    f"another item's {list(ref.shape)}"
                )
        out = _filled(task, len(targets), tuple(ref.shape))
        for row, t in rows.items():
            out[row] = t.to(out.dtype)
        return out


def _filled(task: Task, n: int, shape: tuple[int, ...]) -> Tensor:
    return torch.full((n, *shape), task.missing_marker, dtype=task.target_dtype)
