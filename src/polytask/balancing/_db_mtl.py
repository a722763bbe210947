"""DB-MTL: Dual-Balancing Multi-Task Learning (Lin, Ye, Wang, Zhang & Zhang 2023).

Two balancing steps:

* loss-scale balance: every loss is log-transformed, so the per-task gradient is
  ``g_i = ∇ log L_i = ∇L_i / L_i`` (invariant to multiplying ``L_i`` by a constant);
* gradient-magnitude balance: an exponential moving average of those gradients,
  ``ĝ_i <- β_t ĝ_i + (1 - β_t) g_i`` with ``β_t = β / t^{β_σ}`` (``ĝ_i`` starts at 0), and every task's
  average is rescaled to the largest norm: ``d = Σ_i (max_j ||ĝ_j|| / ||ĝ_i||) ĝ_i``.

``d`` is returned as the update direction of the shared part (so the method needs the Jacobian, not
only its Gramian). Defaults ``β = 0.9``, ``β_σ = 0`` (a constant β) as in the authors' LibMTL code.
The reported weights are the magnitude-balancing factors ``max_j ||ĝ_j|| / ||ĝ_i||``.

Notes. ``t`` counts the balancer's steps; a task's average is only updated when the task is
present. The averages have the width of ``J`` (all shared parameters, or the representation in the
engine's representation mode); if that width changes (e.g. a smaller last batch in representation
mode) the averages restart from zero and ``db_mtl/width_changed`` is counted, since averaging
representation gradients of different samples has no meaning. The task-specific heads are updated
by the engine with their own loss gradients, not the log-loss gradients. Losses must be finite and
strictly positive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from polytask.balancing._common import check_number, require_positive_losses, warn_and_count
from polytask.balancing.base import Balancer, Combination, Needs, StepInfo, scatter_present
from polytask.balancing.registry import register_balancer

__all__ = ["DBMTL"]


@register_balancer("db_mtl")
class DBMTL(Balancer):
    """Log-loss gradients, averaged over time and rescaled to the largest norm."""

    family = "gradient"
    needs = Needs(gradients="jacobian")
    reference = (
        "Lin, Ye, Wang, Zhang & Zhang 2023, Dual-Balancing for Multi-Task Learning, "
        "arXiv:2308.12029"
    )

    def __init__(
        self,
        task_names: Sequence[str],
        beta: float = 0.9,
        beta_sigma: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(task_names)
        self.beta = check_number("db_mtl", "beta", beta, low=0.0, high=1.0, high_inclusive=False)
        self.beta_sigma = check_number("db_mtl", "beta_sigma", beta_sigma, low=0.0)
        self.eps = check_number("db_mtl", "eps", eps, low=0.0, low_inclusive=False)
        self.steps = 0
        self.averages: Tensor | None = None  # [T, width], lazily sized

    def get_extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"steps": self.steps}
        if self.averages is not None:
            state["averages"] = self.averages.detach().cpu()
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        averages = state.get("averages")
        self.averages = None if averages is None else averages.clone()

    def combine(self, step: StepInfo) -> Combination:
        require_positive_losses("db_mtl", step.step, self.task_names, step.losses, step.present)
        assert step.jacobian is not None
        jacobian = step.jacobian.detach()
        losses = step.losses.detach()[step.present].to(jacobian)
        log_grads = jacobian / losses.unsqueeze(1)
        width = jacobian.shape[1]
        if self.averages is None or self.averages.shape[1] != width:
            if self.averages is not None:
                warn_and_count(
                    self,
                    "db_mtl/width_changed",
                    f"db_mtl: the gradient width changed from {self.averages.shape[1]} to {width} "
                    f"at step {step.step}; the gradient averages restart from zero",
                )
            self.averages = jacobian.new_zeros(self.num_tasks, width)
        elif self.averages.device != jacobian.device or self.averages.dtype != jacobian.dtype:
            self.averages = self.averages.to(jacobian)
        self.steps += 1
        beta_t = self.beta / self.steps**self.beta_sigma
        index = step.present_index.to(jacobian.device)
        updated = beta_t * self.averages[index] + (1.0 - beta_t) * log_grads
        self.averages[index] = updated
        norms = updated.norm(dim=1)
        factors = norms.max() / (norms + self.eps)
        direction = factors @ updated
        return Combination(
            weights=scatter_present(factors.to(step.losses.dtype), step.present),
            direction=direction,
        )

    def hyperparameters(self) -> dict[str, Any]:
        return {"beta": self.beta, "beta_sigma": self.beta_sigma, "eps": self.eps}
