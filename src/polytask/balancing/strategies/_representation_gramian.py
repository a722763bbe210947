"""``Needs(source="representation")``: weights from the representation Gramian, in every mode.

For a method *defined* on the shared representation (MGDA-UB), so that its weights do not depend
on a run setting. ``R`` holds each present task's gradient w.r.t. the representation (one small
backward per head, which also gives the task parameters their own gradients); the balancer weighs
``R Rᵀ`` (float32 at least); by the chain rule ``J = R ∂rep/∂θ``, so the update of the shared
parameters ``wᵀ J`` is one backward of ``wᵀ R`` through the trunk. The rows are this rank's
samples, so under exact DDP the global Gramian is the sum of the local ones.
"""

from __future__ import annotations

from typing import ClassVar

from polytask.balancing.strategies._common import (
    Applied,
    ForwardKind,
    StepContext,
    combine,
    overflowed,
    representation_rows,
    skip_update,
    unscaled,
    update_weights,
    widen,
)

__all__ = ["RepresentationGramianStrategy"]


class RepresentationGramianStrategy:
    """``w`` from ``R Rᵀ``; the update ``wᵀ J`` by one backward of ``wᵀ R`` through the trunk."""

    sums_shared: ClassVar[bool] = False

    def __init__(self, *, detached: bool) -> None:
        #: representation mode: the heads read a detached copy; other modes: split forward
        self.forward: ForwardKind = "detached" if detached else "split"

    def apply(self, ctx: StepContext) -> Applied:
        info, rep = ctx.info, ctx.rep
        assert rep is not None  # validated: the model has one shared representation
        rows = representation_rows(ctx, ctx.rep_in if ctx.rep_in is not None else rep)
        wide = unscaled(widen(rows), ctx.grad_scale)
        info.gramian = ctx.collectives.sum_exact(wide @ wide.T)
        if overflowed(ctx, info.gramian):  # fp16 only
            return skip_update(ctx)
        combination = combine(ctx)
        weights = update_weights(ctx, combination)[info.present].to(rows)
        rep.backward((weights @ rows).view_as(rep))
        return Applied(combination)
