"""ExcessMTL: robust multi-task learning with excess risks (He, Zhou, Zhao & Zhang 2024, ICML).

Tasks are weighted by an estimate of their *excess risk* (how far they are from their own optimum)
rather than their raw loss, so noisy tasks with a high irreducible loss are not over-weighted.
Per step, for every present task ``i`` with gradient ``g_i`` (element-wise operations):

1. accumulate the squared gradients ``S_i += g_i²`` (an AdaGrad-style diagonal Hessian estimate,
   Eq. 7) and estimate the excess risk ``E_i = Σ g_i² / sqrt(S_i + 1e-7)`` (Eq. 6, ``gᵀ H⁻¹ g``);
2. scale processing (Sec. 3.2): divide by the task's first estimate, ``r_i = E_i / E_i(first)``
   (``r_i = 1`` when the task is seen for the first time);
3. exponentiated-gradient update of the weights (Eq. 9), ``w_i <- w_i exp(η r_i)``, renormalised so
   that the present tasks keep their total weight; the weights sum to the number of tasks, the
   scale of ``equal``, as in the official code.

Default ``η = robust_step_size = 1e-2`` (the official/LibMTL default). At the very first step all
``r_i = 1`` and the weights stay equal, like the official code's first step.

Implemented here rather than through torchjd's ``ExcessMTLWeighting`` because its state (the
squared-gradient sums, the baselines) is tied to the number of rows and reset whenever a task is
missing from a batch; ours is per task (absent tasks keep their statistics and weight). It needs
the Jacobian (element-wise squares). The statistics have the width of ``J``; if the width changes
(representation mode with a smaller batch), they restart and ``excess_mtl/width_changed`` is
counted — averaging representation gradients of different samples is not meaningful.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from polytask.balancing._common import check_number, warn_and_count
from polytask.balancing.base import Balancer, Combination, Needs, StepInfo
from polytask.balancing.registry import register_balancer

__all__ = ["ExcessMTL"]


@register_balancer("excess_mtl")
class ExcessMTL(Balancer):
    """Exponentiated-gradient weights driven by per-task excess-risk estimates."""

    family = "gradient"
    needs = Needs(gradients="jacobian")
    reference = "He, Zhou, Zhao & Zhang 2024, Robust Multi-Task Learning with Excess Risks, ICML"

    def __init__(self, task_names: Sequence[str], robust_step_size: float = 1e-2) -> None:
        super().__init__(task_names)
        self.robust_step_size = check_number(
            "excess_mtl", "robust_step_size", robust_step_size, low=0.0, low_inclusive=False
        )
        t = self.num_tasks
        self.register_buffer("loss_weights", torch.ones(t, dtype=torch.float64))
        self.register_buffer("baseline", torch.full((t,), float("nan"), dtype=torch.float64))
        self.squared_sums: Tensor | None = None  # [T, width], lazily sized

    def get_extra_state(self) -> dict[str, Any]:
        if self.squared_sums is None:
            return {}
        return {"squared_sums": self.squared_sums.detach().cpu()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        sums = state.get("squared_sums")
        self.squared_sums = None if sums is None else sums.clone()

    def combine(self, step: StepInfo) -> Combination:
        assert step.jacobian is not None
        jacobian = step.jacobian.detach().double()
        width = jacobian.shape[1]
        if self.squared_sums is None or self.squared_sums.shape[1] != width:
            if self.squared_sums is not None:
                warn_and_count(
                    self,
                    "excess_mtl/width_changed",
                    f"excess_mtl: the gradient width changed from {self.squared_sums.shape[1]} to "
                    f"{width} at step {step.step}; the excess-risk statistics restart",
                )
                self.baseline.fill_(float("nan"))
            self.squared_sums = jacobian.new_zeros(self.num_tasks, width)
        elif self.squared_sums.device != jacobian.device:
            self.squared_sums = self.squared_sums.to(jacobian.device)
        index = step.present_index.to(jacobian.device)
        squares = jacobian * jacobian
        sums = self.squared_sums[index] + squares
        self.squared_sums[index] = sums
        device = self.loss_weights.device
        excess = (squares / torch.sqrt(sums + 1e-7)).sum(dim=1).to(device)
        with torch.no_grad():
            small_index = index.to(device)
            baseline = self.baseline[small_index]
            first = torch.isnan(baseline)
            baseline = torch.where(first, excess, baseline)
            self.baseline[small_index] = baseline
            ratio = torch.where(first, torch.ones_like(excess), excess / (baseline + 1e-7))
            old = self.loss_weights[small_index]
            logits = torch.log(old) + self.robust_step_size * ratio
            self.loss_weights[small_index] = torch.softmax(logits, dim=0) * old.sum()
        weights = self.loss_weights * step.present.to(device).double()
        return Combination(weights=weights.to(device=step.losses.device, dtype=step.losses.dtype))

    def hyperparameters(self) -> dict[str, Any]:
        return {"robust_step_size": self.robust_step_size}
