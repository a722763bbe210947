"""UPGrad: unconflicting projection of gradients (Quinton & Rey 2024, Jacobian Descent).

Each task gradient ``g_i`` is projected onto the dual cone of all task gradients
``{d : g_j·d >= 0 ∀j}`` and the projections are averaged: ``d = (1/m) Σ_i π(g_i)``. Every projection
has a non-negative inner product with every task gradient, hence so has ``d`` (non-conflicting);
it is also the mean gradient whenever no pair conflicts. torchjd's ``UPGradWeighting`` computes the
weights from the Gramian only by solving one small quadratic program per task with quadprog.

The Gramian is handed over with trace 1: torchjd treats a Gramian of trace below ``1e-4`` as zero and
then returns the plain mean without projecting, which happens with small gradients late in
training; the weights are invariant to this rescaling. A quadprog failure raises
:class:`~polytask.balancing.base.BalancerError`. Weights have the scale of the mean (they sum to
about 1).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torchjd.aggregation import UPGradWeighting

from polytask.balancing._common import GramianWeightingBalancer
from polytask.balancing.base import StepInfo
from polytask.balancing.registry import register_balancer

__all__ = ["UPGrad"]


@register_balancer("upgrad")
class UPGrad(GramianWeightingBalancer):
    """Average of the projections of every task gradient onto the dual cone of all of them."""

    reference = (
        "Quinton & Rey 2024, Jacobian Descent for Multi-Objective Optimization, arXiv:2406.16232"
    )
    solver_description = "the quadprog dual-cone projection"

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__(task_names)
        self._solver = {"upgrad": UPGradWeighting()}

    def weigh(self, gramian: Tensor, step: StepInfo) -> Tensor:
        return self._solver["upgrad"](gramian)
