"""IMTL-G, the gradient-balancing half of Impartial Multi-Task Learning (Liu et al. 2021, ICLR).

IMTL-G finds the update ``d = Σ_i w_i g_i`` with ``Σ_i w_i = 1`` whose projections on every *unit*
task gradient are equal: ``d·u_i = d·u_j`` with ``u_i = g_i/||g_i||``. The paper's closed form uses
differences of gradients and of unit gradients; torchjd's ``IMTLGWeighting`` solves the equivalent
Gramian system ``w ∝ G⁺ (||g_1||, …, ||g_m||)`` (normalised to sum 1), which also handles
linearly dependent gradients. The *direction* of ``d`` depends only on the unit gradients, so it is
invariant to rescaling any task's loss (the paper's impartiality); its length does not. Gramian
only; the Gramian is trace-normalised first (the weights do not change).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torchjd.aggregation import IMTLGWeighting

from polytask.balancing._common import GramianWeightingBalancer
from polytask.balancing.base import StepInfo
from polytask.balancing.registry import register_balancer

__all__ = ["IMTLG"]


@register_balancer("imtl_g")
class IMTLG(GramianWeightingBalancer):
    """Weights (summing to 1) giving equal projections of the update on every unit gradient."""

    reference = (
        "Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang 2021, Towards Impartial Multi-task "
        "Learning, ICLR (IMTL-G)"
    )
    solver_description = "the pseudo-inverse solve"

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__(task_names)
        self._solver = {"imtl_g": IMTLGWeighting()}

    def weigh(self, gramian: Tensor, step: StepInfo) -> Tensor:
        return self._solver["imtl_g"](gramian)
