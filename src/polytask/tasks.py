"""Tasks: what is predicted, how it is scored, and which labels are missing.

A :class:`Task` is the single place that knows a target's kind. Everything downstream (the model's
head, the masked loss, torchmetrics, predictions written to disk) asks the task rather than
branching on kinds itself. The task in turn hands every kind-specific question to its kind's
:class:`~polytask.task_kinds.KindSpec` (``task.kind.spec``), so a new kind (segmentation, depth,
one of your own) is a registration (:func:`~polytask.task_kinds.register_task_kind`), not a branch
here; ``polytask list tasks`` lists the registered kinds.

Missing labels are first-class: ``NaN`` marks a missing binary, multilabel or regression label (or
depth pixel), and ``ignore_index`` (default ``-1``) a missing multiclass label (or pixel, token). A
sample without a label for a task contributes nothing to that task's loss or metrics, and a batch
with no label for a task reports the task as absent instead of producing ``0 / 0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torchmetrics
from torch import Tensor, nn

from polytask.task_kinds import (
    KindSpec,
    LabelError,
    MetricFactory,
    TaskKind,
    register_task_kind,
    task_kind_names,
)
from polytask.task_kinds.sample import REGRESSION_LOSSES as _REGRESSION_LOSSES

__all__ = [
    "KindSpec",
    "LabelError",
    "MetricFactory",
    "Task",
    "TaskKind",
    "available_kinds",
    "register_task_kind",
]

ElementwiseLoss = Callable[[Tensor, Tensor], Tensor]


def available_kinds() -> list[str]:
    """Names of the registered task kinds (built-ins first)."""
    return task_kind_names()


@dataclass
class Task:
    """One prediction target.

    Args:
        name: unique task name; used as the key of outputs, targets, metrics and weights.
        kind: a registered kind (``polytask list tasks``): ``binary``, ``multiclass``,
            ``multilabel``, ``regression``, ``custom``, ``segmentation``, ``depth``, ``normals``,
            ``token_classification``, ``text_classification`` or one of your own.
        num_classes: number of classes (multiclass, segmentation, token classification) or of
            labels (multilabel).
        out_dim: output width for regression (default 1) or custom tasks.
        weight: static weight, used by the ``static`` balancer.
        ignore_index: the value marking a missing class label (multiclass, and the unlabelled
            pixels or tokens of segmentation and token classification, e.g. 255).
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
        options: options of the kind (``depth``: ``{"zero_is_missing": False}``); unknown keys
            are refused.
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
    options: dict[str, Any] | None = None
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
        if self.options is not None:
            self.options = dict(self.options)
        self.kind_spec.check(self)
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

    # ------------------------------------------------------------------ kind, shapes and heads
    @property
    def kind_spec(self) -> KindSpec:
        """The behaviour of this task's kind (loss, metrics, validation, layout)."""
        assert isinstance(self.kind, TaskKind)
        return self.kind.spec

    @property
    def layout(self) -> str:
        """``sample``, ``dense`` or ``token``: what one target is; the head follows from it."""
        return self.kind_spec.layout

    @property
    def output_dim(self) -> int:
        """Output channels of the head (per sample, pixel or token)."""
        return self.kind_spec.output_dim(self)

    @property
    def missing_marker(self) -> float:
        """The value of a missing label: ``ignore_index`` (class labels) or NaN."""
        return self.kind_spec.missing_marker(self)

    @property
    def target_dtype(self) -> torch.dtype:
        """The dtype targets of this task are stored in (``long`` for class labels)."""
        return self.kind_spec.target_dtype(self)

    def make_head(self, in_features: int) -> nn.Module:
        """The task's head; one linear layer unless the task was given its own factory."""
        if self.head is not None:
            return self.head(in_features)
        return nn.Linear(in_features, self.output_dim)

    # ------------------------------------------------------------------ labels
    def label_mask(self, target: Tensor) -> Tensor:
        """Boolean mask of labelled entries: ``[B]`` (multiclass, binary), ``[B, k]``, or per
        pixel / token for dense and sequence kinds."""
        return self.kind_spec.label_mask(self, target)

    def validate_targets(self, target: Tensor, where: str = "") -> None:
        """Raise :class:`LabelError` naming the task (and ``where``) for impossible labels."""
        self.kind_spec.validate_targets(self, target, where)

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
        leak into the gradient). The task's mean loss is ``sample_losses.sum() / count``; for
        dense and token kinds an entry is a labelled pixel or token.
        """
        return self.kind_spec.sample_losses(self, output, target)

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
        """Output in the target's own units: probabilities, class indices or de-standardized values
        (per pixel or token for dense and sequence kinds)."""
        return self.kind_spec.predict(self, output)

    def metric_factories(self) -> dict[str, MetricFactory]:
        """The task's own metrics when given, else its kind's (torchmetrics)."""
        if self.metrics is not None:
            return dict(self.metrics)
        return self.kind_spec.metric_factories(self)

    @property
    def primary(self) -> str:
        if self.primary_metric is not None:
            return self.primary_metric
        if self.metrics is None:
            return self.kind_spec.default_primary(self)
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

    def metric_higher_is_better(self, metric: str) -> bool:
        """Direction of any of this task's metrics (``loss``: lower is better).

        Why not "everything but the loss is higher-better": rmse, mae and depth errors are lower-
        better, and a selection rule on them would keep the worst epoch.
        """
        if metric == "loss":
            return False
        if metric == self.primary:
            return self.primary_higher_is_better
        factories = self.metric_factories()
        if metric not in factories:
            raise ValueError(f"task {self.name!r} has no metric {metric!r}; it has {list(factories)}")
        direction = factories[metric]().higher_is_better
        if direction is None:
            raise ValueError(f"task {self.name!r}: metric {metric!r} has no direction")
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
        """Feed only labelled samples (pixels, tokens) to ``metrics``; return how many were fed."""
        return self.kind_spec.update_metrics(self, metrics, output, target)

    def to_config(self) -> dict[str, object]:
        """The serialisable part of the task (callables are not).

        ``options`` appears only when set, so the configs (and the single-task baseline cache
        keys, which hash them) of tasks without kind options are what they were before kinds
        had options.
        """
        config: dict[str, object] = {
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
        if self.options is not None:
            config["options"] = dict(self.options)
        return config
