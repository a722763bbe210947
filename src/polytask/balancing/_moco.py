"""MoCo: multi-objective gradient correction (Fernando et al. 2023, ICLR).

Stochastic MGDA is biased: the min-norm weights are a non-linear function of noisy gradients.
MoCo tracks each task's gradient with a moving estimate ``y_i`` and runs a single projected
gradient step on the MGDA dual per iteration (Algorithm 1):

1. ``y_i <- y_i - β_t (y_i - h_i)`` for the present tasks, with ``h_i`` the task's stochastic
   gradient (``y_i`` starts at 0, as in the authors' code);
2. ``λ <- Π_Δ(λ - γ_t (Y Yᵀ + ρ I) λ)`` with ``Π_Δ`` the Euclidean projection onto the simplex (the
   gradient of ``½||Yᵀλ||² + ½ρ||λ||²``); ``λ`` starts uniform;
3. the update is ``d = Yᵀ λ``.

Step sizes ``β_t = β / t^{β_σ}`` and ``γ_t = γ / t^{γ_σ}`` (decaying, as the analysis requires), with
the defaults of the authors' code as shipped in LibMTL: ``β = 0.5, β_σ = 0.5, γ = 0.1, γ_σ = 0.5,
ρ = 0``. ``normalize_gradients=True`` (default, also from that code) feeds ``h_i = L_i g_i/||g_i||``
instead of ``g_i``. That code uses a softmax in place of ``Π_Δ``; we follow the paper.

With missing tasks, ``y`` of absent tasks is left unchanged and the λ step runs on the present
tasks (their part of ``λ`` renormalised, then scaled back to the mass they had). The estimates have
the width of ``J`` (the Jacobian is needed, not only its Gramian); if it changes (representation
mode with a smaller batch) they restart and ``moco/width_changed`` is counted. When every present
task has weight 0 (the projections gave the whole mass to tasks absent from this batch), their
weights restart uniform and ``moco/weights_restarted`` is counted. Returns ``d`` as the direction and
``λ`` of the present tasks as weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from polytask.balancing._common import check_number, warn_and_count
from polytask.balancing.base import (
    Balancer,
    BalancerError,
    Combination,
    Needs,
    StepInfo,
    scatter_present,
)
from polytask.balancing.registry import register_balancer

__all__ = ["MoCo", "project_onto_simplex"]


def project_onto_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of a vector onto ``{x >= 0, Σ x = 1}`` (sort-based, exact)."""
    n = v.numel()
    u, _ = torch.sort(v, descending=True)
    cumulative = torch.cumsum(u, dim=0) - 1.0
    ks = torch.arange(1, n + 1, dtype=v.dtype, device=v.device)
    support = u - cumulative / ks > 0
    rho = int(support.nonzero().max()) + 1
    theta = cumulative[rho - 1] / rho
    return (v - theta).clamp(min=0.0)


@register_balancer("moco")
class MoCo(Balancer):
    """MGDA with tracked gradient estimates and one projected step on the weights per iteration."""

    family = "gradient"
    needs = Needs(gradients="jacobian")
    reference = (
        "Fernando, Shen, Liu, Chaudhury, Murugesan & Chen 2023, Mitigating Gradient Bias in "
        "Multi-objective Learning: A Provably Convergent Approach, ICLR"
    )

    def __init__(
        self,
        task_names: Sequence[str],
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
        normalize_gradients: bool = True,
    ) -> None:
        super().__init__(task_names)
        self.beta = check_number("moco", "beta", beta, low=0.0, high=1.0, low_inclusive=False)
        self.beta_sigma = check_number("moco", "beta_sigma", beta_sigma, low=0.0)
        self.gamma = check_number("moco", "gamma", gamma, low=0.0, low_inclusive=False)
        self.gamma_sigma = check_number("moco", "gamma_sigma", gamma_sigma, low=0.0)
        self.rho = check_number("moco", "rho", rho, low=0.0)
        if not isinstance(normalize_gradients, bool):
            raise BalancerError(
                f"moco: hyper-parameter 'normalize_gradients' must be a bool, got "
                f"{normalize_gradients!r}"
            )
        self.normalize_gradients = normalize_gradients
        t = self.num_tasks
        self.register_buffer("lambdas", torch.full((t,), 1.0 / t, dtype=torch.float64))
        self.steps = 0
        self.estimates: Tensor | None = None  # [T, width], lazily sized

    def get_extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"steps": self.steps}
        if self.estimates is not None:
            state["estimates"] = self.estimates.detach().cpu()
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        estimates = state.get("estimates")
        self.estimates = None if estimates is None else estimates.clone()

    def combine(self, step: StepInfo) -> Combination:
        assert step.jacobian is not None
        jacobian = step.jacobian.detach()
        width = jacobian.shape[1]
        if self.estimates is None or self.estimates.shape[1] != width:
            if self.estimates is not None:
                warn_and_count(
                    self,
                    "moco/width_changed",
                    f"moco: the gradient width changed from {self.estimates.shape[1]} to {width} "
                    f"at step {step.step}; the gradient estimates restart from zero",
                )
            self.estimates = jacobian.new_zeros(self.num_tasks, width)
        elif self.estimates.device != jacobian.device or self.estimates.dtype != jacobian.dtype:
            self.estimates = self.estimates.to(jacobian)
        if self.normalize_gradients:
            losses = step.losses.detach()[step.present].to(jacobian)
            norms = jacobian.norm(dim=1, keepdim=True)
            h = jacobian / (norms + 1e-8) * losses.unsqueeze(1)
        else:
            h = jacobian
        self.steps += 1
        beta_t = self.beta / self.steps**self.beta_sigma
        gamma_t = self.gamma / self.steps**self.gamma_sigma
        index = step.present_index.to(jacobian.device)
        y = self.estimates[index] - beta_t * (self.estimates[index] - h)
        self.estimates[index] = y
        with torch.no_grad():
            small = index.to(self.lambdas.device)
            lam = self.lambdas[small]
            mass = float(lam.sum())
            if mass > 0:
                lam = lam / mass
            else:
                if lam.numel() > 1:  # a single task's weight is 1 whatever happened before
                    warn_and_count(
                        self,
                        "moco/weights_restarted",
                        f"moco: every present task has weight 0 at step {step.step} (the "
                        "projections gave all the mass to tasks absent now); their weights "
                        "restart uniform",
                    )
                lam = torch.full_like(lam, 1.0 / lam.numel())
            yy = (y @ y.T).double().to(lam.device)
            grad = yy @ lam + self.rho * lam
            lam = project_onto_simplex(lam - gamma_t * grad)
            self.lambdas[small] = lam * (mass if mass > 0 else 1.0)
        direction = lam.to(y) @ y
        return Combination(
            weights=scatter_present(lam.to(step.losses.dtype), step.present),
            direction=direction,
        )

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "beta": self.beta,
            "beta_sigma": self.beta_sigma,
            "gamma": self.gamma,
            "gamma_sigma": self.gamma_sigma,
            "rho": self.rho,
            "normalize_gradients": self.normalize_gradients,
        }
