"""``mode="representation"``: the per-task gradients of the shared representation (MGDA-UB trick).

The heads read a detached copy ``rep_in`` of the representation; each present task's gradient
w.r.t. it is one small backward through that task's head (:func:`representation_rows`), and these
rows are the balancer's ``J`` (``[Tp, B·D]``). The balancer's direction (or ``wᵀ J``) is then sent
through the trunk in one backward. The rows are this rank's samples, so under DDP the global
Gramian is the sum of the local ones (no cross terms): exact DDP sums the Gramian, and a direction
is never averaged across ranks (it is per sample).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from polytask.balancing.base import BalancerError
from polytask.balancing.strategies._common import (
    Applied,
    ForwardKind,
    StepContext,
    combine,
    overflowed,
    representation_rows,
    scaled,
    skip_update,
    unscaled,
    update_weights,
    widen,
)

__all__ = ["RepresentationStrategy"]


class RepresentationStrategy:
    """Weights or a direction from the representation Jacobian; one backward through the trunk."""

    forward: ClassVar[ForwardKind] = "detached"
    sums_shared: ClassVar[bool] = False

    def apply(self, ctx: StepContext) -> Applied:
        info, rep, rep_in = ctx.info, ctx.rep, ctx.rep_in
        assert rep is not None and rep_in is not None  # the detached forward made them
        jacobian = unscaled(widen(representation_rows(ctx, rep_in)), ctx.grad_scale)
        info.jacobian = jacobian
        info.gramian = ctx.collectives.sum_exact(jacobian @ jacobian.T)
        if overflowed(ctx, info.gramian):  # fp16 only (every rank sees the summed Gramian)
            return skip_update(ctx)
        combination = combine(ctx)
        if combination.direction is not None:
            direction = combination.direction
        else:
            direction = update_weights(ctx, combination)[info.present].to(jacobian) @ jacobian
        deferred = ctx.collectives.distributed  # rank-local rows: checked after the all-reduce
        if not deferred and not torch.isfinite(direction).all():
            raise BalancerError(f"{ctx.name} produced a non-finite update at step {info.step}")
        rep.backward(scaled(direction, ctx.grad_scale).view_as(rep).to(rep.dtype))
        return Applied(combination, deferred_check=deferred)
