"""FairGrad: fair resource allocation in multi-task learning (Ban & Ji 2024, ICML).

The update ``d = Σ_i w_i g_i`` maximises the α-fair utility of the task improvements
``Σ_i (g_i·d)^{1-α} / (1-α)`` in a ball; its optimality condition is the non-linear system
``G w = w^{-1/α}`` (element-wise power), solved with ``scipy.optimize.least_squares`` on ``w >= 0``
by torchjd's ``FairGradWeighting``. ``α = 0`` is linear scalarisation (equal weights), ``α = 1``
proportional fairness (the Nash-MTL condition), ``α -> ∞`` max-min fairness. Default ``α = 1``
(LibMTL's default; the paper tunes α per benchmark). The weights are not scale-invariant, so the
raw Gramian (float64) is used.

Solver check. torchjd returns ``least_squares``' last iterate without looking at convergence. We
compute the relative residual ``||G w - w^{-1/α}|| / ||w^{-1/α}||``; above ``residual_tol`` the
approximate solution is still used (documented recovery) but ``fairgrad/inexact_solution`` is
counted and a ``RuntimeWarning`` names the step. A solver exception raises
:class:`~polytask.balancing.base.BalancerError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchjd.aggregation import FairGradWeighting

from polytask.balancing._common import (
    GramianWeightingBalancer,
    check_int,
    check_number,
    warn_and_count,
)
from polytask.balancing.base import BalancerError, StepInfo
from polytask.balancing.registry import register_balancer

__all__ = ["FairGrad"]


@register_balancer("fairgrad")
class FairGrad(GramianWeightingBalancer):
    """α-fair allocation of the update among the tasks."""

    reference = "Ban & Ji 2024, Fair Resource Allocation in Multi-Task Learning, ICML"
    scale_invariant = False
    solver_description = "the scipy least-squares solve"

    def __init__(
        self,
        task_names: Sequence[str],
        alpha: float = 1.0,
        max_iters: int | None = None,
        residual_tol: float = 1e-2,
    ) -> None:
        super().__init__(task_names)
        self.alpha = check_number("fairgrad", "alpha", alpha, low=0.0)
        self.max_iters = (
            None if max_iters is None else check_int("fairgrad", "max_iters", max_iters, low=1)
        )
        self.residual_tol = check_number(
            "fairgrad", "residual_tol", residual_tol, low=0.0, low_inclusive=False
        )
        try:
            self._solver = {
                "fairgrad": FairGradWeighting(alpha=self.alpha, max_iters=self.max_iters)
            }
        except ImportError as err:
            raise BalancerError(f"fairgrad: {err}") from None

    def weigh(self, gramian: Tensor, step: StepInfo) -> Tensor:
        weights = self._solver["fairgrad"](gramian)
        if self.alpha > 0:
            target = weights.clamp(min=1e-300) ** (-1.0 / self.alpha)
            residual = float(
                torch.linalg.norm(gramian @ weights - target) / torch.linalg.norm(target)
            )
            if not residual <= self.residual_tol:
                warn_and_count(
                    self,
                    "fairgrad/inexact_solution",
                    f"fairgrad: least_squares did not solve G w = w^(-1/alpha) at step {step.step} "
                    f"(relative residual {residual:.2e} > {self.residual_tol:g}); using its "
                    "approximate weights",
                )
        return weights

    def hyperparameters(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "max_iters": self.max_iters, "residual_tol": self.residual_tol}
