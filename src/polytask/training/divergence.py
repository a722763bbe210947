"""Stop a run whose training diverged instead of letting it finish with a finite but absurd loss.

Why: a NaN or inf loss is caught at the step it appears (:class:`NonFiniteLossError`), but a run
with too large a learning rate (``lr: 10``) or an unstable balancer (DWA at ``lr: 1e4``) can stay
finite all along: its training loss sits at 1e10 to 1e30, its weights at millions, and the run
ends with exit code 0 and a results table that looks like any other. :class:`DivergenceMonitor`
looks at each epoch's mean training loss of every task and at the parameters, and raises
:class:`DivergenceError` naming the task, the epoch and step, and what to try.

A task has diverged when its mean training loss, in any epoch,

* exceeds ``loss_factor`` (1e4) times its *chance level*, the loss of an uninformed prediction:
  ``ln 2`` for a binary or multilabel task (times ``pos_weight`` when larger than 1), ``ln C``
  for a C-class task, 1 for a standardized regression target (the variance of a standardized
  target). This catches a run that blew up within its first epoch, which no comparison between
  epochs can see. Tasks with a custom loss or unstandardized regression targets have no known
  chance level and rely on the next rule;
* or exceeds ``loss_factor`` times its *reference*: the lowest epoch mean seen so far, but at
  least 1% of the first epoch's mean (so that a task fitted to almost zero loss, then back to
  a small loss, is not taken for a divergence).

The parameters have diverged when their norm is not finite or exceeds ``norm_factor`` (1e3)
times the norm they had when the monitor was made (:meth:`DivergenceMonitor.for_model`; at least
1), or, without that, times the norm after the first epoch. Healthy runs change the norm by a few
times at most; the runs above multiply it by hundreds to millions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from polytask.tasks import Task, TaskKind
from polytask.training.loop import TrainingError

__all__ = ["DivergenceError", "DivergenceMonitor", "chance_loss", "parameter_norm"]

ADVICE = (
    "try a lower learning rate (training.lr), gradient clipping (training.grad_clip, e.g. 1.0), "
    "or another balancer (equal weighting is the most stable)"
)


class DivergenceError(TrainingError):
    """Training diverged; the message names the task (or the parameters), the epoch and step."""


def chance_loss(task: Task) -> float | None:
    """The training loss of an uninformed prediction of ``task``, or ``None`` when unknown.

    Used as an absolute scale: a loss 10,000 times above it is never a model that is learning.
    """
    if callable(task.loss) or task.kind is TaskKind.CUSTOM:
        return None
    # the kind knows its scale (log C for classes, 1 for standardized values, cosine losses...)
    return task.kind_spec.chance_loss(task)


def parameter_norm(model: nn.Module) -> float:
    """The Euclidean norm of all parameters together (float64, so that it cannot overflow)."""
    total = 0.0
    with torch.no_grad():
        for p in model.parameters():
            total += float(p.detach().double().pow(2).sum())
    return math.sqrt(total)


def _largest_parameter(model: nn.Module) -> str:
    """The parameter with the largest (or a non-finite) norm, which often names a task's head."""
    worst, name = -1.0, "none"
    with torch.no_grad():
        for key, p in model.named_parameters():
            value = float(p.detach().double().norm())
            value = math.inf if math.isnan(value) else value
            if value > worst:
                worst, name = value, key
    return f"{name}, norm {worst:.4g}"


@dataclass
class DivergenceMonitor:
    """Per-task loss and parameter-norm watch; :meth:`update` once per epoch raises on divergence.

    ``initial_norm``: the parameter norm before training (set by :meth:`for_model`); ``None``
    takes the norm after the first update as the reference instead.
    """

    loss_factor: float = 1e4
    norm_factor: float = 1e3
    initial_norm: float | None = None
    first: dict[str, float] = field(default_factory=dict)
    lowest: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.loss_factor > 1 and self.norm_factor > 1):
            raise ValueError(
                f"divergence factors must be > 1, got loss_factor={self.loss_factor}, "
                f"norm_factor={self.norm_factor}"
            )

    @classmethod
    def for_model(cls, model: nn.Module, **options: Any) -> DivergenceMonitor:
        """A monitor that compares the parameter norm with ``model``'s norm now (before training)."""
        return cls(initial_norm=parameter_norm(model), **options)

    def update(
        self,
        epoch: int,
        step: int,
        task_names: Sequence[str],
        train_losses: Sequence[float],
        model: nn.Module,
    ) -> None:
        """Check one epoch's mean training losses (one per task) and ``model``'s parameters.

        ``step`` is the loop's step counter after the epoch (the number of steps taken so far).

        Raises :class:`DivergenceError` for the first task that diverged, else records the losses.
        Tasks without a label this epoch (a loss of exactly 0 over no rows) are skipped.
        """
        if len(task_names) != len(train_losses):
            raise ValueError(
                f"{len(train_losses)} training losses for {len(task_names)} tasks {list(task_names)}"
            )
        tasks = {t.name: t for t in getattr(model, "tasks", [])}
        where = f"in epoch {epoch} (steps up to {step - 1})"
        for name, loss in zip(task_names, train_losses, strict=True):
            if not math.isfinite(loss):
                raise DivergenceError(
                    f"training diverged: task {name!r} has a mean training loss of {loss} {where}; "
                    + ADVICE
                )
            if loss == 0.0 and name not in self.first:
                continue
            chance = chance_loss(tasks[name]) if name in tasks else None
            if chance is not None and loss > self.loss_factor * chance:
                raise DivergenceError(
                    f"training diverged: task {name!r} has a mean training loss of {loss:.4g} "
                    f"{where}, {loss / chance:.3g} times the loss of an uninformed prediction "
                    f"({chance:.3g}); " + ADVICE
                )
            first = self.first.setdefault(name, loss)
            reference = max(self.lowest.get(name, loss), 0.01 * first)
            if reference > 0 and loss > self.loss_factor * reference:
                raise DivergenceError(
                    f"training diverged: task {name!r} has a mean training loss of {loss:.4g} "
                    f"{where}, {loss / reference:.3g} times its reference {reference:.4g} "
                    f"(its lowest epoch mean so far); " + ADVICE
                )
            self.lowest[name] = min(self.lowest.get(name, loss), loss)
        norm = parameter_norm(model)
        if self.initial_norm is None:
            self.initial_norm = norm if math.isfinite(norm) else None
        bound = self.norm_factor * max(self.initial_norm or 1.0, 1.0)
        if not math.isfinite(norm) or norm > bound:
            start = "non-finite" if not math.isfinite(norm) else f"{norm:.4g}"
            raise DivergenceError(
                f"training diverged: the parameter norm is {start} {where}, more than "
                f"{self.norm_factor:g} times its initial {self.initial_norm or 1.0:.4g} (largest: "
                f"{_largest_parameter(model)}); " + ADVICE
            )

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue watching exactly where the run stopped."""
        return {"initial_norm": self.initial_norm, "first": dict(self.first),
                "lowest": dict(self.lowest)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.initial_norm = state.get("initial_norm")
        self.first = dict(state.get("first", {}))
        self.lowest = dict(state.get("lowest", {}))
