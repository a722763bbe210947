"""Equal weighting: the sum of the present tasks' losses. The baseline every method must beat."""

from __future__ import annotations

from polytask.balancing.base import Balancer, Combination, StepInfo
from polytask.balancing.registry import register_balancer


@register_balancer("equal")
class Equal(Balancer):
    """``L = Σ_i L_i`` over the tasks present in the batch (weight 1 each)."""

    family = "loss"
    reference = "Caruana 1997, Multitask Learning (uniform scaling)"

    def combine(self, step: StepInfo) -> Combination:
        weights = step.present.to(step.losses.dtype)
        return Combination(weights=weights, loss=(weights * step.losses).sum())


__all__ = ["Equal"]
