"""The gradient engine: from a batch to ``.grad`` on every parameter, as the balancer asked.

The engine holds what a run fixes once (the model, the tasks, the balancer, the chosen gradient
strategy, the collectives) and offers the step's stages, which
:func:`polytask.training.step.train_step` calls in order:

1. :meth:`GradientEngine.forward`: the model's outputs, and the shared representation when the
   strategy goes through it (the step runs this under autocast);
2. :meth:`GradientEngine.losses`: masked per-sample task losses in float32 (:func:`sample_losses`),
   the global statistics under DDP, and the :class:`~polytask.balancing.base.StepInfo` the
   balancer will read; ``None`` when no task has a label on any rank;
3. :meth:`GradientEngine.gradients`: the strategy (:mod:`polytask.balancing.strategies`) computes
   what the balancer declared, asks it, and writes the update into ``.grad``;
4. :meth:`GradientEngine.reduce_gradients`: under DDP, one flat all-reduce of the gradients.

:meth:`GradientEngine.backward` runs the four for callers that drive their own optimizer (the
balancer tests, the overhead benchmark). Task-specific parameters always receive the gradient of
their own task's loss; the balancer decides the update of the shared part. Incompatible
combinations raise :class:`EngineError` at construction, saying why.

Under ``torch.distributed`` (see ``docs/distributed.md`` and :mod:`polytask.collectives`, where
every collective call lives): ``exact`` reproduces the single-process update on the global batch
(losses, Jacobians or representation Gramians are summed across ranks before the balancer sees
them; surrogate losses carry each rank's share of the global loss) and ``cheap`` averages the
weights of the local balancers, each of which sees only the tasks labelled on its rank.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from polytask.balancing.base import Balancer, BalancerError, StepInfo
from polytask.balancing.strategies import (
    Applied,
    EngineError,
    EngineMode,
    ModelParams,
    StepContext,
    choose_strategy,
    validate,
)
from polytask.balancing.strategies._common import combine
from polytask.collectives import Collectives, Communicator, DistMode, LocalCommunicator
from polytask.data.batch import Inputs, input_device
from polytask.models.base import MultiTaskModel
from polytask.tasks import Task

__all__ = [
    "Communicator",
    "EngineError",
    "EngineMode",
    "Forward",
    "GradientEngine",
    "LocalCommunicator",
    "StepLosses",
    "StepOutput",
    "sample_losses",
]


@dataclass
class StepOutput:
    """What one step produced: detached losses (global under exact DDP), presence and weights.

    ``skipped`` is set by the training step when the fp16 grad scaler found inf/NaN gradients and
    did not apply the update.
    """

    losses: Tensor
    present: Tensor
    counts: Tensor
    weights: Tensor
    skipped: bool = False


@dataclass
class Forward:
    """The model's outputs, and its shared representation when the strategy goes through it.

    ``rep_in`` is the detached copy of ``rep`` that the heads read in the representation forward.
    """

    outputs: dict[str, Tensor]
    rep: Tensor | None = None
    rep_in: Tensor | None = None


@dataclass
class StepLosses:
    """One batch's losses after the DDP statistics: what the strategy and the balancer read.

    ``info.losses`` are the losses the balancer combines (under exact DDP, surrogates: their value
    is the global mean loss, their gradient this rank's share of it); ``counts``, ``means`` and
    ``present`` are global; ``shares`` is each task's d(loss)/d(local loss) under exact DDP.
    """

    info: StepInfo
    forward: Forward
    per_sample: Tensor
    counts: Tensor
    means: Tensor
    present: Tensor
    shares: Tensor | None = None


def sample_losses(
    tasks: Sequence[Task], outputs: dict[str, Tensor], targets: dict[str, Tensor]
) -> tuple[Tensor, Tensor]:
    """``[B, T]`` per-sample losses divided by each task's label count, and the counts (float64).

    The one place the engine computes task losses: each task's
    :meth:`~polytask.tasks.Task.sample_losses`, from float32 outputs. Column ``i`` sums to task
    ``i``'s mean loss over its labelled entries. (:func:`polytask.losses.normalized_sample_losses`
    gives the same loss values in fewer kernels, but not the same gradients to the last bit: an
    elementwise backward on tasks stacked side by side rounds some elements differently, and a
    head reducing a strided gradient sums in another order. Runs must not change, so the engine
    keeps this loop until the batched gradients are identical.)
    """
    cols, counts = [], []
    for task in tasks:
        per, count = task.sample_losses(outputs[task.name].float(), targets[task.name])
        cols.append(per / max(count, 1))
        counts.append(count)
    device = cols[0].device
    return torch.stack(cols, dim=1), torch.tensor(counts, dtype=torch.float64, device=device)


class GradientEngine:
    """Computes what ``balancer`` needs and writes the resulting gradients into ``.grad``."""

    def __init__(
        self,
        model: MultiTaskModel,
        tasks: Sequence[Task],
        balancer: Balancer,
        *,
        mode: EngineMode = "jacobian",
        chunk_size: int | None = None,
        communicator: Communicator | None = None,
        dist_mode: DistMode = "exact",
        seed: int = 0,
        amp: bool | str = False,
    ) -> None:
        self.model = model
        self.tasks = list(tasks)
        self.balancer = balancer
        self.mode = mode
        self.chunk_size = chunk_size
        self.comm = communicator or Communicator()
        self.dist_mode = dist_mode
        self.seed = seed
        self.amp = amp
        if [t.name for t in self.tasks] != model.task_names:
            raise EngineError(
                f"task order differs between the model {model.task_names} and the engine "
                f"{[t.name for t in self.tasks]}"
            )
        if balancer.task_names != model.task_names:
            raise EngineError(
                f"balancer tasks {balancer.task_names} differ from model tasks {model.task_names}"
            )
        if amp not in (False, True, "bf16"):
            raise EngineError(
                f"GradientEngine(amp={amp!r}): the engine alone autocasts to bfloat16 only "
                "(amp=True or 'bf16'); fp16 needs loss scaling, which train_step does with its "
                "GradScaler (polytask.training.step)"
            )
        validate(
            balancer.needs, mode, model, balancer_name=type(balancer).__name__,
            dist_mode=dist_mode, world_size=self.comm.world_size,
        )  # fmt: skip
        self.params = ModelParams(
            task_names=list(model.task_names),
            shared=model.shared_parameters(),
            per_task=[model.task_parameters(t) for t in model.task_names],
        )
        self.strategy = choose_strategy(balancer.needs, mode, model, chunk_size=chunk_size)
        self.collectives = Collectives(self.comm, dist_mode)
        n_bad = self.collectives.mismatched_replicas([model, balancer])
        if n_bad > 0:
            raise EngineError(
                f"{n_bad} rank(s) start from other model or balancer values "
                "than rank 0: build the model with the same seed (or load the same checkpoint) on "
                "every rank"
            )

    @property
    def shared(self) -> list[torch.nn.Parameter]:
        return self.params.shared

    def _generator(self, step: int) -> torch.Generator:
        """The balancer's randomness: seeded by (seed, step), identical on every rank."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + step)

    # ------------------------------------------------------------------ the step's stages
    def forward(self, x: Inputs) -> Forward:
        """Run the model as the strategy needs it (whole, or split at the shared representation)."""
        kind = self.strategy.forward
        if kind == "whole":
            return Forward(self.model(x))
        rep = self.model.encode(x)
        if kind == "detached":
            rep_in = rep.detach().requires_grad_(True)
            return Forward(self.model.decode(rep_in, x), rep, rep_in)
        return Forward(self.model.decode(rep, x), rep)

    def losses(
        self, forward: Forward, targets: dict[str, Tensor], step: int, epoch: int
    ) -> StepLosses | None:
        """Masked float32 losses, global statistics (one all-reduce under DDP), the StepInfo.

        Returns ``None`` when no task has a label in the batch (on any rank under DDP: every rank
        returns ``None`` together).
        """
        per_sample, counts = sample_losses(self.tasks, forward.outputs, targets)
        local_losses = per_sample.sum(dim=0)
        collectives = self.collectives
        global_counts, global_means = collectives.loss_statistics(counts, local_losses.detach())
        present = global_counts > 0
        if not bool(present.any()):
            return None  # no task labelled anywhere in this batch: nothing to learn from it
        shares = None
        losses = local_losses
        if collectives.exact:
            # Surrogate losses: their value is the global mean loss, their gradient this rank's
            # share of it, so summing gradients over ranks gives the global gradient exactly.
            shares = torch.where(present, counts / global_counts.clamp(min=1), 0.0).to(per_sample)
            local_part = local_losses * shares
            losses = local_part + (global_means - local_part).detach()
        info = StepInfo(
            losses=losses,
            # cheap: the local balancer sees the tasks labelled on this rank only
            present=counts > 0 if collectives.cheap else present,
            step=step,
            epoch=epoch,
            generator=self._generator(step),
        )
        return StepLosses(info, forward, per_sample, global_counts, global_means, present, shares)

    def gradients(self, losses: StepLosses, grad_scale: Tensor | None = None) -> Applied:
        """The strategy's update in ``.grad`` (times ``grad_scale``, the fp16 loss scale, if any)."""
        ctx = StepContext(
            info=losses.info,
            balancer=self.balancer,
            collectives=self.collectives,
            params=self.params,
            outputs=losses.forward.outputs,
            per_sample=losses.per_sample,
            rep=losses.forward.rep,
            rep_in=losses.forward.rep_in,
            shares=losses.shares,
            grad_scale=grad_scale,
        )
        if self.collectives.cheap and not bool(ctx.info.present.any()):
            applied = Applied(combine(ctx))  # no label here: take part in the reductions only
        else:
            applied = self.strategy.apply(ctx)
        applied.scaled = grad_scale is not None
        if self.collectives.cheap:
            assert ctx.mean_weights is not None
            applied.weights = ctx.mean_weights.to(applied.combination.weights.dtype)
        return applied

    def reduce_gradients(self, losses: StepLosses, applied: Applied) -> StepOutput:
        """DDP: all-reduce ``.grad`` (SUM exact, MEAN cheap; balancer parameters MEAN); the output.

        Under exact DDP a strategy that summed the Jacobian already wrote the global shared
        gradient: those parameters are skipped. A rank-local update is checked for finiteness
        here, on the reduced values, so that every rank raises together.
        """
        collectives = self.collectives
        if collectives.distributed:
            skip = collectives.exact and self.strategy.sums_shared
            shared_ids = {id(p) for p in self.params.shared} if skip else set()
            model_params = [
                p for p in self.model.parameters() if p.requires_grad and id(p) not in shared_ids
            ]
            balancer_params = [p for p in self.balancer.parameters() if p.requires_grad]
            finite = collectives.reduce_gradients(
                [*model_params, *balancer_params],
                summed=model_params if collectives.exact else (),
            )
            # the reduced values: every rank agrees (fp16: the grad scaler skips the update)
            if applied.deferred_check and not finite and not applied.scaled:
                raise BalancerError(
                    f"{type(self.balancer).__name__} produced a non-finite update at step "
                    f"{losses.info.step}"
                )
        weights = applied.weights
        if weights is None:
            weights = applied.combination.weights.detach()
        return StepOutput(
            losses=losses.means if collectives.cheap else losses.info.losses.detach(),
            present=losses.present,
            counts=losses.counts,
            weights=weights,
        )

    # ------------------------------------------------------------------ all stages at once
    def backward(
        self, x: Inputs, targets: dict[str, Tensor], step: int, epoch: int
    ) -> StepOutput | None:
        """Forward, losses, gradients: afterwards every parameter's ``.grad`` holds the update.

        Returns ``None`` (and touches no gradient) when no task has a label in the batch (on any
        rank under DDP: every rank returns ``None`` together). With ``amp`` the forward runs under
        bfloat16 autocast.
        """
        autocast = (
            torch.autocast(input_device(x).type, dtype=torch.bfloat16)
            if self.amp
            else contextlib.nullcontext()
        )
        with autocast:
            forward = self.forward(x)
        losses = self.losses(forward, targets, step, epoch)
        if losses is None:
            return None
        return self.reduce_gradients(losses, self.gradients(losses))

    @torch.no_grad()
    def after_step(self, x: Inputs, targets: dict[str, Tensor]) -> None:
        """The extra forward some balancers ask for: losses on the same batch after the update.

        Exact DDP hands every rank's balancer the global mean losses; cheap DDP hands each local
        balancer its own rank's losses, as it saw them in ``combine``.
        """
        if not self.balancer.needs.after_step:
            return
        per_sample, counts = sample_losses(self.tasks, self.model(x), targets)
        losses = per_sample.sum(dim=0)
        present = counts > 0
        if self.collectives.exact:
            counts, losses = self.collectives.loss_statistics(counts, losses)
            present = counts > 0
        elif self.collectives.cheap and not bool(present.any()):
            return  # this rank had no label: its balancer did not take part in the step
        self.balancer.after_step(losses, present)
