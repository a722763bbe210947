"""CAGrad: conflict-averse gradient descent (Liu, Liu, Jin, Stone & Liu 2021, NeurIPS).

CAGrad looks for the update that maximises the *worst* task improvement while staying in a ball
around the average gradient ``g0``: ``max_d min_i g_i·d`` s.t. ``||d - g0|| <= c ||g0||``. Its dual is
``min_{w ∈ Δ} g_wᵀ g0 + sqrt(φ) ||g_w||`` with ``g_w = Σ_i w_i g_i`` and ``φ = c² ||g0||²``, and the
update is ``d = g0 + (sqrt(φ) / ||g_w||) g_w``. torchjd's ``CAGradWeighting`` solves the dual on the
Gramian with cvxpy (CLARABEL) instead of the paper's scipy SLSQP; the weights returned are those of
``d`` on the raw gradients (they sum to more than 1: ``g0`` is the *mean* gradient). ``c = 0.4`` is the
paper's value for the dense-prediction benchmarks; ``c = 0`` is the mean gradient. The authors'
code additionally rescales ``d`` by ``1/(1+c²)``; we keep the paper's ``d``.

The Gramian is handed over with trace 1: torchjd zeroes any Gramian of trace below an absolute
``1e-4`` and then returns all-zero weights (no update at all with small gradients); the weights are
invariant to this rescaling. A solver failure raises
:class:`~polytask.balancing.base.BalancerError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor
from torchjd.aggregation import CAGradWeighting

from polytask.balancing._common import GramianWeightingBalancer, check_number
from polytask.balancing.base import BalancerError, StepInfo
from polytask.balancing.registry import register_balancer

__all__ = ["CAGrad"]


@register_balancer("cagrad")
class CAGrad(GramianWeightingBalancer):
    """The average gradient, bent towards the worst-off task within a ball of radius ``c||g0||``."""

    reference = (
        "Liu, Liu, Jin, Stone & Liu 2021, Conflict-Averse Gradient Descent for Multi-task "
        "Learning, NeurIPS"
    )
    solver_description = "the cvxpy (CLARABEL) dual solve"

    def __init__(self, task_names: Sequence[str], c: float = 0.4) -> None:
        super().__init__(task_names)
        self.c = check_number("cagrad", "c", c, low=0.0)
        try:
            self._solver = {"cagrad": CAGradWeighting(c=self.c)}
        except ImportError as err:
            raise BalancerError(f"cagrad: {err}") from None

    def weigh(self, gramian: Tensor, step: StepInfo) -> Tensor:
        return self._solver["cagrad"](gramian)

    def hyperparameters(self) -> dict[str, Any]:
        return {"c": self.c}
