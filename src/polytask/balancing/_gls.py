"""Geometric Loss Strategy, GLS (Chennupati, Sistu, Yogamani & Rawashdeh 2019).

The combined loss is the geometric mean of the present tasks' losses,
``L = (Π_i L_i)^(1/T) = exp((1/T) Σ_i log L_i)``, computed in the log-sum form (torchjd's
``GeometricMean``). Its gradient weights each task by ``∂L/∂L_i = L / (T · L_i)``: tasks with a small
loss get a large weight, which makes the update invariant to the scale of each loss. These
effective weights are what we report. Every present loss must be finite and strictly positive
(the logarithm); otherwise a :class:`~polytask.balancing.base.BalancerError` names the task.
"""

from __future__ import annotations

from torchjd.scalarization import GeometricMean

from polytask.balancing._common import require_positive_losses
from polytask.balancing.base import Balancer, Combination, StepInfo, scatter_present
from polytask.balancing.registry import register_balancer

__all__ = ["GLS"]


@register_balancer("gls")
class GLS(Balancer):
    """``L = (Π_i L_i)^(1/T)`` over the present tasks."""

    family = "loss"
    reference = (
        "Chennupati, Sistu, Yogamani & Rawashdeh 2019, MultiNet++: Multi-Stream Feature "
        "Aggregation and Geometric Loss Strategy for Multi-Task Learning, CVPR Workshops"
    )

    def combine(self, step: StepInfo) -> Combination:
        require_positive_losses("gls", step.step, self.task_names, step.losses, step.present)
        losses = step.losses[step.present]
        loss = GeometricMean()(losses)
        effective = loss.detach() / (losses.numel() * losses.detach())
        return Combination(weights=scatter_present(effective, step.present), loss=loss)
