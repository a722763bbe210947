"""Gradient strategies: how a step turns what a balancer declared into ``.grad``.

A balancer never names a strategy and the step never names a balancer: the balancer declares its
:class:`~polytask.balancing.base.Needs`, the run chooses an engine mode, the model says whether it
has one shared representation, and :func:`choose_strategy` picks the one strategy that provides
exactly that, once per step. One module each:

============================  ===============================================================
``_loss``                     ``gradients="none"``: one backward of the balancer's scalar loss
``_jacobian``                 ``mode="jacobian"``: the Jacobian of the shared parameters
``_gramian``                  ``mode="gramian"``: only ``J Jᵀ``, by ``torchjd.autogram``
``_representation``           ``mode="representation"``: the Jacobian of the representation
``_representation_gramian``   ``Needs(source="representation")`` (MGDA-UB), in every mode
============================  ===============================================================

A strategy declares how the model must run forward (:data:`ForwardKind`) and whether, under exact
DDP, the shared gradient it writes is already the global one (``sums_shared``: it summed ``J``
across ranks, so the flat gradient all-reduce skips those parameters). The combinations that cannot
work are refused by :func:`validate`, before anything runs, saying why.
"""

from __future__ import annotations

from typing import Literal, Protocol

from polytask.balancing.base import Needs
from polytask.balancing.strategies._common import (
    Applied,
    ForwardKind,
    ModelParams,
    StepContext,
)
from polytask.balancing.strategies._gramian import GramianStrategy
from polytask.balancing.strategies._jacobian import JacobianStrategy
from polytask.balancing.strategies._loss import LossStrategy
from polytask.balancing.strategies._representation import RepresentationStrategy
from polytask.balancing.strategies._representation_gramian import RepresentationGramianStrategy
from polytask.models.base import MultiTaskModel

__all__ = [
    "Applied",
    "EngineError",
    "EngineMode",
    "ForwardKind",
    "GradientStrategy",
    "ModelParams",
    "StepContext",
    "choose_strategy",
    "validate",
]

EngineMode = Literal["jacobian", "gramian", "representation"]


class EngineError(ValueError):
    """A combination of model, balancer and engine settings that cannot work."""


class GradientStrategy(Protocol):
    """Writes the update the balancer asked for into ``.grad`` (task parameters included)."""

    @property
    def forward(self) -> ForwardKind:
        """How the model runs forward for this strategy."""
        ...

    @property
    def sums_shared(self) -> bool:
        """Whether the shared gradient it writes is already global under exact DDP."""
        ...

    def apply(self, ctx: StepContext) -> Applied: ...


def validate(
    needs: Needs,
    mode: str,
    model: MultiTaskModel,
    *,
    balancer_name: str,
    dist_mode: str = "exact",
    world_size: int = 1,
) -> None:
    """Raise :class:`EngineError`, saying why, for a combination that cannot work."""
    need = needs.gradients
    from_representation = needs.source == "representation"
    name = balancer_name
    if mode not in ("jacobian", "gramian", "representation"):
        raise EngineError(f"unknown engine mode {mode!r}")
    if dist_mode not in ("exact", "cheap"):
        raise EngineError(f"unknown distributed mode {dist_mode!r}")
    if need == "none" and mode == "representation":
        raise EngineError(
            f"{name} uses loss values only: the representation mode would compute gradients it "
            "never reads; use mode='jacobian' (the default, which costs nothing extra for "
            "loss-based methods)"
        )
    if need == "jacobian" and mode == "gramian":
        raise EngineError(
            f"{name} needs the per-task gradients themselves, not only their Gramian; use "
            "mode='jacobian' or mode='representation'"
        )
    if from_representation and not model.supports_representation_grad:
        raise EngineError(
            f"{name} computes its weights from the gradients of the shared representation "
            f"(in every engine mode), but {type(model).__name__} has no single shared "
            "representation (tasks exchange features inside the trunk), so the method is not "
            "defined for it; use a model with one shared representation (hard_sharing, mmoe, "
            "mtan, ple with num_levels=1) or a balancer on the parameters' gradients (mgda)"
        )
    if mode == "representation" and not model.supports_representation_grad:
        raise EngineError(
            f"{type(model).__name__} has no single shared representation (tasks exchange "
            "features inside the trunk), so representation-level gradients would leave part "
            "of the shared network untrained; use mode='jacobian' or 'gramian'"
        )
    if world_size > 1 and dist_mode == "exact" and need != "none":
        if mode == "gramian" and not from_representation:
            raise EngineError(
                "exact DDP needs the Gramian of the global Jacobian, which is not the sum of the "
                "ranks' Gramians; use mode='jacobian', mode='representation' or "
                "dist_mode='cheap'"
            )
        if mode == "representation" and need == "jacobian":
            raise EngineError(
                f"{name} needs the full representation Jacobian, which is split across ranks "
                "under DDP; use mode='jacobian' or dist_mode='cheap'"
            )


def choose_strategy(
    needs: Needs, mode: str, model: MultiTaskModel, *, chunk_size: int | None = None
) -> GradientStrategy:
    """The strategy for (what the balancer declared, the engine mode, the model's capabilities).

    Call :func:`validate` first: this function assumes a combination that works. The per-task
    gradients go through the shared representation whenever the model has one (the heads are
    then differentiated once per task, not once per task and row); the result is the same ``J``.
    """
    if needs.gradients == "none":
        return LossStrategy()
    split = model.supports_representation_grad
    if needs.source == "representation":
        return RepresentationGramianStrategy(detached=mode == "representation")
    if mode == "representation":
        return RepresentationStrategy()
    if mode == "gramian":
        return GramianStrategy(model.shared_modules(), split=split)
    return JacobianStrategy(split=split, chunk_size=chunk_size)
