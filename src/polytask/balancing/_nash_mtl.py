"""Nash-MTL: multi-task learning as a bargaining game (Navon et al. 2022, ICML).

The update ``d = Σ_i α_i g_i`` is the Nash bargaining solution among the tasks: ``α`` solves
``G α = 1/α`` (element-wise; ``G = J Jᵀ``), i.e. every task's improvement ``g_i·d`` equals ``1/α_i``.
``d`` is rescaled to norm ``max_norm`` when longer (``max_norm = 1``, the authors' clipping; 0
disables it). Weights are recomputed every ``update_weights_every`` steps and reused in between, as
in the paper.

Solvers. For a positive definite ``G`` (linearly independent gradients; more generally whenever a
solution exists) ``α`` is the unique minimiser of the strictly convex, self-concordant
``f(α) = ½ αᵀGα - Σ log α_i``, whose gradient is ``G α - 1/α``: the bargaining condition is exactly
``∇f = 0``. ``solver="newton"`` (default) minimises ``f`` by damped Newton on the ``T x T`` Gramian,
which converges from any positive start, to machine precision (about 10 Newton steps, well under
a millisecond at ``T = 12``). ``solver="ecos"`` is the paper's route: a sequence of convex problems
(concave-convex procedure) solved with cvxpy + ECOS as in torchjd's ``NashMTL`` (the authors'
formulation, ``optim_niter`` iterations, warm started from the previous step's ``α``, stopped once
``||G α - 1/α|| < 1e-3``), about 100 times slower and only as exact as that stopping rule; both
solve the same equation, so they agree up to ECOS's tolerance. Each solver falls back on the other
when its result fails the residual check below (``nash_mtl/ecos_fallback`` or
``nash_mtl/newton_fallback`` is counted, with a ``RuntimeWarning`` naming the first such step; the
Newton path uses ECOS only when cvxpy and ecos are installed).

Gramian only. torchjd's API takes the Jacobian but reads nothing else than ``J Jᵀ``; we pass a
square factor ``F`` with ``F Fᵀ = G``, so the cheap Gramian mode works and the result is the same.

Silent fallbacks found in torchjd (and the authors' code) and what we do about them:

* an ECOS exception (``SolverError``/``ValueError``, e.g. with a zero gradient) or an
  infeasible/unbounded linearised subproblem makes it return the *previous* ``α`` (all ones at the
  first step) without any signal; ECOS hitting its iteration limit returns a partial solution.
  The subproblems fail e.g. when the start point has ``(G α)_i <= 0`` (conflicting gradients of
  very different norms, ``J = [[-6, 0, -7], [-1, -1, 2]]`` from ``α = 1``), although the
  bargaining solution then still exists. We check every result against the bargaining condition
  (relative residual ``||G α - 1/α|| / ||1/α||`` at most ``residual_tol``; a solved problem gives
  ~1e-8). When ECOS failed, ``α`` is recomputed directly: for a positive definite ``G`` (linearly
  independent gradients) the solution is the unique minimiser of the strictly convex, self-
  concordant ``½ αᵀGα - Σ log α_i`` (its gradient is ``G α - 1/α``), which damped Newton finds
  from any positive start; ``nash_mtl/newton_fallback`` is counted and a ``RuntimeWarning``
  names the first such step. If that fails too (a singular ``G``: no bargaining solution), the step is a
  *failure*: the previous weights of these tasks are kept, ``nash_mtl/solver_failed`` is counted
  (``warning/balancer/nash_mtl/solver_failed`` in the run's metrics; a ``RuntimeWarning`` the first
  time), and once more than ``max_failures`` (default 3) steps in a row failed a
  :class:`~polytask.balancing.base.BalancerError` names the step and stops training, so it can
  never train for long with stale or equal weights under Nash-MTL's name;
* with ``solver="ecos"``, a missing ``cvxpy``/``ecos`` raises
  :class:`~polytask.balancing.base.BalancerError` at construction (torchjd's ImportError, with the
  install hint);
* torchjd sizes its problem by the number of tasks at construction; we keep one solver per number
  of present tasks and the full ``α`` vector as a buffer (so checkpoints restore the warm start and
  a batch with a missing task does not reset anything).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from polytask.balancing._common import (
    check_choice,
    check_int,
    check_max_failures,
    check_number,
    factor_of_gramian,
    guarded,
    record_failure,
    warn_and_count,
)
from polytask.balancing.base import (
    Balancer,
    BalancerError,
    Combination,
    Needs,
    StepInfo,
    scatter_present,
)
from polytask.balancing.registry import register_balancer

__all__ = ["NashMTL"]

SOLVERS = ("newton", "ecos")


def _make_solver(n_tasks: int, optim_niter: int) -> Any:
    from torchjd.aggregation import NashMTL as _TorchjdNashMTL

    # max_norm=0: torchjd returns the unclipped α; clipping is done here, also for reused weights.
    return _TorchjdNashMTL(
        n_tasks=n_tasks, max_norm=0.0, update_weights_every=1, optim_niter=optim_niter
    ).weighting


def _newton_bargaining(gramian: Tensor, max_iters: int = 200) -> Tensor:
    """``α > 0`` with ``G α = 1/α``: the minimiser of ``f(α) = ½ αᵀGα - Σ log α_i``.

    ``f`` is self-concordant, so damped Newton (step ``1/(1+λ)``, ``λ`` the Newton decrement, while
    ``λ >= 1/4``; full steps after) keeps ``α`` positive and converges from any positive start,
    quadratically near the solution. Started from ``α_i = 1/|g_i|`` (exact for orthogonal
    gradients). Without a solution (singular ``G``) the result fails the caller's residual check.
    The iterations run in numpy float64 on the ``T x T`` matrix (no per-iteration torch dispatch).
    """
    g = gramian.detach().double().cpu().numpy()
    alpha = 1.0 / np.sqrt(np.clip(np.diagonal(g), 1e-12, None))
    for _ in range(max_iters):
        inverse = 1.0 / alpha
        grad = g @ alpha - inverse
        hessian = g + np.diag(inverse * inverse)
        try:
            delta = np.linalg.solve(hessian, grad)
        except np.linalg.LinAlgError:
            break  # singular Hessian: no Newton step; the residual check reports the failure
        decrement = float(np.sqrt(max(float(grad @ delta), 0.0)))
        if not np.isfinite(decrement) or decrement < 1e-12:
            break
        alpha = alpha - (1.0 if decrement < 0.25 else 1.0 / (1.0 + decrement)) * delta
    return torch.from_numpy(alpha)


def _relative_residual(gramian: Tensor, alpha: Tensor) -> float:
    inverse = 1.0 / alpha
    return float(torch.linalg.norm(gramian @ alpha - inverse) / torch.linalg.norm(inverse))


@register_balancer("nash_mtl")
class NashMTL(Balancer):
    """Nash bargaining weights ``G α = 1/α`` (damped Newton, or cvxpy + ECOS through torchjd)."""

    family = "gradient"
    needs = Needs(gradients="gramian")
    reference = (
        "Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya 2022, Multi-Task "
        "Learning as a Bargaining Game, ICML"
    )

    def __init__(
        self,
        task_names: Sequence[str],
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        optim_niter: int = 20,
        residual_tol: float = 1e-3,
        max_failures: int = 3,
        solver: str = "newton",
    ) -> None:
        super().__init__(task_names)
        self.max_norm = check_number("nash_mtl", "max_norm", max_norm, low=0.0)
        self.update_weights_every = check_int(
            "nash_mtl", "update_weights_every", update_weights_every, low=1
        )
        self.optim_niter = check_int("nash_mtl", "optim_niter", optim_niter, low=1)
        self.residual_tol = check_number(
            "nash_mtl", "residual_tol", residual_tol, low=0.0, low_inclusive=False
        )
        self.max_failures = check_max_failures("nash_mtl", max_failures)
        self.solver = check_choice("nash_mtl", "solver", solver, SOLVERS)
        try:
            _make_solver(1, self.optim_niter)
            self._ecos_available = True
        except ImportError as err:
            if self.solver == "ecos":
                raise BalancerError(
                    f"nash_mtl with solver='ecos' needs cvxpy and ecos: {err} (or pip install "
                    "'polytask[cvx]')"
                ) from None
            self._ecos_available = False
        self._solvers: dict[int, Any] = {}
        t = self.num_tasks
        self.register_buffer("alpha", torch.ones(t, dtype=torch.float64))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("consecutive_failures", torch.zeros((), dtype=torch.long))

    def _solve(self, gramian: Tensor, index: Tensor, step: int) -> None:
        m = gramian.shape[0]
        start = self.alpha[index].cpu().numpy().astype(np.float64)
        if m == 1:
            # Closed form (torchjd's cvxpy formulation fails on a single task): G α² = 1.
            alpha = 1.0 / gramian.cpu().reshape(1).clamp(min=0.0).sqrt()
        else:
            # Solve on G / s (s the mean squared gradient norm) and map back with α = α'/√s: the
            # condition G α = 1/α is exactly preserved, and the solvers see well-scaled numbers
            # even when the gradients are tiny (late in training) or huge.
            scale = float(gramian.diagonal().mean())
            if not scale > 0:
                scale = 1.0
            root = scale**0.5
            if self.solver == "newton":
                alpha = self._newton(gramian, scale, step) / root
                if not self._solved(gramian, alpha) and self._ecos_available:
                    newton_residual = _relative_residual(gramian.cpu(), alpha)
                    ecos = self._ecos(gramian, scale, start, step) / root
                    if self._solved(gramian, ecos):
                        warn_and_count(
                            self,
                            "nash_mtl/ecos_fallback",
                            f"nash_mtl: the Newton solve failed at step {step} (relative residual "
                            f"of G a = 1/a: {newton_residual:.2e}); used the cvxpy/ECOS solution "
                            f"(residual {_relative_residual(gramian.cpu(), ecos):.2e})",
                        )
                        alpha = ecos
            else:
                alpha = self._ecos(gramian, scale, start, step) / root
                if not self._solved(gramian, alpha):
                    ecos_residual = _relative_residual(gramian.cpu(), alpha)
                    newton = self._newton(gramian, scale, step) / root
                    if self._solved(gramian, newton):
                        warn_and_count(
                            self,
                            "nash_mtl/newton_fallback",
                            f"nash_mtl: the ECOS solve failed at step {step} (relative residual of "
                            f"G a = 1/a: {ecos_residual:.2e}); used the direct Newton solution "
                            f"(residual {_relative_residual(gramian.cpu(), newton):.2e})",
                        )
                        alpha = newton
        residual = _relative_residual(gramian.cpu(), alpha)
        if self._solved(gramian, alpha):
            self.alpha[index] = alpha.to(self.alpha)
            self.consecutive_failures.zero_()
            return
        record_failure(
            self,
            "nash_mtl/solver_failed",
            f"nash_mtl: the bargaining solve ({self.solver}) failed at step {step} (relative "
            f"residual of G a = 1/a: {residual:.2e}: the tasks' gradients admit no bargaining "
            f"solution); kept the previous weights {start.round(4).tolist()}",
            step,
            self.max_failures,
            self.consecutive_failures,
        )

    def _newton(self, gramian: Tensor, scale: float, step: int) -> Tensor:
        """Damped Newton on ``(G/s) α' = 1/α'`` (``α'`` = ``√s α``)."""
        return guarded(
            "nash_mtl",
            step,
            "the Newton solve of G a = 1/a",
            lambda: _newton_bargaining(gramian.cpu() / scale),
        )

    def _ecos(self, gramian: Tensor, scale: float, start: np.ndarray, step: int) -> Tensor:
        """torchjd's cvxpy/ECOS concave-convex iterations on ``G/s``, warm started at ``√s α``."""
        m = gramian.shape[0]
        solver = self._solvers.get(m)
        if solver is None:
            solver = self._solvers[m] = _make_solver(m, self.optim_niter)
        solver.prvs_alpha = start * scale**0.5
        factor = factor_of_gramian(gramian / scale)
        with warnings.catch_warnings():
            # cvxpy's note that the problem is not DPP-compliant (a performance remark).
            warnings.filterwarnings("ignore", message=".*not DPP.*")
            alpha = guarded("nash_mtl", step, "the cvxpy/ECOS solve", lambda: solver(factor))
        return alpha.detach().double().cpu()

    def _solved(self, gramian: Tensor, alpha: Tensor) -> bool:
        return (
            bool(torch.isfinite(alpha).all())
            and bool((alpha > 0).all())
            and _relative_residual(gramian.cpu(), alpha) <= self.residual_tol
        )

    def combine(self, step: StepInfo) -> Combination:
        assert step.gramian is not None
        gramian = step.gramian.detach().double()
        if not bool(torch.isfinite(gramian).all()):
            raise BalancerError(f"nash_mtl: non-finite Gramian at step {step.step}")
        index = step.present_index.to(self.alpha.device)
        if int(self.calls) % self.update_weights_every == 0:
            with torch.no_grad():
                self._solve(gramian, index, step.step)
        self.calls += 1
        alpha = self.alpha[index].to(gramian.device)
        if self.max_norm > 0:
            norm = float((alpha @ gramian @ alpha).clamp(min=0.0).sqrt())
            if norm > self.max_norm:
                alpha = alpha * (self.max_norm / norm)
        return Combination(weights=scatter_present(alpha.to(step.losses.dtype), step.present))

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "max_norm": self.max_norm,
            "update_weights_every": self.update_weights_every,
            "optim_niter": self.optim_niter,
            "residual_tol": self.residual_tol,
            "max_failures": self.max_failures,
            "solver": self.solver,
        }
