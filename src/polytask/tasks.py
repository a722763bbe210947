"""Tasks: what is predicted, how it is scored, and which labels are missing.

A :class:`Task` is the single place that knows a target's kind. Everything downstream (the model's
head, the masked loss, torchmetrics, predictions written to disk) asks the task rather than
branching on kinds itself, so a custom kind only needs a head, a loss and metrics.

Missing labels are first-class: ``NaN`` marks a missing binary, multilabel or regression label, and
``ignore_index`` (default ``-1``) a missing multiclass label. A sample without a label for a task
contributes nothing to that task's loss or metrics, and a batch with no label for a task reports the
task as absent instead of producing ``0 / 0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum

import torch
import torchmetrics
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "LabelError",
    "Task",
    "TaskKind",
    "available_kinds",
]


class TaskKind(str, Enum):
    """The built-in kinds of target. ``custom`` needs a user head, loss and metrics."""

    BINARY = "binary"
    MULTICLASS = "multiclass"
    MULTILABEL = "multilabel"
    REGRESSION = "regression"
    CUSTOM = "custom"


def available_kinds() -> list[str]:
    return [k.value for k in TaskKind]


class LabelError(ValueError):
    """A target tensor that cannot be a label of its task (wrong shape, dtype or value)."""


ElementwiseLoss = Callable[[Tensor, Tensor], Tensor]
MetricFactory = Callable[[], torchmetrics.Metric]

_REGRESSION_LOSSES: dict[str, ElementwiseLoss] = {
    "mse": lambda out, y: F.mse_loss(out, y, reduction="none"),
    "l1": lambda out, y: F.l1_loss(out, y, reduction="none"),
    "huber": lambda out, y: F.huber_loss(out, y, reduction="none"),
}


@dataclass
class Task:
    """One prediction target.

    Args:
        name: unique task name; used as the key of outputs, targets, metrics and weights.
        kind: ``binary``, ``multiclass``, ``multilabel``, ``regression`` or ``custom``.
        num_classes: number of classes (multiclass) or of labels (multilabel).
        out_dim: output width for regression (default 1) or custom tasks.
        weight: static weight, used by the ``static`` balancer.
        ignore_index: the value marking a missing multiclass label.
        loss: ``"mse"``, ``"l1"``, ``"huber"`` (regression) or a callable
            ``(output, target) -> elementwise loss`` that overrides the kind's default.
        metrics: name -> zero-argument factory of a torchmetrics ``Metric``; overrides the kind's
            defaults. Metrics receive only labelled samples.
        primary_metric: the metric used for model selection and Δm; defaults per kind.
        higher_is_better: direction of the primary metric; read from torchmetrics when omitted.
        head: ``in_features -> nn.Module`` building the task's head; a linear layer by default.
        pos_weight: optional positive-class weight for binary/multilabel BCE (imbalanced labels).
        standardize: regression only: train on standardized targets (mean/std fitted on the
            training split by :meth:`fit_target_scaler`) and report metrics on the original scale.
    """

    name: str
    kind: TaskKind | str
    num_classes: int | None = None
    out_dim: int | None = None
    weight: float = 1.0
    ignore_index: int = -1
    loss: str | ElementwiseLoss | None = None
    metrics: Mapping[str, MetricFactory] | None = None
    primary_metric: str | None = None
    higher_is_better: bool | None = None
    head: Callable[[int], nn.Module] | None = None
    pos_weight: float | None = None
    standardize: bool = True
    target_mean_: float = field(default=0.0, repr=False)
    target_std_: float = field(default=1.0, repr=False)

    def __post_init__(self) -> None:
        try:
            self.kind = TaskKind(self.kind)
        except ValueError:
            raise ValueError(
                f"task {self.name!r}: unknown kind {self.kind!r}; expected one of {available_kinds()}"
            ) from None
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"task name must be a non-empty string, got {self.name!r}")
        if "." in self.name:  # PyTorch refuses '.' in module names, and heads are keyed by task
            raise ValueError(
                f"task name {self.name!r} contains '.', which PyTorch module names cannot hold; "
                f"rename it (e.g. {self.name.replace('.', '_')!r})"
            )
        if self.kind in (TaskKind.MULTICLASS, TaskKind.MULTILABEL) and (
            self.num_classes is None or self.num_classes < 2
        ):
            raise ValueError(
                f"task {self.name!r}: kind {self.kind.value} needs num_classes >= 2, "
                f"got {self.num_classes}"
            )
        if self.kind is TaskKind.CUSTOM and (
            self.head is None or self.loss is None or self.metrics is None or self.out_dim is None
        ):
            raise ValueError(
                f"task {self.name!r}: a custom task needs head, loss, metrics and out_dim"
            )
        if isinstance(self.loss, str) and self.loss not in _REGRESSION_LOSSES:
            raise ValueError(
                f"task {self.name!r}: unknown loss {self.loss!r}; "
                f"expected one of {sorted(_REGRESSION_LOSSES)} or a callable"
            )
        if self.weight < 0 or not math.isfinite(self.weight):
            raise ValueError(
                f"task {self.name!r}: weight must be finite and >= 0, got {self.weight}"
            )
        if self.primary_metric is not None and self.primary_metric not in self.metric_factories():
            raise ValueError(
                f"task {self.name!r}: primary metric {self.primary_metric!r} is not one of its "
                f"metrics {sorted(self.metric_factories())}"
            )

    # ------------------------------------------------------------------ shapes and heads
    @property
    def output_dim(self) -> int:
        if self.kind is TaskKind.BINARY:
            return 1
        if self.kind in (TaskKind.MULTICLASS, TaskKind.MULTILABEL):
            assert self.num_classes is not None
            return self.num_classes
        return self.out_dim or 1

    def make_head(self, in_features: int) -> nn.Module:
        """The task's head; one linear layer unless the task was given its own factory."""
        if self.head is not None:
            return self.head(in_features)
        return nn.Linear(in_features, self.output_dim)

    def _as_2d(self, t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], -1)

    # ------------------------------------------------------------------ labels
    def label_mask(self, target: Tensor) -> Tensor:
        """Boolean mask of labelled entries: shape ``[B]`` (multiclass, binary) or ``[B, k]``."""
        if self.kind is TaskKind.MULTICLASS:
            return target != self.ignore_index
        if target.is_floating_point():
            return ~torch.isnan(target)
        return torch.ones_like(target, dtype=torch.bool)

    def validate_targets(self, target: Tensor, where: str = "") -> None:
        """Raise :class:`LabelError` naming the task (and ``where``) for impossible labels."""
        loc = f" ({where})" if where else ""
        if target.ndim == 0:
            raise LabelError(f"task {self.name!r}{loc}: targets must have a batch dimension")
        mask = self.label_mask(target)
        labelled = target[mask]
        if self.kind is TaskKind.MULTICLASS:
            if target.is_floating_point():
                if torch.isnan(target).any():
                    raise LabelError(
                        f"task {self.name!r}{loc}: multiclass targets use ignore_index="
                        f"{self.ignore_index} for missing labels, not NaN"
                    )
                if (labelled != labelled.round()).any():
                    raise LabelError(
                        f"task {self.name!r}{loc}: multiclass targets must be integers"
                    )
            assert self.num_classes is not None
            bad = (labelled < 0) | (labelled >= self.num_classes)
            if bad.any():
                row = int(torch.nonzero(mask.reshape(-1))[bad.nonzero()[0, 0]].item())
                raise LabelError(
                    f"task {self.name!r}{loc}: label {labelled[bad][0].item()} at row {row} is out "
                    f"of range [0, {self.num_classes}) (missing labels use {self.ignore_index})"
                )
            return
        if not target.is_floating_point():
            target = target.float()
        if torch.isinf(target).any():
            row = int(torch.isinf(target).reshape(target.shape[0], -1).any(1).nonzero()[0, 0])
            raise LabelError(f"task {self.name!r}{loc}: infinite label at row {row}")
        if self.kind in (TaskKind.BINARY, TaskKind.MULTILABEL):
            bad = (labelled != 0) & (labelled != 1)
            if bad.any():
                raise LabelError(
                    f"task {self.name!r}{loc}: {self.kind.value} labels must be 0 or 1 (NaN for "
                    f"missing); found {labelled[bad][0].item()}"
                )
        width = self._as_2d(target).shape[1]
        expected = self.num_classes if self.kind is TaskKind.MULTILABEL else self.output_dim
        if self.kind is not TaskKind.CUSTOM and width != expected:
            raise LabelError(
                f"task {self.name!r}{loc}: targets have {width} column(s) per sample, "
                f"expected {expected}"
            )

    def fit_target_scaler(self, train_targets: Tensor) -> Task:
        """Learn the regression target scale from the training split (no-op for other kinds)."""
        if self.kind is not TaskKind.REGRESSION or not self.standardize:
            return self
        labelled = train_targets[self.label_mask(train_targets)].double()
        if labelled.numel() == 0:
            raise LabelError(f"task {self.name!r}: no label in the training split")
        self.target_mean_ = float(labelled.mean())
        std = float(labelled.std()) if labelled.numel() > 1 else 1.0
        self.target_std_ = std if std > 1e-12 else 1.0
        return self

    # ------------------------------------------------------------------ loss
    def sample_losses(self, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        """Per-sample loss summed over the sample's labelled entries, and the number of entries.

        Unlabelled entries contribute an exact zero (``torch.where``, so a NaN target can never
        leak into the gradient). The task's mean loss is ``sample_losses.sum() / count``.
        """
        mask = self.label_mask(target)
        count = int(mask.sum())
        if self.kind is TaskKind.MULTICLASS:
            y = torch.where(mask, target, torch.zeros_like(target)).long()
            if self.loss is None:
                per = F.cross_entropy(output, y, reduction="none")
            else:
                assert callable(self.loss)
                per = self.loss(output, y).reshape(output.shape[0])
            return torch.where(mask, per, torch.zeros_like(per)), count
        out = self._as_2d(output)
        m = self._as_2d(mask)
        y = torch.where(m, self._as_2d(target).to(out.dtype), torch.zeros_like(out))
        if self.kind is TaskKind.REGRESSION and self.standardize:
            y = (y - self.target_mean_) / self.target_std_
        if callable(self.loss):
            elementwise = self.loss(out, y)
        elif self.kind in (TaskKind.BINARY, TaskKind.MULTILABEL):
            pw = None if self.pos_weight is None else out.new_tensor(self.pos_weight)
            elementwise = F.binary_cross_entropy_with_logits(
                out, y, reduction="none", pos_weight=pw
            )
        else:
            elementwise = _REGRESSION_LOSSES[self.loss or "mse"](out, y)
        per = torch.where(m, elementwise, torch.zeros_like(elementwise)).sum(dim=1)
        return per, count

    def loss_and_count(self, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        """Mean loss over labelled entries and their count.

        With no labelled entry the loss is an exact zero with no graph: the task is absent from the
        batch and the caller must not ask for its gradient.
        """
        per, count = self.sample_losses(output, target)
        if count == 0:
            return output.new_zeros(()), 0
        return per.sum() / count, count

    # ------------------------------------------------------------------ predictions and metrics
    def predict(self, output: Tensor) -> Tensor:
        """Output in the target's own units: probabilities, class indices or de-standardized values."""
        if self.kind in (TaskKind.BINARY, TaskKind.MULTILABEL):
            return torch.sigmoid(output).reshape(output.shape[0], -1).squeeze(-1)
        if self.kind is TaskKind.MULTICLASS:
            return output.argmax(dim=-1)
        if self.kind is TaskKind.REGRESSION:
            pred = output.reshape(output.shape[0], -1).squeeze(-1)
            return pred * self.target_std_ + self.target_mean_ if self.standardize else pred
        return output

    def metric_factories(self) -> dict[str, MetricFactory]:
        if self.metrics is not None:
            return dict(self.metrics)
        from torchmetrics import classification as C
        from torchmetrics import regression as R

        if self.kind is TaskKind.BINARY:
            return {"auroc": C.BinaryAUROC, "accuracy": C.BinaryAccuracy}
        if self.kind is TaskKind.MULTICLASS:
            n = self.num_classes
            assert n is not None
            return {
                "accuracy": lambda: C.MulticlassAccuracy(num_classes=n, average="micro"),
                "f1_macro": lambda: C.MulticlassF1Score(num_classes=n, average="macro"),
            }
        if self.kind is TaskKind.MULTILABEL:
            n = self.num_classes
            assert n is not None
            return {
                "auroc": lambda: C.MultilabelAUROC(num_labels=n, ignore_index=-1),
                "accuracy": lambda: C.MultilabelAccuracy(num_labels=n, ignore_index=-1),
            }
        if self.kind is TaskKind.REGRESSION:
            return {
                "mae": R.MeanAbsoluteError,
                "rmse": lambda: R.MeanSquaredError(squared=False),
                "explained_variance": R.ExplainedVariance,
            }
        raise AssertionError("custom tasks carry their own metrics")

    @property
    def primary(self) -> str:
        if self.primary_metric is not None:
            return self.primary_metric
        return next(iter(self.metric_factories()))

    @property
    def primary_higher_is_better(self) -> bool:
        if self.higher_is_better is not None:
            return self.higher_is_better
        direction = self.metric_factories()[self.primary]().higher_is_better
        if direction is None:
            raise ValueError(
                f"task {self.name!r}: metric {self.primary!r} has no direction; set higher_is_better"
            )
        return bool(direction)

    def make_metrics(self) -> torchmetrics.MetricCollection:
        """Fresh metrics that never synchronise across processes on ``compute``.

        torchmetrics gathers its states over every rank whenever ``torch.distributed`` is
        initialised. polytask evaluates the whole validation / test split on each rank (so every
        rank takes the same model-selection decision) and, under torchrun, trains the
        single-task baselines on rank 0 alone: a hidden collective there would count rows twice
        in the first case and wait forever in the second.
        """
        metrics = {k: f() for k, f in self.metric_factories().items()}
        for metric in metrics.values():
            # torchmetrics reads ``sync_on_compute`` only in ``__init__`` (into ``_to_sync``) and
            # the factories are the user's: switch both off after construction.
            metric.sync_on_compute = False
            metric._to_sync = False
        return torchmetrics.MetricCollection(metrics)

    def update_metrics(
        self, metrics: torchmetrics.MetricCollection, output: Tensor, target: Tensor
    ) -> int:
        """Feed only labelled samples to ``metrics``; return how many were fed."""
        mask = self.label_mask(target)
        if self.kind is TaskKind.MULTICLASS:
            if int(mask.sum()) == 0:
                return 0
            metrics.update(output[mask], target[mask].long())
            return int(mask.sum())
        if self.kind is TaskKind.MULTILABEL:
            rows = mask.any(dim=1)
            if int(rows.sum()) == 0:
                return 0
            y = torch.where(mask, target, torch.full_like(target, -1)).long()
            metrics.update(torch.sigmoid(output[rows]), y[rows])
            return int(mask.sum())
        pred = self.predict(output).reshape(-1)
        flat_mask = mask.reshape(-1)
        if int(flat_mask.sum()) == 0:
            return 0
        y = target.reshape(-1)[flat_mask]
        if self.kind is TaskKind.BINARY:
            y = y.long()
        metrics.update(pred[flat_mask], y)
        return int(flat_mask.sum())

    def to_config(self) -> dict[str, object]:
        """The serialisable part of the task (callables are not)."""
        return {
            "name": self.name,
            "kind": self.kind.value,
            "num_classes": self.num_classes,
            "out_dim": self.out_dim,
            "weight": self.weight,
            "ignore_index": self.ignore_index,
            "loss": self.loss if isinstance(self.loss, str) or self.loss is None else "custom",
            "primary_metric": self.primary_metric,
            "higher_is_better": self.higher_is_better,
            "pos_weight": self.pos_weight,
            "standardize": self.standardize,
            "target_mean_": self.target_mean_,
            "target_std_": self.target_std_,
        }
