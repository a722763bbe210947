"""DualProj: projection of the mean gradient onto the dual cone of the task gradients.

``d = π(ḡ)`` with ``ḡ`` the mean gradient and ``π`` the projection onto
``{d : g_j·d >= 0 ∀j}``: the closest non-conflicting direction to the mean (the GEM projection of
Lopez-Paz & Ranzato 2017, studied as an aggregator by Quinton & Rey 2024). torchjd's
``DualProjWeighting`` solves the dual quadratic program on the Gramian with quadprog.

As for UPGrad, the Gramian is handed over with trace 1 so that torchjd's absolute ``1e-4``
threshold (below which it skips the projection) never applies; the weights are invariant to that
rescaling. A quadprog failure raises :class:`~polytask.balancing.base.BalancerError`. Weights have
the scale of the mean.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torchjd.aggregation import DualProjWeighting

from polytask.balancing._common import GramianWeightingBalancer
from polytask.balancing.base import StepInfo
from polytask.balancing.registry import register_balancer

__all__ = ["DualProj"]


@register_balancer("dualproj")
class DualProj(GramianWeightingBalancer):
    """The mean gradient projected onto the dual cone of the task gradients."""

    reference = (
        "Quinton & Rey 2024, Jacobian Descent for Multi-Objective Optimization, arXiv:2406.16232 "
        "(dual-cone projection of Lopez-Paz & Ranzato 2017, GEM)"
    )
    solver_description = "the quadprog dual-cone projection"

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__(task_names)
        self._solver = {"dualproj": DualProjWeighting()}

    def weigh(self, gramian: Tensor, step: StepInfo) -> Tensor:
        return self._solver["dualproj"](gramian)
