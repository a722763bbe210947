"""Sequence kinds: a class per token, or a class per sequence.

``token_classification`` (layout ``token``) reads a trunk's ``[B, L, D]`` features position by
position (:class:`~polytask.models.heads.TokenHead`) and scores per-token cross-entropy over the
labelled tokens; padding and sub-word continuations carry the ``ignore_index`` (-1), so they count
in neither the loss nor the metrics. Labels must align with the tokens, one label per token id, and
a misalignment is refused where it can first be seen, naming the task and the sample:

* in the data (:func:`token_alignment_problem`, called by the collate for every batch and by
  in-memory validation, when the inputs are token ids ``[B, L]``): labels of another length than
  the ids, or a label on a padding position (the id ``pad_id``, option of the task, default 0,
  the built-in tokenizer's and transformer's; ``None`` turns this check off);
* in the loss (any inputs): an output ``[B, L_out, C]`` whose ``L_out`` is not the labels' length.

Token tasks see exactly the ``L`` token positions: a trunk that prepends a summary token (the
built-in transformer's CLS) declares it in its feature spec (``summary_positions``) and the token
head skips it, so labels are one per token id, never with a placeholder for the CLS. Labels with
one position more than the tokens (a leading ``ignore_index`` for a CLS) are refused, naming both
lengths, since reading them shifted could score every token against its neighbour's label; and an
output with one position more than the labels (a task's own head, or a trunk that prepends a
position without declaring it) is refused the same way.

``text_classification`` is ``multiclass`` on a sequence trunk: the same loss, metrics and numbers,
with the sequence pooled (CLS or mean) by :class:`~polytask.models.heads.PooledHead`. It is its
own name so that a config says what it means and ``polytask list tasks`` shows it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torchmetrics
from torch import Tensor
from torch.nn import functional as F

from polytask.task_kinds import KindSpec, LabelError, MetricFactory
from polytask.task_kinds.sample import MulticlassKind

if TYPE_CHECKING:
    from polytask.tasks import Task

__all__ = ["TextClassificationKind", "TokenClassificationKind", "token_alignment_problem"]

_NO_CLS_LABEL = (
    "The labels have one position more than the tokens: token tasks see exactly the token "
    "positions (a trunk's CLS summary position is skipped by the token head), so labels that "
    "start with an ignore_index ({ignore}) written for a CLS position must drop it"
)


class TokenClassificationKind(KindSpec):
    """A class per token: per-token cross-entropy; token accuracy and macro F1 over the split."""

    layout = "token"
    description = "a class per token (tagging, NER); needs a sequence trunk [B, L, D]"
    target = "long [B, L] in [0, num_classes); ignore_index (-1) = padding / unlabelled"
    loss_text = "per-token cross-entropy over labelled tokens"
    metric_names = ("accuracy", "f1_macro")
    primary_higher_is_better = True
    index_labels = True
    option_defaults: ClassVar[Mapping[str, Any]] = {"pad_id": 0}

    def check(self, task: Task) -> None:
        super().check(task)
        if task.num_classes is None or task.num_classes < 2:
            raise ValueError(
                f"task {task.name!r}: kind {self.name} needs num_classes >= 2, got {task.num_classes}"
            )
        if 0 <= task.ignore_index < task.num_classes:
            raise ValueError(
                f"task {task.name!r}: ignore_index {task.ignore_index} is one of the classes "
                f"[0, {task.num_classes})"
            )
        if isinstance(task.loss, str):
            raise ValueError(f"task {task.name!r}: kind {self.name} has no named losses")
        pad = self.option(task, "pad_id")
        if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int)):
            raise ValueError(
                f"task {task.name!r}: option pad_id must be a token id (int) or None, got {pad!r}"
            )

    def output_dim(self, task: Task) -> int:
        assert task.num_classes is not None
        return task.num_classes

    def validate_targets(self, task: Task, target: Tensor, where: str = "") -> None:
        loc = f" ({where})" if where else ""
        if target.ndim != 2:
            raise LabelError(
                f"task {task.name!r}{loc}: token labels are [B, L] (one class per token), got "
                f"shape {list(target.shape)}"
            )
        if target.is_floating_point():
            if torch.isnan(target).any():
                raise LabelError(
                    f"task {task.name!r}{loc}: unlabelled tokens use ignore_index="
                    f"{task.ignore_index}, not NaN"
                )
            if (target != target.round()).any():
                raise LabelError(f"task {task.name!r}{loc}: token labels must be integers")
        assert task.num_classes is not None
        bad = (target != task.ignore_index) & ((target < 0) | (target >= task.num_classes))
        if bad.any():
            first = int(bad.reshape(-1).nonzero()[0, 0])
            row, pos = divmod(first, target.shape[1])
            raise LabelError(
                f"task {task.name!r}{loc}: label {target.reshape(-1)[first].item()} at sample {row}, "
                f"token {pos} is outside [0, {task.num_classes}) and is not the ignore_index "
                f"{task.ignore_index}"
            )

    def _check_aligned(self, task: Task, output: Tensor, target: Tensor) -> None:
        if output.ndim != 3 or output.shape[0] != target.shape[0] or (
            output.shape[2] != task.output_dim
        ):
            raise LabelError(
                f"task {task.name!r}: token labels of shape {list(target.shape)} do not align with "
                f"the head's output {list(output.shape)} (expected [B, L, {task.output_dim}] for "
                "[B, L] labels); pad or truncate the labels with the tokens"
            )
        positions, length = int(output.shape[1]), int(target.shape[1])
        if positions == length:
            return
        # name the first sample whose labels the output cannot hold (sample 0 if none is beyond)
        labelled = self.label_mask(task, target)
        beyond = labelled[:, positions:].any(dim=1) if length > positions else labelled.any(1)
        sample = int(beyond.nonzero()[0, 0]) if bool(beyond.any()) else 0
        hint = ""
        if positions == length + 1:
            hint = (
                " The output has one position more than there are labels: a trunk that prepends "
                "a summary token (a CLS) declares it in its feature spec (summary_positions=1) so "
                "that the token head skips it; a task's own head gets the features as they are "
                "and must skip it itself."
            )
        elif length == positions + 1:
            hint = f" {_NO_CLS_LABEL.format(ignore=task.ignore_index)}."
        raise LabelError(
            f"task {task.name!r}: token labels of shape {list(target.shape)} do not align with "
            f"the head's output {list(output.shape)}: sample {sample} has {length} label "
            f"positions but the output has {positions} token positions; pad or truncate the "
            f"labels with the tokens.{hint}"
        )

    def sample_losses(self, task: Task, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        self._check_aligned(task, output, target)
        mask = self.label_mask(task, target)
        count = int(mask.sum())
        y = torch.where(mask, target, torch.zeros_like(target)).long()
        if callable(task.loss):
            per_token = task.loss(output, y).reshape(mask.shape)
        else:
            per_token = F.cross_entropy(output.transpose(1, 2), y, reduction="none")
        per = torch.where(mask, per_token, torch.zeros_like(per_token)).sum(dim=1)
        return per, count

    def chance_loss(self, task: Task) -> float | None:
        return math.log(task.num_classes or 2)

    def predict(self, task: Task, output: Tensor) -> Tensor:
        return output.argmax(dim=-1)

    def metric_factories(self, task: Task) -> dict[str, MetricFactory]:
        from torchmetrics import classification as C

        n = task.num_classes
        assert n is not None
        return {
            "accuracy": lambda: C.MulticlassAccuracy(num_classes=n, average="micro"),
            "f1_macro": lambda: C.MulticlassF1Score(num_classes=n, average="macro"),
        }

    def update_metrics(
        self, task: Task, metrics: torchmetrics.MetricCollection, output: Tensor, target: Tensor
    ) -> int:
        mask = self.label_mask(task, target)
        fed = int(mask.sum())
        if fed == 0:
            return 0
        metrics.update(output.argmax(dim=-1)[mask], target[mask].long())
        return fed


def token_alignment_problem(
    task: Task, ids: Tensor, labels: Tensor, rows: Sequence[int | str] | None = None
) -> str | None:
    """Why token ``labels [B, L']`` do not align with token ``ids [B, L]``, or ``None``.

    Two problems, each named by the task, the sample (``rows``: the items' own indices, default
    ``0 .. B-1``) and the lengths or the position: labels of another length than the ids, and a
    label (not ``ignore_index``) on a padding position (an id equal to the task's ``pad_id``).
    Only integer ids ``[B, L]`` are checked (the caller passes what it has; other inputs are
    checked at the loss). Returns a message rather than raising so that each caller raises its own
    error type (the collate's ``BatchError``, the data's ``DataError``).
    """
    if task.layout != "token" or ids.ndim != 2 or ids.dtype.is_floating_point or ids.dtype in (
        torch.bool, torch.complex64, torch.complex128
    ):
        return None
    names = list(rows) if rows is not None else list(range(ids.shape[0]))
    if labels.ndim != 2 or labels.shape[0] != ids.shape[0]:
        return None  # not token labels at all: the kind's validate_targets says what is wrong
    if labels.shape[1] != ids.shape[1]:
        extra = labels.shape[1] == ids.shape[1] + 1
        return (
            f"task {task.name!r}: token labels do not align with the tokens: sample {names[0]} "
            f"has {labels.shape[1]} labels for {ids.shape[1]} token ids (every sample of this "
            "batch alike); give one label per token id, ignore_index "
            f"({task.ignore_index}) where a token has none"
            + (f". {_NO_CLS_LABEL.format(ignore=task.ignore_index)}" if extra else "")
        )
    pad = task.kind_spec.option(task, "pad_id") if "pad_id" in task.kind_spec.option_defaults else None
    if pad is None:
        return None
    on_pad = task.label_mask(labels) & (ids == pad)
    if not bool(on_pad.any()):
        return None
    first = on_pad.nonzero()[0]
    row, pos = int(first[0]), int(first[1])
    tokens = int((ids[row] != pad).sum())
    return (
        f"task {task.name!r}: token labels do not align with the tokens: sample {names[row]} has "
        f"label {int(labels[row, pos])} at position {pos}, a padding position (token id "
        f"{pad}); the sample has {tokens} real tokens and {int(task.label_mask(labels[row]).sum())} "
        f"labels. Label padding with ignore_index ({task.ignore_index}), or set the task's "
        "option pad_id (None: no padding id)"
    )


class TextClassificationKind(MulticlassKind):
    """``multiclass`` on a pooled sequence trunk (same loss, metrics and numbers)."""

    description = (
        "a class per text: multiclass on a sequence trunk, pooled (CLS or mean) by PooledHead"
    )
    target = "long [B] in [0, num_classes); ignore_index (-1) = missing"
