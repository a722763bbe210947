"""Pluggable task kinds: what one target is, and how it is lost, scored and predicted.

A *kind* (``binary``, ``segmentation``, ``depth``, ... or one of your own) is the single place that
knows how a target of that kind is laid out and scored. :class:`~polytask.tasks.Task` names its
kind and hands every kind-specific question to the kind's :class:`KindSpec`:

=====================  ============================================================================
``layout``             what one target is: ``sample`` (one value or vector per sample), ``dense``
                       (one per pixel), ``token`` (one per sequence position) or ``boxes`` (a
                       padded list of objects per image, :mod:`.detection`). The head follows
                       from it and from the trunk's features (:func:`polytask.models.heads.make_task_head`).
``label_mask``         which entries are labelled (per sample, per pixel, per token).
``sample_losses``      the masked loss: per-sample sums over labelled entries, and their count.
``metric_factories``   torchmetrics (fed labelled entries only, by ``update_metrics``).
``predict``            the output in the target's own units.
``primary``            the metric for model selection and Δm, and its direction.
``validate_targets``   a clear :class:`LabelError` for targets that cannot be labels.
``missing_marker``     how a missing label is written (NaN, or the task's ``ignore_index``).
=====================  ============================================================================

Why a registry rather than a closed enum: dense, detection and sequence problems each need their own
masked loss and metrics, and users have targets of their own (counts, ordinal grades, quantiles).
Registering a :class:`KindSpec` subclass under a name (:func:`register_task_kind`) makes it usable
everywhere a built-in kind is: ``Task("visits", "poisson_count")``, the engine, evaluation, Δm,
``polytask list tasks``.

:class:`TaskKind` is the kind's *name*: a ``str`` (``TaskKind("depth") == "depth"``) interned per
registered name, so ``task.kind is TaskKind.MULTICLASS`` and ``task.kind.value`` keep working as
they did when the kinds were an enum. ``TaskKind(name)`` raises ``ValueError`` for an unregistered
name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torchmetrics
from torch import Tensor

if TYPE_CHECKING:
    from polytask.tasks import Task

__all__ = [
    "LAYOUTS",
    "KindSpec",
    "LabelError",
    "MetricFactory",
    "TaskKind",
    "describe_task_kinds",
    "get_task_kind",
    "register_task_kind",
    "task_kind_names",
    "unregister_task_kind",
]

#: The target layouts a kind can declare (see :mod:`polytask.models.heads`).
LAYOUTS = ("sample", "dense", "token", "boxes")

MetricFactory = Callable[[], torchmetrics.Metric]


class LabelError(ValueError):
    """A target tensor that cannot be a label of its task (wrong shape, dtype or value)."""


class _KindMeta(type):
    """Lets ``for kind in TaskKind`` and ``len(TaskKind)`` walk the registered kinds, as the enum did."""

    def __iter__(cls) -> Iterator[TaskKind]:
        return iter([entry[0] for entry in _KINDS.values()])

    def __len__(cls) -> int:
        return len(_KINDS)


class TaskKind(str, metaclass=_KindMeta):
    """The name of a registered task kind (a ``str``; one object per name).

    Built-ins are also class attributes (``TaskKind.MULTICLASS``). ``.value`` is the name (the
    enum's spelling) and ``.spec`` the kind's :class:`KindSpec`.
    """

    __slots__ = ()

    BINARY: ClassVar[TaskKind]
    MULTICLASS: ClassVar[TaskKind]
    MULTILABEL: ClassVar[TaskKind]
    REGRESSION: ClassVar[TaskKind]
    CUSTOM: ClassVar[TaskKind]
    SEGMENTATION: ClassVar[TaskKind]
    DEPTH: ClassVar[TaskKind]
    NORMALS: ClassVar[TaskKind]
    TOKEN_CLASSIFICATION: ClassVar[TaskKind]
    TEXT_CLASSIFICATION: ClassVar[TaskKind]
    DETECTION: ClassVar[TaskKind]

    def __new__(cls, value: object) -> TaskKind:
        if isinstance(value, TaskKind):
            return value
        if isinstance(value, str) and value in _KINDS:
            return _KINDS[value][0]
        raise ValueError(f"{value!r} is not a registered task kind; registered: {task_kind_names()}")

    def __reduce__(self) -> tuple[type[TaskKind], tuple[str]]:
        # Unpickling (deepcopy, DataLoader workers) must give back the interned object.
        return (TaskKind, (self.value,))

    def __repr__(self) -> str:
        return f"TaskKind({self.value!r})"

    @property
    def value(self) -> str:
        return str.__str__(self)

    @property
    def spec(self) -> KindSpec:
        entry = _KINDS.get(self.value)
        if entry is None:
            raise ValueError(f"task kind {self.value!r} is no longer registered")
        return entry[1]


class KindSpec:
    """The behaviour of one kind of target; subclass it and :func:`register_task_kind` it.

    The defaults describe an *elementwise* kind, so that a new sample-level kind only overrides
    what differs: targets ``[B]`` or ``[B, k]`` of floats with NaN for missing labels (integer
    targets: every entry labelled), a loss computed per entry by :meth:`elementwise_loss` and summed
    over the sample's labelled entries, and metrics fed the labelled entries of :meth:`predict`.

    Class attributes say what ``polytask list tasks`` shows and what a task of the kind defaults
    to: ``layout`` (``sample``, ``dense``, ``token``), ``description``, ``target`` (the target's
    shape and missing marker), ``loss_text``, ``metric_names`` (the keys of
    :meth:`metric_factories`), ``primary`` (default: the first metric) and
    ``primary_higher_is_better`` (the primary metric's direction, which Δm uses).
    ``index_labels`` kinds hold class indices (``long``) and mark a missing label with the task's
    ``ignore_index`` instead of NaN. ``option_defaults`` are the kind's options (``Task.options``).

    Every method receives the :class:`~polytask.tasks.Task` (its ``num_classes``, ``ignore_index``,
    ``options``, ``loss`` override...), so one spec serves every task of its kind.
    """

    layout: ClassVar[str] = "sample"
    description: ClassVar[str] = ""
    target: ClassVar[str] = "float [B] or [B, k]; NaN = missing"
    loss_text: ClassVar[str] = ""
    metric_names: ClassVar[tuple[str, ...]] = ()
    primary: ClassVar[str | None] = None
    primary_higher_is_better: ClassVar[bool | None] = None
    index_labels: ClassVar[bool] = False
    option_defaults: ClassVar[Mapping[str, Any]] = {}

    #: The registered name; set by :func:`register_task_kind`.
    name: str = ""

    # ------------------------------------------------------------------ definition
    def check(self, task: Task) -> None:
        """Refuse a task definition this kind cannot train (raise ``ValueError`` naming the task)."""
        unknown = sorted(set(task.options or {}) - set(self.option_defaults))
        if unknown:
            raise ValueError(
                f"task {task.name!r}: unknown option(s) {unknown} for kind {self.name!r}; "
                f"it takes {sorted(self.option_defaults) or 'none'}"
            )

    def option(self, task: Task, key: str) -> Any:
        """``task.options[key]``, or the kind's default."""
        return (task.options or {}).get(key, self.option_defaults[key])

    def output_dim(self, task: Task) -> int:
        """Channels of the head's output (per sample, per pixel or per token)."""
        return task.out_dim or 1

    # ------------------------------------------------------------------ labels
    def missing_marker(self, task: Task) -> float:
        """The value that marks a missing label in a target tensor."""
        return float(task.ignore_index) if self.index_labels else math.nan

    def target_dtype(self, task: Task) -> torch.dtype:
        """The dtype targets are stored in (class indices: ``long``)."""
        return torch.long if self.index_labels else torch.float32

    def label_mask(self, task: Task, target: Tensor) -> Tensor:
        """Boolean mask of the labelled entries of ``target``."""
        if self.index_labels:
            return target != task.ignore_index
        if target.is_floating_point():
            return ~torch.isnan(target)
        return torch.ones_like(target, dtype=torch.bool)

    def validate_targets(self, task: Task, target: Tensor, where: str = "") -> None:
        """Raise :class:`LabelError` naming the task, ``where`` and the row for impossible labels."""
        loc = f" ({where})" if where else ""
        if target.ndim == 0:
            raise LabelError(f"task {task.name!r}{loc}: targets must have a batch dimension")
        if not target.is_floating_point():
            target = target.float()
        if torch.isinf(target).any():
            row = int(torch.isinf(target).reshape(target.shape[0], -1).any(1).nonzero()[0, 0])
            raise LabelError(f"task {task.name!r}{loc}: infinite label at row {row}")

    # ------------------------------------------------------------------ loss
    def elementwise_loss(self, task: Task, output: Tensor, target: Tensor) -> Tensor:
        """Loss per entry of ``[B, k]`` outputs and targets (unlabelled targets are zeros)."""
        raise NotImplementedError(
            f"kind {self.name!r} defines neither elementwise_loss nor sample_losses"
        )

    def sample_losses(self, task: Task, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        """Per-sample loss summed over the sample's labelled entries, and the number of entries.

        Unlabelled entries contribute an exact zero (``torch.where``, so a NaN target can never
        leak into the gradient); the task's mean loss is ``sample_losses.sum() / count``, which
        is what the gradient engine's per-label averaging relies on.
        """
        mask = self.label_mask(task, target)
        count = int(mask.sum())
        out = output.reshape(output.shape[0], -1)
        m = mask.reshape(mask.shape[0], -1)
        y = torch.where(m, target.reshape(target.shape[0], -1).to(out.dtype), torch.zeros_like(out))
        if callable(task.loss):
            elementwise = task.loss(out, y)
        else:
            elementwise = self.elementwise_loss(task, out, y)
        per = torch.where(m, elementwise, torch.zeros_like(elementwise)).sum(dim=1)
        return per, count

    def chance_loss(self, task: Task) -> float | None:
        """The mean training loss of an uninformed prediction, or ``None`` when unknown.

        The divergence monitor's absolute scale (a loss 10,000 times above it is never learning).
        """
        return None

    # ------------------------------------------------------------------ predictions and metrics
    def predict(self, task: Task, output: Tensor) -> Tensor:
        """The output in the target's own units (probabilities, class indices, values)."""
        return output

    def metric_factories(self, task: Task) -> dict[str, MetricFactory]:
        """Metric name -> zero-argument factory of a torchmetrics ``Metric``."""
        raise NotImplementedError(f"kind {self.name!r} defines no metrics")

    def default_primary(self, task: Task) -> str:
        """The metric used for model selection and Δm when the task does not say."""
        return self.primary or next(iter(self.metric_factories(task)))

    def metric_target(self, task: Task, target: Tensor) -> Tensor:
        """Labelled targets as the metrics want them (e.g. ``long`` for binary metrics)."""
        return target

    def update_metrics(
        self, task: Task, metrics: torchmetrics.MetricCollection, output: Tensor, target: Tensor
    ) -> int:
        """Feed the labelled entries of ``predict(output)`` and ``target``; return how many."""
        mask = self.label_mask(task, target)
        pred = self.predict(task, output).reshape(-1)
        flat_mask = mask.reshape(-1)
        fed = int(flat_mask.sum())
        if fed == 0:
            return 0
        y = self.metric_target(task, target.reshape(-1)[flat_mask])
        metrics.update(pred[flat_mask], y)
        return fed

    # ------------------------------------------------------------------ listing
    def summary(self) -> str:
        """One line for ``polytask list tasks``: layout, description, loss, metrics and target."""
        names = list(self.metric_names)
        primary = self.primary or (names[0] if names else None)
        if primary is not None and primary in names:
            direction = {True: ", higher is better", False: ", lower is better", None: ""}
            names[names.index(primary)] = (
                f"{primary} (primary{direction[self.primary_higher_is_better]})"
            )
        parts = [f"[{self.layout}] {self.description}".rstrip()]
        own = "the task's own"
        parts.append(f"loss: {self.loss_text or own}")
        parts.append(f"metrics: {', '.join(names) if names else own}")
        parts.append(f"target: {self.target}")
        return "; ".join(parts)


_KINDS: dict[str, tuple[TaskKind, KindSpec]] = {}
_BUILTIN: set[str] = set()
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def register_task_kind(
    name: str, spec: KindSpec | type[KindSpec], *, replace: bool = False
) -> TaskKind:
    """Register ``spec`` (a :class:`KindSpec` instance, or a subclass taking no arguments) as ``name``.

    Returns the kind's :class:`TaskKind`, so ``Task("x", name)`` works from then on. ``replace``
    swaps the behaviour of a kind you registered earlier (built-in kinds cannot be replaced: their
    numbers are what every stored result was computed with).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"task kind name must start with a letter and hold letters, digits, '_' or '-', "
            f"got {name!r}"
        )
    if isinstance(spec, type):
        spec = spec()
    if not isinstance(spec, KindSpec):
        raise TypeError(
            f"task kind {name!r}: expected a KindSpec (subclass polytask.task_kinds.KindSpec), "
            f"got {type(spec).__name__}"
        )
    if spec.layout not in LAYOUTS:
        raise ValueError(f"task kind {name!r}: layout must be one of {LAYOUTS}, got {spec.layout!r}")
    if name in _KINDS:
        if name in _BUILTIN:
            raise ValueError(f"task kind {name!r} is built in and cannot be replaced")
        if not replace:
            raise ValueError(f"task kind {name!r} is already registered (pass replace=True)")
        kind = _KINDS[name][0]
    else:
        kind = str.__new__(TaskKind, name)
    spec.name = name
    _KINDS[name] = (kind, spec)
    return kind


def unregister_task_kind(name: str) -> None:
    """Remove a kind you registered (tests, notebooks); built-in kinds stay."""
    if name in _BUILTIN:
        raise ValueError(f"task kind {name!r} is built in and cannot be removed")
    if name not in _KINDS:
        raise KeyError(f"task kind {name!r} is not registered")
    del _KINDS[name]


def get_task_kind(name: str | TaskKind) -> KindSpec:
    """The :class:`KindSpec` registered as ``name``."""
    return TaskKind(name).spec


def task_kind_names() -> list[str]:
    """Registered kind names, built-ins first, in registration order."""
    return list(_KINDS)


def describe_task_kinds() -> dict[str, str]:
    """Kind name -> one line (layout, loss, metrics, target); what ``polytask list tasks`` prints."""
    return {name: spec.summary() for name, (_, spec) in _KINDS.items()}


def _register_builtins() -> None:
    from polytask.task_kinds.dense import DepthKind, NormalsKind, SegmentationKind
    from polytask.task_kinds.detection import DetectionKind
    from polytask.task_kinds.sample import (
        BinaryKind,
        CustomKind,
        MulticlassKind,
        MultilabelKind,
        RegressionKind,
    )
    from polytask.task_kinds.sequence import TextClassificationKind, TokenClassificationKind

    builtins: dict[str, KindSpec] = {
        "binary": BinaryKind(),
        "multiclass": MulticlassKind(),
        "multilabel": MultilabelKind(),
        "regression": RegressionKind(),
        "custom": CustomKind(),
        "segmentation": SegmentationKind(),
        "depth": DepthKind(),
        "normals": NormalsKind(),
        "token_classification": TokenClassificationKind(),
        "text_classification": TextClassificationKind(),
        "detection": DetectionKind(),
    }
    for name, spec in builtins.items():
        kind = register_task_kind(name, spec)
        _BUILTIN.add(name)
        setattr(TaskKind, name.upper(), kind)


_register_builtins()
