"""The sample-level kinds: one target (a value or a short vector) per sample.

``binary``, ``multiclass``, ``multilabel``, ``regression`` and ``custom``: the kinds polytask had
before kinds became pluggable. Their losses, masks, validation messages and metrics are exactly the
ones :class:`~polytask.tasks.Task` computed itself (the stored results were made with them), moved
here so that a new kind is a registration rather than another branch in every method.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torchmetrics
from torch import Tensor
from torch.nn import functional as F

from polytask.task_kinds import KindSpec, LabelError, MetricFactory

if TYPE_CHECKING:
    from polytask.tasks import ElementwiseLoss, Task

__all__ = [
    "REGRESSION_LOSSES",
    "BinaryKind",
    "CustomKind",
    "MulticlassKind",
    "MultilabelKind",
    "RegressionKind",
]

#: The named elementwise losses a task may choose with ``loss="mse"`` (regression, depth).
REGRESSION_LOSSES: dict[str, ElementwiseLoss] = {
    "mse": lambda out, y: F.mse_loss(out, y, reduction="none"),
    "l1": lambda out, y: F.l1_loss(out, y, reduction="none"),
    "huber": lambda out, y: F.huber_loss(out, y, reduction="none"),
}


def _as_2d(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


class _WidthChecked(KindSpec):
    """Elementwise kinds whose targets have a fixed number of columns per sample."""

    def expected_width(self, task: Task) -> int | None:
        return self.output_dim(task)

    def validate_values(self, task: Task, labelled: Tensor, where: str) -> None:
        """Check the labelled values (already known to be finite)."""

    def validate_targets(self, task: Task, target: Tensor, where: str = "") -> None:
        loc = f" ({where})" if where else ""
        if target.ndim == 0:
            raise LabelError(f"task {task.name!r}{loc}: targets must have a batch dimension")
        labelled = target[self.label_mask(task, target)]
        super().validate_targets(task, target, where)
        self.validate_values(task, labelled, loc)
        width = _as_2d(target).shape[1]
        expected = self.expected_width(task)
        if expected is not None and width != expected:
            raise LabelError(
                f"task {task.name!r}{loc}: targets have {width} column(s) per sample, "
                f"expected {expected}"
            )


class _BCEKind(_WidthChecked):
    """Binary and multilabel: BCE with logits (optionally ``pos_weight``), labels in {0, 1}."""

    loss_text = "binary cross-entropy with logits (NaN = missing, optional pos_weight)"

    def validate_values(self, task: Task, labelled: Tensor, where: str) -> None:
        bad = (labelled != 0) & (labelled != 1)
        if bad.any():
            raise LabelError(
                f"task {task.name!r}{where}: {task.kind.value} labels must be 0 or 1 (NaN for "
                f"missing); found {labelled[bad][0].item()}"
            )

    def elementwise_loss(self, task: Task, output: Tensor, target: Tensor) -> Tensor:
        pw = None if task.pos_weight is None else output.new_tensor(task.pos_weight)
        return F.binary_cross_entropy_with_logits(output, target, reduction="none", pos_weight=pw)

    def chance_loss(self, task: Task) -> float | None:
        return math.log(2.0) * max(1.0, task.pos_weight or 1.0)

    def predict(self, task: Task, output: Tensor) -> Tensor:
        return torch.sigmoid(output).reshape(output.shape[0], -1).squeeze(-1)


class BinaryKind(_BCEKind):
    description = "one yes/no label per sample"
    target = "float [B] in {0, 1}; NaN = missing"
    metric_names = ("auroc", "accuracy")
    primary_higher_is_better = True

    def output_dim(self, task: Task) -> int:
        return 1

    def metric_factories(self, task: Task) -> dict[str, MetricFactory]:
        from torchmetrics import classification as C

        return {"auroc": C.BinaryAUROC, "accuracy": C.BinaryAccuracy}

    def metric_target(self, task: Task, target: Tensor) -> Tensor:
        return target.long()


class MultilabelKind(_BCEKind):
    description = "several yes/no labels per sample, each possibly missing"
    target = "float [B, num_classes] in {0, 1}; NaN = missing"
    metric_names = ("auroc", "accuracy")
    primary_higher_is_better = True

    def check(self, task: Task) -> None:
        super().check(task)
        _need_classes(task)

    def output_dim(self, task: Task) -> int:
        assert task.num_classes is not None
        return task.num_classes

    def expected_width(self, task: Task) -> int | None:
        return task.num_classes

    def metric_factories(self, task: Task) -> dict[str, MetricFactory]:
        from torchmetrics import classification as C

        n = task.num_classes
        assert n is not None
        return {
            "auroc": lambda: C.MultilabelAUROC(num_labels=n, ignore_index=-1),
            "accuracy": lambda: C.MultilabelAccuracy(num_labels=n, ignore_index=-1),
        }

    def update_metrics(
        self, task: Task, metrics: torchmetrics.MetricCollection, output: Tensor, target: Tensor
    ) -> int:
        mask = self.label_mask(task, target)
        rows = mask.any(dim=1)
        if int(rows.sum()) == 0:
            return 0
        y = torch.where(mask, target, torch.full_like(target, -1)).long()
        metrics.update(torch.sigmoid(output[rows]), y[rows])
        return int(mask.sum())


class RegressionKind(_WidthChecked):
    description = "real values, standardized on the training split and reported in their units"
    target = "float [B] or [B, out_dim]; NaN = missing"
    loss_text = "mse (or l1, huber) on standardized targets"
    metric_names = ("mae", "rmse", "explained_variance")
    primary_higher_is_better = False

    def sample_losses(self, task: Task, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        mask = self.label_mask(task, target)
        count = int(mask.sum())
        out = _as_2d(output)
        m = _as_2d(mask)
        y = torch.where(m, _as_2d(target).to(out.dtype), torch.zeros_like(out))
        if task.standardize:
            y = (y - task.target_mean_) / task.target_std_
        if callable(task.loss):
            elementwise = task.loss(out, y)
        else:
            elementwise = REGRESSION_LOSSES[task.loss or "mse"](out, y)
        per = torch.where(m, elementwise, torch.zeros_like(elementwise)).sum(dim=1)
        return per, count

    def chance_loss(self, task: Task) -> float | None:
        return 1.0 if task.standardize else None

    def predict(self, task: Task, output: Tensor) -> Tensor:
        pred = output.reshape(output.shape[0], -1).squeeze(-1)
        return pred * task.target_std_ + task.target_mean_ if task.standardize else pred

    def metric_factories(self, task: Task) -> dict[str, MetricFactory]:
        from torchmetrics import regression as R

        return {
            "mae": R.MeanAbsoluteError,
            "rmse": lambda: R.MeanSquaredError(squared=False),
            "explained_variance": R.ExplainedVariance,
        }


class CustomKind(_WidthChecked):
    description = "anything else: the task brings head, loss, metrics and out_dim"
    target = "float [B, ...]; NaN = missing"
    loss_text = "the task's own callable"

    def check(self, task: Task) -> None:
        super().check(task)
        if task.head is None or task.loss is None or task.metrics is None or task.out_dim is None:
            raise ValueError(
                f"task {task.name!r}: a custom task needs head, loss, metrics and out_dim"
            )

    def expected_width(self, task: Task) -> int | None:
        return None

    def elementwise_loss(self, task: Task, output: Tensor, target: Tensor) -> Tensor:
        # a custom task may name a regression loss instead of passing a callable
        return REGRESSION_LOSSES[str(task.loss or "mse")](output, target)

    def metric_factories(self, task: Task) -> dict[str, MetricFactory]:
        raise AssertionError("custom tasks carry their own metrics")


class MulticlassKind(KindSpec):
    description = "one class out of num_classes per sample"
    target = "long [B] in [0, num_classes); ignore_index (-1) = missing"
    loss_text = "cross-entropy"
    metric_names = ("accuracy", "f1_macro")
    primary_higher_is_better = True
    index_labels = True

    def check(self, task: Task) -> None:
        super().check(task)
        _need_classes(task)

    def output_dim(self, task: Task) -> int:
        assert task.num_classes is not None
        return task.num_classes

    def validate_targets(self, task: Task, target: Tensor, where: str = "") -> None:
        loc = f" ({where})" if where else ""
        if target.ndim == 0:
            raise LabelError(f"task {task.name!r}{loc}: targets must have a batch dimension")
        mask = self.label_mask(task, target)
        labelled = target[mask]
        if target.is_floating_point():
            if torch.isnan(target).any():
                raise LabelError(
                    f"task {task.name!r}{loc}: multiclass targets use ignore_index="
                    f"{task.ignore_index} for missing labels, not NaN"
                )
            if (labelled != labelled.round()).any():
                raise LabelError(f"task {task.name!r}{loc}: multiclass targets must be integers")
        assert task.num_classes is not None
        bad = (labelled < 0) | (labelled >= task.num_classes)
        if bad.any():
            row = int(torch.nonzero(mask.reshape(-1))[bad.nonzero()[0, 0]].item())
            raise LabelError(
                f"task {task.name!r}{loc}: label {labelled[bad][0].item()} at row {row} is out "
                f"of range [0, {task.num_classes}) (missing labels use {task.ignore_index})"
            )

    def sample_losses(self, task: Task, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        mask = self.label_mask(task, target)
        count = int(mask.sum())
        y = torch.where(mask, target, torch.zeros_like(target)).long()
        if task.loss is None:
            per = F.cross_entropy(output, y, reduction="none")
        else:
            assert callable(task.loss)
            per = task.loss(output, y).reshape(output.shape[0])
        return torch.where(mask, per, torch.zeros_like(per)), count

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
        if int(mask.sum()) == 0:
            return 0
        metrics.update(output[mask], target[mask].long())
        return int(mask.sum())


def _need_classes(task: Task) -> None:
    if task.num_classes is None or task.num_classes < 2:
        raise ValueError(
            f"task {task.name!r}: kind {task.kind.value} needs num_classes >= 2, "
            f"got {task.num_classes}"
        )
