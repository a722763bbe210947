"""``mode="gramian"``: only ``G = J Jᵀ``, never ``J`` itself (``torchjd.autogram``).

The autogram engine accumulates the Gramian of the task losses layer by layer over the shared
modules, so memory does not grow with the number of parameters times tasks. Enough for every
Gramian weighting; a balancer that needs ``J`` is refused at construction. With one shared
representation ``rep``, its per-task gradients ``R`` (one small backward per head) give the
surrogate outputs ``s = R · rep``, whose Jacobian w.r.t. the shared parameters is ``J`` (chain
rule): autogram then differentiates the trunk only, and the update is ``rep.backward(wᵀR)``.
Under DDP only cheap mode gets here (exact DDP refuses it: the global Gramian has cross-rank terms).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from polytask.balancing.strategies._common import (
    Applied,
    ForwardKind,
    StepContext,
    combine,
    overflowed,
    representation_rows,
    scaled,
    skip_update,
    task_backward,
    unscaled,
    update_weights,
    widen,
)

__all__ = ["GramianStrategy"]


class GramianStrategy:
    """Weights from the autogram Gramian; the update ``wᵀ J`` by one weighted backward."""

    sums_shared: ClassVar[bool] = False

    def __init__(self, shared_modules: Sequence[nn.Module], *, split: bool) -> None:
        from torchjd.autogram import Engine

        self.forward: ForwardKind = "split" if split else "whole"
        # batch_dim=None: the Gramian of the T task losses, layer by layer. (batch_dim=0 would
        # give the per-sample Gramian of all B·T (sample, task) losses, materialising [B·T, P]
        # per-layer Jacobians: B² times the Gramian work, for a sum over the batch after.)
        self.autogram = Engine(*shared_modules, batch_dim=None)

    def apply(self, ctx: StepContext) -> Applied:
        info, rep, scale = ctx.info, ctx.rep, ctx.grad_scale
        if rep is not None:
            rows = representation_rows(ctx, rep).to(rep.dtype)
            gramian = self.autogram.compute_gramian(rows @ rep.reshape(-1))
            info.gramian = unscaled(widen(gramian), scale, 2)
            if overflowed(ctx, info.gramian):  # fp16 only
                return skip_update(ctx)
            combination = combine(ctx)
            weights = update_weights(ctx, combination)[info.present].to(rows)
            rep.backward((weights @ rows).view_as(rep))  # task parameters: done with the rows
            return Applied(combination)
        present_losses = scaled(info.losses[info.present], scale)
        info.gramian = unscaled(widen(self.autogram.compute_gramian(present_losses)), scale, 2)
        if overflowed(ctx, info.gramian):  # fp16 only
            return skip_update(ctx)
        combination = combine(ctx)
        weights = update_weights(ctx, combination)
        torch.autograd.backward(
            present_losses,
            grad_tensors=weights[info.present].to(present_losses),
            inputs=ctx.params.shared,
            retain_graph=bool(ctx.params.all_task),
        )
        task_backward(ctx, present_losses)
        return Applied(combination)
