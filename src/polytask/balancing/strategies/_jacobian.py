"""``mode="jacobian"``: the per-task Jacobian ``J`` of the shared parameters.

With one shared representation (the model's ``decode`` uses task parameters only) ``J`` is built
through it: each head is differentiated once per task, then the rows go through the trunk in one
batched backward (:func:`parameter_rows`). Otherwise ``torchjd.autojac.jac`` differentiates the
present tasks' losses directly, ``chunk_size`` rows at a time. Under exact DDP ``J`` is summed over
the ranks before the balancer sees it, so the shared parameters' gradient written here is already
the global one (``sums_shared``: the flat all-reduce skips them).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from polytask.balancing.base import BalancerError
from polytask.balancing.strategies._common import (
    Applied,
    ForwardKind,
    StepContext,
    combine,
    overflowed,
    parameter_rows,
    scaled,
    set_grads,
    skip_update,
    task_backward,
    unscaled,
    update_weights,
)

__all__ = ["JacobianStrategy"]


def _flat_cat(tensors: tuple[Tensor, ...], rows: int) -> Tensor:
    return torch.cat([t.reshape(rows, -1) for t in tensors], dim=1)


class JacobianStrategy:
    """Weights or a direction from ``J`` (and ``G = J Jᵀ``); the update ``direction`` or ``wᵀ J``."""

    sums_shared: ClassVar[bool] = True

    def __init__(self, *, split: bool, chunk_size: int | None) -> None:
        #: "split": encode, then decode from the representation (J through it); else one call
        self.forward: ForwardKind = "split" if split else "whole"
        self.chunk_size = chunk_size

    def apply(self, ctx: StepContext) -> Applied:
        from torchjd.autojac import jac

        info, rep, shared = ctx.info, ctx.rep, ctx.params.shared
        present_losses = scaled(info.losses[info.present], ctx.grad_scale)
        tp = int(info.present.sum())
        if rep is not None:
            jacobian = parameter_rows(ctx, rep, self.chunk_size)
        elif present_losses.requires_grad:
            parts = jac(
                present_losses, list(shared), retain_graph=True,
                parallel_chunk_size=self.chunk_size,
            )  # fmt: skip
            jacobian = _flat_cat(parts, tp)
        else:  # this rank holds no label of any present task: its share of J is zero
            jacobian = shared[0].new_zeros(tp, sum(p.numel() for p in shared))
        jacobian = ctx.collectives.sum_exact(unscaled(jacobian, ctx.grad_scale))
        if overflowed(ctx, jacobian):  # fp16 only
            return skip_update(ctx)
        info.jacobian = jacobian
        info.gramian = jacobian @ jacobian.T
        combination = combine(ctx)
        if combination.direction is not None:
            # Cheap DDP: the local directions are averaged with the gradients in the all-reduce.
            direction = combination.direction
        else:
            direction = update_weights(ctx, combination)[info.present].to(jacobian) @ jacobian
        deferred = ctx.collectives.cheap  # rank-local: checked on the reduced gradients instead
        if not deferred and not torch.isfinite(direction).all():
            raise BalancerError(f"{ctx.name} produced a non-finite update at step {info.step}")
        set_grads(shared, scaled(direction, ctx.grad_scale))
        if rep is None:  # otherwise the task parameters got their gradients with the rows
            task_backward(ctx, present_losses)
        return Applied(combination, deferred_check=deferred)
