"""Scale-invariant loss, SI: the sum of the logarithms of the task losses.

``L = Σ_i log L_i`` over the present tasks. Multiplying a task's loss by ``c > 0`` only adds the
constant ``log c``, so the gradient (``Σ_i ∇L_i / L_i``) does not change: the method is invariant to
the scale of each loss. It is the "SI" baseline of Navon et al. 2022 (Nash-MTL) and the
loss-scale half of DB-MTL (Lin et al. 2023). Reported weights are the effective gradient weights
``1 / L_i``. Every present loss must be finite and strictly positive.
"""

from __future__ import annotations

import torch

from polytask.balancing._common import require_positive_losses
from polytask.balancing.base import Balancer, Combination, StepInfo, scatter_present
from polytask.balancing.registry import register_balancer

__all__ = ["ScaleInvariant"]


@register_balancer("scale_invariant")
class ScaleInvariant(Balancer):
    """``L = Σ_i log L_i`` over the present tasks."""

    family = "loss"
    reference = (
        "Navon et al. 2022, Multi-Task Learning as a Bargaining Game, ICML (SI baseline); "
        "Lin et al. 2023, Dual-Balancing for Multi-Task Learning (loss-scale balancing)"
    )

    def combine(self, step: StepInfo) -> Combination:
        require_positive_losses(
            "scale_invariant", step.step, self.task_names, step.losses, step.present
        )
        losses = step.losses[step.present]
        loss = torch.log(losses).sum()
        return Combination(weights=scatter_present(1.0 / losses.detach(), step.present), loss=loss)
