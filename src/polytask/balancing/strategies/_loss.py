"""Loss-based balancers (``Needs(gradients="none")``): one backward of the balancer's scalar loss.

The balancer combines the loss values (learnable weights receive their gradient through the same
backward). Nothing per task is computed: the cost is that of equal weighting.
"""

from __future__ import annotations

from typing import ClassVar

from polytask.balancing.base import BalancerError
from polytask.balancing.strategies._common import (
    Applied,
    ForwardKind,
    StepContext,
    combine,
    scaled,
)

__all__ = ["LossStrategy"]


class LossStrategy:
    """Backpropagate ``Combination.loss``; the whole model runs forward as one call."""

    forward: ClassVar[ForwardKind] = "whole"
    sums_shared: ClassVar[bool] = False

    def apply(self, ctx: StepContext) -> Applied:
        combination = combine(ctx)
        if combination.loss is None:
            raise BalancerError(f"{ctx.name} returned no loss to backpropagate")
        scaled(combination.loss, ctx.grad_scale).backward()
        return Applied(combination)
