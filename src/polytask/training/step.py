"""One training step, top to bottom: the single place where a batch becomes an update.

:func:`train_step` is what :func:`polytask.training.loop.fit` calls for every batch. It never names
a balancing method: the engine's strategy (:mod:`polytask.balancing.strategies`) provides what the
balancer declared. Every collective call it makes under DDP is in :mod:`polytask.collectives`;
mixed precision (autocast, fp16 loss scaling) is :class:`~polytask.training.precision.Precision`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from polytask.balancing.engine import GradientEngine, StepOutput
from polytask.data.base import Batch
from polytask.data.batch import Inputs, move_to
from polytask.training.precision import Precision

__all__ = ["move_batch", "train_step"]


def move_batch(batch: Batch, device: torch.device) -> tuple[Inputs, dict[str, Tensor]]:
    """The batch on ``device``; asynchronous on CUDA (it overlaps with compute from pinned memory,
    and costs nothing otherwise: a copy from pageable memory is synchronous either way)."""
    x, y = batch
    non_blocking = device.type == "cuda"
    return (
        move_to(x, device, non_blocking),
        {k: v.to(device, non_blocking=non_blocking) for k, v in y.items()},
    )


def train_step(
    engine: GradientEngine,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    step: int,
    epoch: int,
    *,
    device: torch.device,
    precision: Precision,
    grad_clip: float | None = None,
    check: Callable[[StepOutput], None] | None = None,
) -> StepOutput | None:
    """One update of ``engine.model`` (and the balancer) on ``batch``.

    Returns the step's losses, presence, label counts and applied weights, or ``None`` (nothing
    touched) when no task has a label in the batch on any rank. ``check`` sees the output before
    the update is applied: the loop stops a diverged run there, with the model unchanged.
    ``out.skipped`` says that the fp16 scaler skipped the update (inf/NaN gradients).
    """
    x, y = move_batch(batch, device)
    optimizer.zero_grad(set_to_none=True)
    with precision.autocast():
        forward = engine.forward(x)  # outputs (and the shared representation if needed)
    losses = engine.losses(forward, y, step, epoch)  # float32, masked; DDP: one all-reduce
    if losses is None:
        return None  # no label anywhere: every rank skips this batch together
    applied = engine.gradients(losses, precision.loss_scale())  # the strategy writes .grad
    out = engine.reduce_gradients(losses, applied)  # DDP: one flat all-reduce of .grad
    if check is not None:
        check(out)
    precision.unscale_(optimizer)  # fp16: true gradients before clipping
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(engine.model.parameters(), grad_clip)
    out.skipped = not precision.step(optimizer)  # fp16: inf/NaN updates skipped by the scaler
    if not out.skipped:
        engine.after_step(x, y)  # only for balancers that asked for the losses after the update
    return out
