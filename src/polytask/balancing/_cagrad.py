"""CAGrad: conflict-averse gradient descent (Liu, Liu, Jin, Stone & Liu 2021, NeurIPS).

CAGrad looks for the update that maximises the *worst* task improvement while staying in a ball
around the average gradient ``g0``: ``max_d min_i g_i·d`` s.t. ``||d - g0|| <= c ||g0||``. Its dual is
``min_{w ∈ Δ} g_wᵀ g0 + sqrt(φ) ||g_w||`` with ``g_w = Σ_i w_i g_i`` and ``φ = c² ||g0||²``, and the
update is ``d = g0 + (sqrt(φ) / ||g_w||) g_w``; the weights returned are those of ``d`` on the raw
gradients (they sum to more than 1: ``g0`` is the *mean* gradient). ``c = 0.4`` is the paper's value
for the dense-prediction benchmarks; ``c = 0`` is the mean gradient. The authors' code additionally
rescales ``d`` by ``1/(1+c²)``; we keep the paper's ``d``.

Solvers. Writing the weights as ``1/T + u`` (``u >= 0``, ``s = sqrt(φ)``), the optimality conditions
are: ``g_i·d = λ`` where ``u_i > 0``, ``g_i·d >= λ`` elsewhere, and ``||Σ_i u_i g_i|| = s``; for a
fixed ``λ`` they are those of the quadratic program ``min_{u >= 0} ½ uᵀGu + (G1/T - λ1)ᵀu``, whose
solution is piecewise linear in ``λ``. ``solver="homotopy"`` (default) follows that path exactly on
the ``T x T`` Gramian (numpy float64): from ``u = 0`` at ``λ = min_i (G1/T)_i``, along segments where
the active tasks' improvements rise together (one ``|S| x |S|`` solve each), tasks entering or
leaving at the breakpoints, until ``||Σ u_i g_i||`` reaches ``s`` (a quadratic in ``λ``). The final
active set is solved once more directly and the optimality conditions are checked to ``1e-9``; the
result is exact to rounding (about 0.1 ms at ``T = 12``). ``solver="cvxpy"`` is torchjd's
``CAGradWeighting`` (the dual solved by cvxpy/CLARABEL, about 100 times slower). Both give the same
update ``d`` up to CLARABEL's tolerance (the weights themselves are only unique when the gradients
are linearly independent). When the homotopy fails (an iteration cap, a singular active set, e.g. a
zero or duplicated gradient, or a failed optimality check), the cvxpy solve is used instead,
``cagrad/homotopy_fallback`` is counted and a ``RuntimeWarning`` names the first such step; it never falls
back silently, nor on equal weights.

The Gramian is handed over with trace 1: torchjd zeroes any Gramian of trace below an absolute
``1e-4`` and then returns all-zero weights (no update at all with small gradients); the weights are
invariant to this rescaling. As in torchjd, a solution with ``||g_w|| < 1e-4`` (trace-1 scale: 0 is
in the convex hull of the task gradients, which are Pareto-stationary) gives all-zero weights:
``d = g0 + (sqrt(φ)/||g_w||) g_w`` is undefined there and the shared parameters get no update.
``cagrad/pareto_stationary`` is counted (``warning/balancer/cagrad/pareto_stationary`` in the run's
metrics, a ``RuntimeWarning`` the first time). With ``c >= 1`` that zero update lies in CAGrad's
ball and attains the optimal worst-task improvement (0), so it is the method's answer. With
``c < 1`` it lies outside the ball: the step is a *failure*, and once more than ``max_failures``
(default 3) steps in a row had no update a :class:`~polytask.balancing.base.BalancerError` names
the step. A solver failure of the cvxpy path raises :class:`~polytask.balancing.base.BalancerError`.
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
    check_max_failures,
    check_number,
    record_failure,
    torchjd_weighting,
    warn_and_count,
)
from polytask.balancing.base import StepInfo
from polytask.balancing.registry import register_balancer

__all__ = ["CAGrad"]

SOLVERS = ("homotopy", "cvxpy")
NORM_EPS = 1e-4  # torchjd's CAGradWeighting default: ||g_w|| below it gives all-zero weights
KKT_TOL = 1e-9


class _HomotopyFailed(Exception):
    pass


class _ParetoStationary(Exception):
    pass


def _active_solution(g: np.ndarray, b: np.ndarray, s2: float, active: np.ndarray) -> np.ndarray:
    """``u`` on the active set ``S``: ``G_SS u_S = λ1 - b_S`` with ``u_Sᵀ G_SS u_S = s²``, largest λ."""
    sub = g[active][:, active]
    rhs = np.stack([np.ones(active.size), b[active]], axis=1)
    sol = np.linalg.solve(sub, rhs)
    a, c = sol[:, 0], sol[:, 1]
    qa, qb, qc = float(a.sum()), float(c.sum()), float(b[active] @ c) - s2
    disc = qb * qb - qa * qc
    if not (qa > 0 and disc >= 0):
        raise _HomotopyFailed("no real root on the final active set")
    lam = (qb + math.sqrt(disc)) / qa
    u = np.zeros(g.shape[0])
    u[active] = lam * a - c
    return u


def _enter(g: np.ndarray, u: np.ndarray, in_set: np.ndarray, active: np.ndarray, j: int) -> None:
    """Add task ``j`` to the active set ``S``.

    When ``g_j`` is a combination of the active gradients (rank-deficient Gramian), ``G_S'S'`` would
    be singular: ``u`` is then moved along the null vector ``z`` (``Σ z_i g_i = 0``, ``z_j = 1``), which
    leaves the update ``d`` unchanged, until an active task's ``u_k`` reaches 0 and ``k`` leaves.
    """
    u[j] = 0.0
    proj = np.linalg.solve(g[active][:, active], g[active, j])
    schur = float(g[j, j] - g[active, j] @ proj)
    in_set[j] = True
    if schur > 1e-9 * float(g[j, j]):
        return
    z = -proj  # null vector on the active tasks, z_j = 1
    shrinking = z < 0
    if not shrinking.any():
        # Σ z_i g_i = 0 with z >= 0: 0 is in the convex hull of the gradients, the path stops at
        # λ = 0 inside the ball; w = z / Σz is a dual optimum with g_w = 0 (the only kind when c > 1)
        raise _ParetoStationary
    ratios = u[active][shrinking] / -z[shrinking]
    k = int(np.argmin(ratios))
    tau = float(ratios[k])
    u[active] += tau * z
    u[j] = tau
    leaving = int(active[np.flatnonzero(shrinking)[k]])
    u[leaving] = 0.0
    in_set[leaving] = False


def _checked(g: np.ndarray, b: np.ndarray, s2: float, in_set: np.ndarray) -> np.ndarray | None:
    """The solution on the active set ``in_set`` if it passes the optimality check, else None."""
    active = np.flatnonzero(in_set)
    try:
        u = _active_solution(g, b, s2, active)
    except (_HomotopyFailed, np.linalg.LinAlgError):
        return None
    grad = g @ u + b
    lam = float(grad[active].mean())
    tol = KKT_TOL * (1.0 + abs(lam) + math.sqrt(s2))
    off = ~in_set
    if not (
        bool(np.isfinite(u).all())
        and float(u.min()) >= -tol
        and float(np.abs(grad[active] - lam).max()) <= tol
        and (not off.any() or float(grad[off].min()) >= lam - tol)
        and abs(float(u @ g @ u) - s2) <= tol * s2
    ):
        return None
    return np.maximum(u, 0.0)


def _cagrad_homotopy(
    g: np.ndarray, c: float, guess: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """CAGrad weights on a trace-1 Gramian by following the path ``u(λ)`` (see the module doc).

    Also returns the final active set. ``guess`` (e.g. the previous step's active set) is tried
    first: when the optimality check passes on it, the path is not followed at all.
    """
    m = g.shape[0]
    b = g.sum(axis=1) / m
    s2 = c * c * max(float(b.sum()) / m, 0.0)  # φ = c² ||g0||², ||g0||² = 1ᵀG1 / m²
    uniform = np.full(m, 1.0 / m)
    if s2 <= 0.0:  # c = 0 or g0 = 0: the mean gradient
        return uniform, None
    if guess is not None and guess.shape == (m,) and guess.any():
        u = _checked(g, b, s2, guess)
        if u is not None:
            return _weights(u, s2, uniform), guess
    in_set = np.zeros(m, dtype=bool)
    in_set[int(np.argmin(b))] = True
    u = np.zeros(m)
    lam = float(b.min())
    if not float(g[in_set, in_set][0]) > 1e-12:
        raise _HomotopyFailed("the worst-off task has a zero gradient")
    for _ in range(4 * m + 20):
        active = np.flatnonzero(in_set)
        rows = g[active]
        sub = rows[:, active]
        delta = np.linalg.solve(sub, np.ones(active.size))
        rate = float(delta.sum())  # 1ᵀ G_SS⁻¹ 1
        if not (math.isfinite(rate) and rate > 0):
            raise _HomotopyFailed("singular active set")
        u_s = u[active]
        su = float(u_s.sum())
        q0 = float(u_s @ sub @ u_s)
        # ||Σ u_i g_i||² along the segment: q0 + 2 t Σu + t² Σδ (G_SS δ = 1)
        gap = max(s2 - q0, 0.0)
        t_best = gap / (su + math.sqrt(su * su + rate * gap))
        event = -1
        shrinking = delta < 0
        if shrinking.any():
            t_leave = -u_s[shrinking] / delta[shrinking]
            k = int(np.argmin(t_leave))
            if t_leave[k] < t_best:
                t_best, event = float(t_leave[k]), int(active[np.flatnonzero(shrinking)[k]])
        off = np.flatnonzero(~in_set)
        if off.size:
            cross = rows[:, off].T
            slack = np.maximum(cross @ u_s + b[off] - lam, 0.0)
            closing = 1.0 - cross @ delta
            moving = closing > 1e-12
            if moving.any():
                t_enter = slack[moving] / closing[moving]
                k = int(np.argmin(t_enter))
                if t_enter[k] < t_best:
                    t_best, event = float(t_enter[k]), int(off[np.flatnonzero(moving)[k]])
        u[active] = u_s + t_best * delta
        lam += t_best
        if event < 0:
            break
        if in_set[event]:  # leaves
            in_set[event] = False
            u[event] = 0.0
        else:
            try:
                _enter(g, u, in_set, active, event)
            except _ParetoStationary:
                return np.zeros(m), None  # torchjd: ||g_w|| < norm_eps gives all-zero weights
        if not in_set.any():
            raise _HomotopyFailed("empty active set")
    else:
        raise _HomotopyFailed("iteration cap reached")
    u_final = _checked(g, b, s2, in_set)
    if u_final is None:
        raise _HomotopyFailed("optimality check failed")
    return _weights(u_final, s2, uniform), in_set


def _weights(u: np.ndarray, s2: float, uniform: np.ndarray) -> np.ndarray:
    if math.sqrt(s2) / float(u.sum()) < NORM_EPS:  # ||g_w|| = s / Σu: torchjd's "Pareto front"
        return np.zeros_like(uniform)
    return uniform + u


@register_balancer("cagrad")
class CAGrad(GramianWeightingBalancer):
    """The average gradient, bent towards the worst-off task within a ball of radius ``c||g0||``."""

    reference = (
        "Liu, Liu, Jin, Stone & Liu 2021, Conflict-Averse Gradient Descent for Multi-task "
        "Learning, NeurIPS"
    )
    solver_description = "the CAGrad dual solve"

    def __init__(
        self,
        task_names: Sequence[str],
        c: float = 0.4,
        solver: str = "homotopy",
        max_failures: int = 3,
    ) -> None:
        super().__init__(task_names)
        self.c = check_number("cagrad", "c", c, low=0.0)
        self.solver = check_choice("cagrad", "solver", solver, SOLVERS)
        self.max_failures = check_max_failures("cagrad", max_failures)
        # Not persistent: checkpoints written before this counter existed still load, and a resumed
        # run only restarts the count of failed steps in a row (the update is unaffected).
        self.register_buffer(
            "consecutive_failures", torch.zeros((), dtype=torch.long), persistent=False
        )
        # torchjd's CAGradWeighting, built on first use; kept in a dict, not as an attribute, so the
        # (nn.Module) weighting is not registered as a submodule of the balancer.
        self._solver: dict[str, Any] = {}
        self._active_sets: dict[int, np.ndarray] = {}  # warm start only: never changes the result
        if self.solver == "cvxpy":
            self._cvxpy()

    def _cvxpy(self) -> Any:
        if "cvxpy" not in self._solver:
            self._solver["cvxpy"] = torchjd_weighting(
                "cagrad", "CAGradWeighting", c=self.c, norm_eps=NORM_EPS
            )
        return self._solver["cvxpy"]

    def weigh(self, gramian: Tensor, step: StepInfo) -> Tensor:
        weights = self._solve(gramian, step)
        if not bool((weights == 0).all()):
            self.consecutive_failures.zero_()
            return weights
        message = (
            f"cagrad: at step {step.step} the task gradients are Pareto-stationary (0 is in their "
            "convex hull: ||g_w|| < 1e-4 of the trace-1 Gramian), where CAGrad's update "
            "g0 + (sqrt(phi)/||g_w||) g_w is undefined; as torchjd does, the shared parameters get "
            "no update this step"
        )
        if self.c >= 1.0:
            # d = 0 lies in the ball ||d - g0|| <= c||g0|| and attains the optimal worst-task
            # improvement (0, as 0 is in the hull): CAGrad's own answer, counted but no failure.
            warn_and_count(self, "cagrad/pareto_stationary", message)
        else:
            # c < 1: d = 0 is outside the ball, so it is not CAGrad's update.
            record_failure(
                self,
                "cagrad/pareto_stationary",
                message + f" (with c = {self.c:g} < 1 the zero update is outside CAGrad's ball)",
                step.step,
                self.max_failures,
                self.consecutive_failures,
            )
        return weights

    def _solve(self, gramian: Tensor, step: StepInfo) -> Tensor:
        if self.solver == "homotopy":
            g = gramian.detach().double().cpu().numpy()
            m = g.shape[0]
            try:
                weights, active = _cagrad_homotopy(g, self.c, self._active_sets.get(m))
            except (_HomotopyFailed, np.linalg.LinAlgError) as err:
                warn_and_count(
                    self,
                    "cagrad/homotopy_fallback",
                    f"cagrad: the homotopy solver failed at step {step.step} ({err}); using the "
                    "cvxpy (CLARABEL) solve instead",
                )
            else:
                if active is not None:
                    self._active_sets[m] = active
                return torch.from_numpy(weights).to(gramian.device)
        return self._cvxpy()(gramian)

    def hyperparameters(self) -> dict[str, Any]:
        return {"c": self.c, "solver": self.solver, "max_failures": self.max_failures}
