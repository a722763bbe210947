"""The balancer contract: what a method asks for, what it receives, what it returns.

A balancer never computes gradients itself. It *declares* its needs (:class:`Needs`) and the
gradient engine (:mod:`polytask.balancing.engine`) provides exactly that, once per step:

* ``gradients="none"``: loss values only. The balancer returns a differentiable scalar ``loss``
  (learnable weights, e.g. uncertainty weighting, receive gradients through it).
* ``gradients="gramian"``: the Gramian ``G = J Jᵀ`` of the per-task gradients suffices. The
  balancer returns ``weights`` over the present tasks; the update of the shared part is ``wᵀ J``.
* ``gradients="jacobian"``: the balancer needs the rows of ``J`` themselves and returns either
  ``weights`` or a ``direction`` (a vector of the same width as ``J``'s rows).
* ``after_step=True``: after the optimizer step the loop recomputes the losses on the same batch
  (no gradient) and hands them to :meth:`Balancer.after_step` (FAMO).
* ``source="representation"`` (with ``gradients="gramian"``): the Gramian is that of the per-task
  gradients of the shared *representation*, whatever the engine's mode, and the update of the
  shared parameters is ``wᵀ J`` (MGDA-UB: weights from the representation, update on the
  parameters). The engine refuses a model without one shared representation.

``J`` holds the gradients of the *present* tasks only (a task without a label in the batch has no
gradient, and a zero row would wrongly pull min-norm methods to zero), with respect to the shared
parameters or the shared representation, depending on the engine's mode. Randomness is drawn from
``StepInfo.generator`` only, which the engine seeds identically on every rank under DDP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

__all__ = [
    "Balancer",
    "BalancerError",
    "Combination",
    "GradientNeed",
    "GradientSource",
    "Needs",
    "StepInfo",
    "scatter_present",
]

GradientNeed = Literal["none", "gramian", "jacobian"]
GradientSource = Literal["mode", "representation"]


class BalancerError(RuntimeError):
    """A balancer that cannot produce a valid update (bad input, failed solver, bad setting)."""


@dataclass(frozen=True)
class Needs:
    """What a balancer asks the engine for at every step.

    ``source`` says where the gradients are taken: ``"mode"`` (default) follows the engine's mode
    (all shared parameters in the jacobian and gramian modes, the shared representation in the
    representation mode); ``"representation"`` always takes them at the shared representation,
    for a method *defined* on it (MGDA-UB), so that its weights do not depend on a run setting.
    The engine reads only these declarations, never a balancer's name.
    """

    gradients: GradientNeed = "none"
    after_step: bool = False
    source: GradientSource = "mode"

    def __post_init__(self) -> None:
        if self.source not in ("mode", "representation"):
            raise ValueError(f"unknown gradient source {self.source!r}")
        if self.source == "representation" and self.gradients != "gramian":
            # The representation Gramian is all the engine computes on this path; a Jacobian method
            # on the representation uses the engine's representation mode instead.
            raise ValueError(
                "source='representation' is for Gramian weightings (gradients='gramian'), got "
                f"gradients={self.gradients!r}"
            )


@dataclass
class StepInfo:
    """Everything the engine hands a balancer for one step.

    ``losses`` has one entry per task (exact zeros for absent tasks); ``present`` says which tasks
    had at least one label. ``jacobian`` / ``gramian`` cover the present tasks only, in task order.
    """

    losses: Tensor
    present: Tensor
    step: int
    epoch: int
    generator: torch.Generator
    jacobian: Tensor | None = None
    gramian: Tensor | None = None

    @property
    def present_index(self) -> Tensor:
        return self.present.nonzero().flatten()

    @property
    def present_losses(self) -> Tensor:
        return self.losses[self.present]


@dataclass
class Combination:
    """What a balancer returns.

    ``weights`` (one per task, zero for absent tasks, detached) is always filled: it is what the
    logger records. Loss-based balancers also return ``loss``; Jacobian balancers that are not a
    weighting of the rows (PCGrad-like projections) return ``direction``.
    """

    weights: Tensor
    loss: Tensor | None = None
    direction: Tensor | None = None


def scatter_present(values: Tensor, present: Tensor) -> Tensor:
    """Spread weights of the present tasks into a full ``[T]`` vector with zeros elsewhere."""
    full = values.new_zeros(present.shape[0])
    full[present] = values.to(full.dtype)
    return full


class Balancer(nn.Module):
    """Base class of every balancing method.

    Subclasses set the class attributes, take ``task_names`` plus their hyper-parameters in
    ``__init__`` (validated there), and implement :meth:`combine`. State that must survive a
    checkpoint lives in buffers, parameters, or :meth:`get_extra_state` (tensors, numbers, lists
    and dicts only, so checkpoints load with ``weights_only=True``).
    """

    name: ClassVar[str] = ""
    family: ClassVar[Literal["loss", "gradient"]] = "loss"
    needs: ClassVar[Needs] = Needs()
    reference: ClassVar[str] = ""
    #: ``True`` if the balancer reads the tasks' static weights (``Task.weight``).
    uses_task_weights: ClassVar[bool] = False
    #: Set by ``register_balancer(..., alias_of=...)``: the registered method whose update this one
    #: provably equals, and why (shown by ``polytask list balancers``; exempt from distinctness).
    alias_of: ClassVar[str | None] = None
    alias_reason: ClassVar[str] = ""

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__()
        if len(task_names) == 0:
            raise BalancerError(f"{type(self).__name__}: needs at least one task")
        if len(set(task_names)) != len(task_names):
            raise BalancerError(f"{type(self).__name__}: duplicate task names {list(task_names)}")
        self.task_names = list(task_names)
        #: Counted, non-fatal events (e.g. a solver that needed a fallback); logged per epoch.
        self.warning_counts: dict[str, int] = {}
        #: Keys already announced by a Python warning: the loop drains ``warning_counts`` every
        #: epoch, but a recurring event is announced once per balancer, then only counted.
        self.warned_keys: set[str] = set()

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def combine(self, step: StepInfo) -> Combination:
        raise NotImplementedError

    def after_step(self, losses_after: Tensor, present: Tensor) -> None:
        """Called with the losses recomputed after the update when ``needs.after_step``."""

    def count_warning(self, key: str) -> None:
        self.warning_counts[key] = self.warning_counts.get(key, 0) + 1

    def hyperparameters(self) -> dict[str, Any]:
        """The settings the balancer was built with (for configs and reports)."""
        return {}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
