"""FairGrad: fair resource allocation in multi-task learning (Ban & Ji 2024, ICML).

The update ``d = Σ_i w_i g_i`` maximises the α-fair utility of the task improvements
``Σ_i (g_i·d)^{1-α} / (1-α)`` in a ball; its optimality condition is the non-linear system
``G w = w^{-1/α}`` (element-wise power), solved with ``scipy.optimize.least_squares`` on ``w >= 0``
by torchjd's ``FairGradWeighting`` (``solver="scipy"``). ``α = 0`` is linear scalarisation (equal weights), ``α = 1``
proportional fairness (the Nash-MTL condition), ``α -> ∞`` max-min fairness. Default ``α = 1``
(LibMTL's default; the paper tunes α per benchmark). The weights are not scale-invariant, so the
raw Gramian (float64) is used.

Solvers. The system is the stationarity condition of the strictly convex
``F(w) = ½ wᵀGw - Σ_i φ(w_i)`` on ``w > 0``, with ``φ' (w) = w^{-1/α}`` (``φ = log`` for ``α = 1``,
``w^{1-1/α}/(1-1/α)`` otherwise), whose Hessian ``G + diag(w^{-1/α-1}/α)`` is positive definite:
when a solution exists it is unique. ``solver="newton"`` (default) minimises ``F`` by damped Newton
on the ``T x T`` Gramian (numpy float64; rescaled to a well-scaled problem, started from the
scalar solution ``w = κ1``, steps kept inside ``w > 0`` and backtracked on ``F`` or on the residual) until the relative
residual below is under ``1e-12``: about ten ``T x T`` solves, exact to rounding. ``least_squares``
(``solver="scipy"``) stops at its own tolerances (``ftol = xtol = gtol = 1e-8``), so the two agree to
about that accuracy. When Newton does not converge (no solution: e.g. a singular ``G`` with a
non-negative null vector), the scipy solve is used instead, ``fairgrad/newton_fallback`` is counted
and a ``RuntimeWarning`` names the first such step; the residual check below then applies to its
result.
``max_iters`` bounds the scipy solve only.

Solver check. torchjd returns ``least_squares``' last iterate without looking at convergence. We
compute the relative residual ``||G w - w^{-1/α}|| / ||w^{-1/α}||``; above ``residual_tol`` the
system is unsolved and the step is a *failure*: the approximate weights are used for this step,
``fairgrad/inexact_solution`` is counted (``warning/balancer/fairgrad/inexact_solution`` in the
run's metrics, a ``RuntimeWarning`` the first time), and once more than ``max_failures`` (default
3) steps in a row were unsolved a :class:`~polytask.balancing.base.BalancerError` names the step.
A solver exception raises :class:`~polytask.balancing.base.BalancerError`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from polytask.balancing._common import (
    GramianWeightingBalancer,
    check_choice,
    check_int,
    check_max_failures,
    check_number,
    record_failure,
    torchjd_weighting,
    warn_and_count,
)
from polytask.balancing.base import StepInfo
from polytask.balancing.registry import register_balancer

__all__ = ["FairGrad"]

SOLVERS = ("newton", "scipy")
NEWTON_TOL = 1e-12


def _fairgrad_newton(g: np.ndarray, alpha: float, max_iters: int = 100) -> np.ndarray | None:
    """``w > 0`` with ``G w = w^{-1/α}`` by damped Newton on ``F`` (see the module doc), or None."""
    m = g.shape[0]
    p = 1.0 / alpha
    scale = float(np.trace(g)) / m
    if not (math.isfinite(scale) and scale > 0):
        return None
    # w = κ v with κ^{1+p} = 1/scale turns the system into G' v = v^{-p}, G' = G/scale
    gs = g / scale
    total = float(gs.sum())
    start = (m / total) ** (1.0 / (1.0 + p)) if total > 0 else 1.0
    v = np.full(m, start)

    def objective(x: np.ndarray) -> float:
        barrier = np.log(x).sum() if p == 1.0 else (x ** (1.0 - p)).sum() / (1.0 - p)
        return 0.5 * float(x @ gs @ x) - float(barrier)

    value = objective(v)
    for _ in range(max_iters):
        target = v**-p
        grad = gs @ v - target
        if float(np.linalg.norm(grad)) <= NEWTON_TOL * float(np.linalg.norm(target)):
            return v * scale ** (-1.0 / (1.0 + p))
        hessian = gs + np.diag(p * target / v)
        try:
            step = -np.linalg.solve(hessian, grad)
        except np.linalg.LinAlgError:
            return None
        slope = float(grad @ step)
        if not (math.isfinite(slope) and slope < 0):
            return None
        t = 1.0
        shrinking = step < 0
        if shrinking.any():
            t = min(1.0, 0.99 * float((v[shrinking] / -step[shrinking]).min()))
        residual = float(np.linalg.norm(grad))
        for _ in range(
            60
        ):  # backtracking: Armijo on F, or (near rounding level) a smaller residual
            trial = v + t * step
            trial_value = objective(trial)
            if (
                trial_value <= value + 1e-4 * t * slope
                or float(np.linalg.norm(gs @ trial - trial**-p)) <= (1.0 - 1e-4 * t) * residual
            ):
                break
            t *= 0.5
        else:
            return None
        v, value = trial, trial_value
    return None


@register_balancer("fairgrad")
class FairGrad(GramianWeightingBalancer):
    """α-fair allocation of the update among the tasks."""

    reference = "Ban & Ji 2024, Fair Resource Allocation in Multi-Task Learning, ICML"
    scale_invariant = False
    solver_description = "the FairGrad solve"

    def __init__(
        self,
        task_names: Sequence[str],
        alpha: float = 1.0,
        max_iters: int | None = None,
        residual_tol: float = 1e-2,
        solver: str = "newton",
        max_failures: int = 3,
    ) -> None:
        super().__init__(task_names)
        self.alpha = check_number("fairgrad", "alpha", alpha, low=0.0)
        self.max_iters = (
            None if max_iters is None else check_int("fairgrad", "max_iters", max_iters, low=1)
        )
        self.residual_tol = check_number(
            "fairgrad", "residual_tol", residual_tol, low=0.0, low_inclusive=False
        )
        self.solver = check_choice("fairgrad", "solver", solver, SOLVERS)
        self.max_failures = check_max_failures("fairgrad", max_failures)
        # Not persistent: checkpoints written before this counter existed still load, and a resumed
        # run only restarts the count of failed steps in a row (the update is unaffected).
        self.register_buffer(
            "consecutive_failures", torch.zeros((), dtype=torch.long), persistent=False
        )
        # torchjd's FairGradWeighting, built on first use; kept in a dict, not as an attribute, so the
        # (nn.Module) weighting is not registered as a submodule of the balancer.
        self._solver: dict[str, Any] = {}
        if self.solver == "scipy":
            self._scipy()

    def _scipy(self) -> Any:
        if "scipy" not in self._solver:
            self._solver["scipy"] = torchjd_weighting(
                "fairgrad", "FairGradWeighting", alpha=self.alpha, max_iters=self.max_iters
            )
        return self._solver["scipy"]

    def weigh(self, gramian: Tensor, step: StepInfo) -> Tensor:
        m = gramian.shape[0]
        if self.alpha == 0:  # linear scalarisation (as torchjd)
            return torch.full((m,), 1.0 / m, dtype=torch.float64, device=gramian.device)
        if self.solver == "newton":
            w = _fairgrad_newton(gramian.detach().double().cpu().numpy(), self.alpha)
            if w is not None:
                self.consecutive_failures.zero_()
                return torch.from_numpy(w).to(gramian.device)
            warn_and_count(
                self,
                "fairgrad/newton_fallback",
                f"fairgrad: Newton did not solve G w = w^(-1/alpha) at step {step.step}; using "
                "scipy least_squares instead",
            )
        weights = self._scipy()(gramian)
        target = weights.clamp(min=1e-300) ** (-1.0 / self.alpha)
        residual = float(torch.linalg.norm(gramian @ weights - target) / torch.linalg.norm(target))
        if not residual <= self.residual_tol:
            record_failure(
                self,
                "fairgrad/inexact_solution",
                f"fairgrad: least_squares did not solve G w = w^(-1/alpha) at step {step.step} "
                f"(relative residual {residual:.2e} > {self.residual_tol:g}); used its "
                "approximate weights",
                step.step,
                self.max_failures,
                self.consecutive_failures,
            )
        else:
            self.consecutive_failures.zero_()
        return weights

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "max_iters": self.max_iters,
            "residual_tol": self.residual_tol,
            "solver": self.solver,
            "max_failures": self.max_failures,
        }
