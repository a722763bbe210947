"""What every gradient strategy shares: the step's context and the few operations they compose.

A strategy (one module each) is a short recipe over these pieces: ask the balancer through
:func:`combine`, take the weights it may apply through :func:`update_weights`, get per-task gradients
of the shared representation through :func:`representation_rows` (and of the shared parameters
through :func:`parameter_rows`), and write ``.grad``. Keeping them here means the DDP and fp16
rules (shares of the global loss, loss scaling, cheap-mode averaging) are written once.

fp16 loss scaling (``StepContext.grad_scale``): what is *differentiated* is the loss times the
scale, so that small gradients survive the fp16 backward; what the *balancer reads* (Jacobian,
Gramian, losses) is unscaled, so that its weights do not depend on the scaler's state (most
methods are not scale-invariant). Both conversions are exact: the scale is a power of two. Without
a scale every helper returns its input unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from polytask.balancing.base import Balancer, BalancerError, Combination, StepInfo
from polytask.collectives import Collectives

__all__ = [
    "Applied",
    "ForwardKind",
    "ModelParams",
    "StepContext",
    "combine",
    "overflowed",
    "parameter_rows",
    "representation_rows",
    "scaled",
    "set_grads",
    "skip_update",
    "task_backward",
    "unscaled",
    "update_weights",
    "widen",
]

#: ``whole``: ``model(x)``; ``split``: ``decode(encode(x))`` with the representation kept;
#: ``detached``: the heads read a detached copy of the representation (``rep_in``).
ForwardKind = Literal["whole", "split", "detached"]


@dataclass(frozen=True)
class ModelParams:
    """The model's parameters as the strategies split them: shared, and each task's (task order)."""

    task_names: list[str]
    shared: list[nn.Parameter]
    per_task: list[list[nn.Parameter]]

    @property
    def all_task(self) -> list[nn.Parameter]:
        return [p for params in self.per_task for p in params]


@dataclass
class StepContext:
    """One step as a strategy sees it.

    ``info.losses`` are the task losses the balancer reads (under exact DDP, surrogates whose value
    is the global mean and whose gradient is this rank's share). ``per_sample`` (``[B, T]``, each
    column summing to its task's local mean loss) and ``outputs`` are the graph the representation
    rows are taken from; ``shares`` is d(loss)/d(local loss) per task under exact DDP (``None``
    otherwise); ``rep`` the shared representation (split forward) and ``rep_in`` its detached copy
    that the heads read (representation forward).
    """

    info: StepInfo
    balancer: Balancer
    collectives: Collectives
    params: ModelParams
    outputs: dict[str, Tensor]
    per_sample: Tensor
    rep: Tensor | None = None
    rep_in: Tensor | None = None
    shares: Tensor | None = None
    grad_scale: Tensor | None = None
    #: cheap DDP: each task's weight averaged over the ranks where it is present (set by combine)
    mean_weights: Tensor | None = None

    @property
    def name(self) -> str:
        return type(self.balancer).__name__


@dataclass
class Applied:
    """What a strategy did: the balancer's answer, and whether its update is rank-local.

    A rank-local update (cheap DDP, or a direction on the representation, which is per sample) is
    checked for finiteness after the all-reduce instead, where every rank sees the same values.
    """

    combination: Combination
    deferred_check: bool = False
    #: fp16: the gradients carry the loss scale, so a non-finite reduced value is the grad
    #: scaler's to handle (it skips the update), not a balancer error
    scaled: bool = False
    #: the weights to log: under cheap DDP the averaged ones (set by the engine), else ``None``
    weights: Tensor | None = None


# ------------------------------------------------------------------------ fp16 scale and dtypes
def scaled(t: Tensor, scale: Tensor | None) -> Tensor:
    """``t`` times the fp16 loss scale (what is differentiated); ``t`` itself without one."""
    return t if scale is None else t * scale.to(t.dtype)


def unscaled(t: Tensor, scale: Tensor | None, power: int = 1) -> Tensor:
    """``t`` divided by ``scale ** power`` (what the balancer reads); ``t`` itself without one."""
    return t if scale is None else t / scale.to(t.dtype) ** power


def widen(t: Tensor) -> Tensor:
    """float16 / bfloat16 -> float32: balancer math (Gramians, solvers) never runs in half."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


# ------------------------------------------------------------------------ the balancer's answer
def combine(ctx: StepContext, *, ask: bool = True) -> Combination:
    """The balancer's answer; under cheap DDP also the weights averaged across ranks.

    Cheap DDP runs one balancer per rank on that rank's data, so a balancer may fail on one rank
    only; the failure travels with the weights' all-reduce and every rank raises, instead of the
    other ranks waiting forever in their next collective. ``ask=False`` (an fp16 overflow, see
    :func:`skip_update`) takes part in that all-reduce like a rank without labels.
    """
    info = ctx.info
    if not ctx.collectives.cheap:
        return ctx.balancer.combine(info) if ask else Combination(torch.zeros_like(info.losses))
    combination: Combination | None = None
    error: Exception | None = None
    if ask and bool(info.present.any()):
        try:
            combination = ctx.balancer.combine(info)
        except Exception as err:  # re-raised below, once every rank knows
            error = err
    weights = None if combination is None else combination.weights
    present = info.present.to(info.losses.device)
    if not ask:
        present = torch.zeros_like(present)
    mean, failed = ctx.collectives.average_weights(weights, present, error is not None)
    if failed:
        if error is not None:
            raise error
        raise BalancerError(
            f"{ctx.name} failed on another rank at step {info.step} (cheap DDP runs one "
            "balancer per rank); see that rank's error"
        )
    ctx.mean_weights = mean
    if combination is None:  # this rank had no label: it contributes zero gradients
        combination = Combination(weights=mean.clone())
    return combination


def overflowed(ctx: StepContext, *tensors: Tensor) -> bool:
    """fp16: whether the scaled backward overflowed in what the balancer would read.

    The grad scaler handles an overflow after the fact (it skips the update and lowers the scale),
    but a balancer must never see an infinite Jacobian or Gramian. Full precision: always
    ``False``, without reading anything back from the device.
    """
    return ctx.grad_scale is not None and not all(bool(torch.isfinite(t).all()) for t in tensors)


def skip_update(ctx: StepContext) -> Applied:
    """fp16 overflow: the balancer is not asked; NaN shared gradients make the scaler skip.

    Under exact DDP the overflow is in the summed Jacobian or Gramian, so every rank takes this
    path; under cheap DDP the NaN reaches every rank through the gradients' all-reduce, so every
    scaler skips the same step (and no rank raises: see ``Applied.scaled``). The logged weights
    are zeros: no weight was applied.
    """
    combination = combine(ctx, ask=False)  # cheap DDP: still one weights' all-reduce
    for p in ctx.params.shared:
        p.grad = torch.full_like(p, float("nan"))
    return Applied(combination, scaled=True)


def update_weights(ctx: StepContext, combination: Combination) -> Tensor:
    """The task weights the update applies (cheap DDP: averaged over ranks), checked finite."""
    weights = combination.weights.detach()
    if ctx.collectives.cheap:
        assert ctx.mean_weights is not None
        weights = ctx.mean_weights.to(weights.dtype)
    if not torch.isfinite(weights).all():
        raise BalancerError(f"{ctx.name} produced non-finite task weights {weights.tolist()}")
    return weights


# ------------------------------------------------------------------------ gradients
def representation_rows(ctx: StepContext, rep: Tensor) -> Tensor:
    """``[Tp, rep.numel()]``: the gradient of each present task's loss w.r.t. ``rep``.

    One backward through the loss graph gives every task's d(loss)/d(output) at once (a task's loss
    depends on its own output only), then one small backward per task through that task's head
    only. (A batched backward of the stacked loss vector would run every head for every row: T²
    head backwards instead of T.) The same backward gives the task's own parameters their gradient
    (accumulated into ``.grad``). Under exact DDP rows and gradients are scaled by the task's share
    of the global loss; under fp16 they carry the loss scale.
    """
    present = ctx.info.present_index.tolist()
    d_out = _output_grads(ctx, present)
    rows = []
    for i in present:
        params = ctx.params.per_task[i]
        grads: Sequence[Tensor | None] = [None] * (1 + len(params))
        if i in d_out:
            out = ctx.outputs[ctx.params.task_names[i]]
            grads = torch.autograd.grad(
                out, [rep, *params], d_out[i].contiguous(), retain_graph=True, allow_unused=True
            )
        grad = grads[0]
        if grad is None:  # this task's loss does not depend on rep (or has no label here)
            grad = torch.zeros_like(rep)
        share = None if ctx.shares is None else ctx.shares[i]
        if share is not None:  # exact DDP: losses = share * local losses
            grad = grad * share.to(grad.dtype)
        rows.append(grad.reshape(-1))
        for p, g in zip(params, grads[1:], strict=True):
            if g is None:
                continue
            if share is not None:
                g = g * share.to(g.dtype)
            p.grad = g if p.grad is None else p.grad + g
    return torch.stack(rows)


def _output_grads(ctx: StepContext, present: list[int]) -> dict[int, Tensor]:
    """Task index -> d(its loss column, summed, times the fp16 scale)/d(its output)."""
    names = ctx.params.task_names
    wanted = [i for i in present if ctx.outputs[names[i]].requires_grad]
    if not wanted:
        return {}
    outs = [ctx.outputs[names[i]] for i in wanted]
    per_sample = ctx.per_sample
    seed = scaled(torch.ones_like(per_sample), ctx.grad_scale)  # as d(column.sum())/d(column)
    if len({id(o) for o in outs}) == len(outs):
        grads = torch.autograd.grad(per_sample, outs, seed, retain_graph=True, allow_unused=True)
    else:  # an output shared by several tasks: one backward per task keeps the losses apart
        grads = tuple(
            torch.autograd.grad(
                per_sample[:, i], [o], seed[:, i], retain_graph=True, allow_unused=True
            )[0]
            for i, o in zip(wanted, outs, strict=True)
        )
    return {i: g for i, g in zip(wanted, grads, strict=True) if g is not None}


def parameter_rows(ctx: StepContext, rep: Tensor, chunk_size: int | None) -> Tensor:
    """``[Tp, P]``: the Jacobian of the shared parameters, through the representation.

    The representation rows (one small backward per head) are sent through the trunk in one
    batched backward (``chunk_size`` rows at a time). By the chain rule this is the Jacobian of
    the losses w.r.t. the shared parameters, with the heads differentiated once per task only.
    """
    rows = representation_rows(ctx, rep).view(-1, *rep.shape)
    shared = ctx.params.shared
    n = rows.shape[0]
    chunk = chunk_size or n
    parts = []
    for start in range(0, n, chunk):
        block = rows[start : start + chunk]
        grads = torch.autograd.grad(
            rep, shared, block, retain_graph=True, is_grads_batched=True, allow_unused=True
        )
        parts.append(
            torch.cat(
                [
                    (g if g is not None else p.new_zeros(block.shape[0], *p.shape)).reshape(
                        block.shape[0], -1
                    )
                    for g, p in zip(grads, shared, strict=True)
                ],
                dim=1,
            )
        )
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def set_grads(params: Sequence[nn.Parameter], flat: Tensor) -> None:
    """Add the flat vector ``flat`` (the shared update) into ``params``' ``.grad``."""
    offset = 0
    for p in params:
        n = p.numel()
        g = flat[offset : offset + n].view_as(p).to(p.dtype)
        p.grad = g.clone() if p.grad is None else p.grad + g
        offset += n


def task_backward(ctx: StepContext, present_losses: Tensor) -> None:
    """Each task's own parameters get the gradient of that task's loss."""
    params = ctx.params.all_task
    if params and present_losses.requires_grad:
        torch.autograd.backward(present_losses.sum(), inputs=params)
