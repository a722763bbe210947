"""Sequence kinds: a class per token, or a class per sequence.

``token_classification`` (layout ``token``) reads a trunk's ``[B, L, D]`` features position by
position (:class:`~polytask.models.heads.TokenHead`) and scores per-token cross-entropy over the
labelled tokens; padding and sub-word continuations carry the ``ignore_index`` (-1). Labels must
align with the tokens: a ``[B, L']`` target for an ``[B, L, C]`` output raises naming both.

``text_classification`` is ``multiclass`` on a sequence trunk: the same loss, metrics and numbers,
with the sequence pooled (CLS or mean) by :class:`~polytask.models.heads.PooledHead`. It is its
own name so that a config says what it means and ``polytask list tasks`` shows it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torchmetrics
from torch import Tensor
from torch.nn import functional as F

from polytask.task_kinds import KindSpec, LabelError, MetricFactory
from polytask.task_kinds.sample import MulticlassKind

if TYPE_CHECKING:
    from polytask.tasks import Task

__all__ = ["TextClassificationKind", "TokenClassificationKind"]


class TokenClassificationKind(KindSpec):
    """A class per token: per-token cross-entropy; token accuracy and macro F1 over the split."""

    layout = "token"
    description = "a class per token (tagging, NER); needs a sequence trunk [B, L, D]"
    target = "long [B, L] in [0, num_classes); ignore_index (-1) = padding / unlabelled"
    loss_text = "per-token cross-entropy over labelled tokens"
    metric_names = ("accuracy", "f1_macro")
    primary_higher_is_better = True
    index_labels = True

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
        if output.ndim != 3 or output.shape[:2] != target.shape or output.shape[2] != task.output_dim:
            raise LabelError(
                f"task {task.name!r}: token labels of shape {list(target.shape)} do not align with "
                f"the head's output {list(output.shape)} (expected [B, L, {task.output_dim}] for "
                "[B, L] labels); pad or truncate the labels with the tokens"
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


class TextClassificationKind(MulticlassKind):
    """``multiclass`` on a pooled sequence trunk (same loss, metrics and numbers)."""

    description = (
        "a class per text: multiclass on a sequence trunk, pooled (CLS or mean) by PooledHead"
    )
    target = "long [B] in [0, num_classes); ignore_index (-1) = missing"
