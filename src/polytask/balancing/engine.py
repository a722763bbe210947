"""The gradient engine: from a batch to ``.grad`` on every parameter, as the balancer asked.

One object owns the forward pass, the masked task losses and whatever gradient information the
balancer declared (:class:`~polytask.balancing.base.Needs`), computed once:

``mode="jacobian"``
    the per-task Jacobian of the shared parameters (``torchjd.autojac.jac``, batched backward,
    ``chunk_size`` rows at a time).
``mode="gramian"``
    only ``J Jᵀ`` (``torchjd.autogram.Engine``: the Gramian of the task losses accumulated layer by
    layer, never materialising the whole ``J``). Enough for every Gramian weighting; a balancer
    that needs ``J`` itself is refused.
``mode="representation"``
    the per-task gradients of the shared representation (the MGDA-UB trick): the balancer's
    direction is then sent through the trunk in one backward pass.

A balancer that declares ``Needs(source="representation")`` (MGDA-UB) gets the Gramian of the
representation gradients in every mode, and its weights ``w`` are applied to the parameters: the
update is ``wᵀ J``, sent through the trunk in one backward pass.

Task-specific parameters always receive the gradient of their own task's loss; the balancer decides
the update of the shared part. Under torch.distributed two modes exist: ``exact`` reproduces the
single-process update on the global batch (losses, Jacobians or Gramians are summed across ranks
before the balancer sees them) and ``cheap`` averages the weights of the local balancers. Every
incompatible combination raises :class:`EngineError` at construction, saying why.

Distributed details (see ``docs/distributed.md``). Every rank makes the same collective calls in the
same order whatever its data: per step one all-reduce of ``[label counts, label-weighted loss
sums]``, then (exact) the Jacobian or the representation Gramian, or (cheap) the balancers' weights
with an error flag, then one flat all-reduce of the parameter gradients. ``cheap`` gives each local
balancer only the tasks labelled *on its rank* (a globally present task without a label here would
be a zero loss and a zero Jacobian row), averages each task's weight over the ranks where it is
present, and averages the resulting gradients; a balancer error on one rank is raised on every rank
instead of leaving the others blocked in the next collective.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from polytask.balancing.base import Balancer, BalancerError, Combination, StepInfo
from polytask.data.batch import Inputs, input_device
from polytask.models.base import MultiTaskModel
from polytask.tasks import Task

__all__ = [
    "Communicator",
    "EngineError",
    "EngineMode",
    "GradientEngine",
    "LocalCommunicator",
    "StepOutput",
]

EngineMode = Literal["jacobian", "gramian", "representation"]
DistMode = Literal["exact", "cheap"]


class EngineError(ValueError):
    """A combination of model, balancer and engine settings that cannot work."""


class Communicator:
    """Reductions across processes; the single-process version is the identity."""

    rank: int = 0
    world_size: int = 1

    def sum(self, t: Tensor) -> Tensor:
        return t

    def mean(self, t: Tensor) -> Tensor:
        return t


LocalCommunicator = Communicator


@dataclass
class StepOutput:
    """What one step produced: detached losses (global under exact DDP), presence and weights."""

    losses: Tensor
    present: Tensor
    counts: Tensor
    weights: Tensor


def _flat_cat(tensors: Sequence[Tensor], rows: int) -> Tensor:
    return torch.cat([t.reshape(rows, -1) for t in tensors], dim=1)


def _set_grads(params: Sequence[nn.Parameter], flat: Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        g = flat[offset : offset + n].view_as(p).to(p.dtype)
        p.grad = g.clone() if p.grad is None else p.grad + g
        offset += n


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
        amp: bool = False,
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
        self._validate()
        self.shared = model.shared_parameters()
        self.task_params = {t: model.task_parameters(t) for t in model.task_names}
        self._all_task_params = [p for ps in self.task_params.values() for p in ps]
        self._autogram = None
        if self._gradients != "none" and mode == "gramian" and not self._from_representation:
            from torchjd.autogram import Engine

            # batch_dim=None: the Gramian of the T task losses, layer by layer. (batch_dim=0 would
            # give the per-sample Gramian of all B·T (sample, task) losses, materialising [B·T, P]
            # per-layer Jacobians: B² times the Gramian work, for a sum over the batch after.)
            self._autogram = Engine(*model.shared_modules(), batch_dim=None)
        #: cheap DDP: each task's weight averaged over the ranks where it is present (this step).
        self._mean_weights: Tensor | None = None
        #: a rank-local update direction whose finiteness is checked after the all-reduce.
        self._deferred_check = False
        #: per-step: each task's loss column (before stacking) and d(loss)/d(local loss) under
        #: exact DDP (None otherwise); read by _representation_rows.
        self._columns: list[Tensor] = []
        self._loss_scale: Tensor | None = None
        if self.comm.world_size > 1:
            self._check_replicas()

    @property
    def _gradients(self) -> str:
        return self.balancer.needs.gradients

    @property
    def _from_representation(self) -> bool:
        """The balancer's weights come from the representation Gramian whatever the mode."""
        return self.balancer.needs.source == "representation"

    @property
    def _cheap(self) -> bool:
        return self.comm.world_size > 1 and self.dist_mode == "cheap"

    def _check_replicas(self) -> None:
        """Under DDP every rank must start from the same model and balancer state.

        Rank 0's values are recovered exactly by a sum in which every other rank contributes
        zeros (``x + 0 == x``); a mismatch anywhere is then summed so that every rank raises.
        """
        tensors = [
            t.detach()
            for module in (self.model, self.balancer)
            for t in (*module.parameters(), *module.buffers())
            if t.is_floating_point()
        ]
        if not tensors:
            return
        device = tensors[0].device
        local = torch.cat([t.reshape(-1).to(device=device, dtype=torch.float64) for t in tensors])
        first = self.comm.sum(local if self.comm.rank == 0 else torch.zeros_like(local))
        same = (first == local) | (first.isnan() & local.isnan())
        bad = torch.tensor([0.0 if bool(same.all()) else 1.0], dtype=torch.float64, device=device)
        n_bad = int(self.comm.sum(bad)[0])
        if n_bad > 0:
            raise EngineError(
                f"{n_bad} rank(s) start from other model or balancer values "
                "than rank 0: build the model with the same seed (or load the same checkpoint) on "
                "every rank"
            )

    def _validate(self) -> None:
        need = self._gradients
        name = type(self.balancer).__name__
        if self.mode not in ("jacobian", "gramian", "representation"):
            raise EngineError(f"unknown engine mode {self.mode!r}")
        if self.dist_mode not in ("exact", "cheap"):
            raise EngineError(f"unknown distributed mode {self.dist_mode!r}")
        if need == "none" and self.mode == "representation":
            raise EngineError(
                f"{name} uses loss values only: the representation mode would compute gradients it "
                "never reads; use mode='jacobian' (the default, which costs nothing extra for "
                "loss-based methods)"
            )
        if need == "jacobian" and self.mode == "gramian":
            raise EngineError(
                f"{name} needs the per-task gradients themselves, not only their Gramian; use "
                "mode='jacobian' or mode='representation'"
            )
        if self._from_representation and not self.model.supports_representation_grad:
            raise EngineError(
                f"{name} computes its weights from the gradients of the shared representation "
                f"(in every engine mode), but {type(self.model).__name__} has no single shared "
                "representation (tasks exchange features inside the trunk), so the method is not "
                "defined for it; use a model with one shared representation (hard_sharing, mmoe, "
                "mtan, ple with num_levels=1) or a balancer on the parameters' gradients (mgda)"
            )
        if self.mode == "representation" and not self.model.supports_representation_grad:
            raise EngineError(
                f"{type(self.model).__name__} has no single shared representation (tasks exchange "
                "features inside the trunk), so representation-level gradients would leave part "
                "of the shared network untrained; use mode='jacobian' or 'gramian'"
            )
        distributed = self.comm.world_size > 1
        if distributed and self.dist_mode == "exact" and need != "none":
            if self.mode == "gramian" and not self._from_representation:
                raise EngineError(
                    "exact DDP needs the Gramian of the global Jacobian, which is not the sum of the "
                    "ranks' Gramians; use mode='jacobian', mode='representation' or "
                    "dist_mode='cheap'"
                )
            if self.mode == "representation" and need == "jacobian":
                raise EngineError(
                    f"{name} needs the full representation Jacobian, which is split across ranks "
                    "under DDP; use mode='jacobian' or dist_mode='cheap'"
                )

    # ------------------------------------------------------------------ helpers
    def _generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + step)

    def _sample_losses(
        self, outputs: dict[str, Tensor], targets: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """``[B, T]`` per-sample losses divided by each task's label count, and the counts."""
        cols, counts = [], []
        for task in self.tasks:
            per, count = task.sample_losses(outputs[task.name].float(), targets[task.name])
            cols.append(per / max(count, 1))
            counts.append(count)
        device = cols[0].device
        self._columns = cols  # each task's own loss graph, for _representation_rows
        return torch.stack(cols, dim=1), torch.tensor(counts, dtype=torch.float64, device=device)

    @property
    def _split_forward(self) -> bool:
        """Whether the per-task gradients go through the shared representation.

        Always in representation mode; in jacobian and gramian modes when the model has one shared
        representation (``decode`` uses task-specific parameters only), so that the heads are
        differentiated once per task rather than once per task *and* row (see
        :meth:`_representation_rows`), and only the trunk is differentiated per row. The result is
        the same Jacobian (chain rule).
        """
        return self._gradients != "none" and (
            self.mode == "representation" or self.model.supports_representation_grad
        )

    def _parameter_rows(self, info: StepInfo, rep: Tensor) -> Tensor:
        """``[Tp, P]``: the Jacobian of the shared parameters, through the representation.

        The representation rows (one small backward per head) are sent through the trunk in one
        batched backward (``chunk_size`` rows at a time).
        """
        rows = self._representation_rows(info, rep).view(-1, *rep.shape)
        n = rows.shape[0]
        chunk = self.chunk_size or n
        parts = []
        for start in range(0, n, chunk):
            block = rows[start : start + chunk]
            grads = torch.autograd.grad(
                rep, self.shared, block, retain_graph=True, is_grads_batched=True,
                allow_unused=True,
            )
            parts.append(
                torch.cat(
                    [
                        (g if g is not None else p.new_zeros(block.shape[0], *p.shape)).reshape(
                            block.shape[0], -1
                        )
                        for g, p in zip(grads, self.shared, strict=True)
                    ],
                    dim=1,
                )
            )
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _representation_rows(self, info: StepInfo, rep: Tensor) -> Tensor:
        """``[Tp, rep.numel()]``: the gradient of each present task's loss w.r.t. ``rep``.

        One small backward per task, from that task's own loss before the losses are stacked, so
        only that task's head is traversed. (A batched backward of the stacked loss vector runs
        every head for every row: T² head backwards instead of T.) The same backward also gives
        the task's own parameters their gradient (accumulated into ``.grad``), which replaces
        :meth:`_task_backward` on this path.
        """
        rows = []
        for i in info.present_index.tolist():
            column = self._columns[i]
            params = self.task_params[self.tasks[i].name]
            grads: Sequence[Tensor | None] = [None] * (1 + len(params))
            if column.requires_grad:
                grads = torch.autograd.grad(
                    column.sum(), [rep, *params], retain_graph=True, allow_unused=True
                )
            grad = grads[0]
            if grad is None:  # this task's loss does not depend on rep (or has no label here)
                grad = torch.zeros_like(rep)
            scale = None if self._loss_scale is None else self._loss_scale[i]
            if scale is not None:  # exact DDP: losses = share * local losses
                grad = grad * scale.to(grad.dtype)
            rows.append(grad.reshape(-1))
            for p, g in zip(params, grads[1:], strict=True):
                if g is None:
                    continue
                if scale is not None:
                    g = g * scale.to(g.dtype)
                p.grad = g if p.grad is None else p.grad + g
        return torch.stack(rows)

    def forward_losses(
        self, x: Inputs, targets: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Forward pass; returns per-sample losses, counts, the representation (representation mode,
        and gramian mode when the model has one) and its detached copy (representation mode)."""
        device_type = input_device(x).type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.amp):
            if self.mode == "representation" and self._gradients != "none":
                rep = self.model.encode(x)
                rep_in = rep.detach().requires_grad_(True)
                outputs = self.model.decode(rep_in, x)
            elif self._split_forward:
                rep = self.model.encode(x)
                rep_in = None
                outputs = self.model.decode(rep, x)
            else:
                rep = rep_in = None
                outputs = self.model(x)
        per_sample, counts = self._sample_losses(outputs, targets)
        return per_sample, counts, rep, rep_in

    # ------------------------------------------------------------------ the step
    def backward(
        self, x: Inputs, targets: dict[str, Tensor], step: int, epoch: int
    ) -> StepOutput | None:
        """Forward, losses, gradients: afterwards every parameter's ``.grad`` holds the update.

        Returns ``None`` (and touches no gradient) when no task has a label in the batch (on any
        rank under DDP: every rank returns ``None`` together).
        """
        per_sample, counts, rep, rep_in = self.forward_losses(x, targets)
        local_losses = per_sample.sum(dim=0)
        distributed = self.comm.world_size > 1
        exact = distributed and self.dist_mode == "exact"
        cheap = distributed and not exact
        global_means = local_losses.detach()
        if distributed:
            # One all-reduce: every rank's label counts and label-weighted loss sums.
            t = len(self.tasks)
            stats = self.comm.sum(torch.cat([counts, local_losses.detach().double() * counts]))
            global_counts = stats[:t]
            global_means = (stats[t:] / global_counts.clamp(min=1)).to(local_losses.dtype)
        else:
            global_counts = counts
        present = global_counts > 0
        if not bool(present.any()):
            return None  # no task labelled anywhere in this batch: nothing to learn from it
        self._loss_scale = None
        if exact:
            # Surrogate losses: their value is the global mean loss, their gradient this rank's
            # share of it, so summing gradients over ranks gives the global gradient exactly.
            share = torch.where(present, counts / global_counts.clamp(min=1), 0.0).to(per_sample)
            local_part = local_losses * share
            losses = local_part + (global_means - local_part).detach()
            self._loss_scale = share
        else:
            losses = local_losses
        info = StepInfo(
            losses=losses,
            # cheap: the local balancer sees the tasks labelled on this rank only
            present=counts > 0 if cheap else present,
            step=step,
            epoch=epoch,
            generator=self._generator(step),
        )
        self._deferred_check = False
        if cheap and not bool(info.present.any()):
            combination = self._combine(info)  # no label here: take part in the reductions only
        elif self._gradients == "none":
            combination = self._loss_based(info)
        elif self._from_representation:
            combination = self._representation_weighted(info, rep, rep_in)
        elif self.mode == "gramian":
            combination = self._gramian_based(info, rep)
        else:
            combination = self._jacobian_based(info, rep, rep_in)
        self._reduce_parameter_grads(exact, step)
        weights = combination.weights.detach()
        if cheap:
            assert self._mean_weights is not None
            weights = self._mean_weights.to(weights.dtype)
        return StepOutput(
            losses=global_means if cheap else losses.detach(),
            present=present,
            counts=global_counts,
            weights=weights,
        )

    def _combine(self, info: StepInfo) -> Combination:
        """The balancer's answer; under cheap DDP also the weights averaged across ranks.

        Cheap DDP runs one balancer per rank on that rank's data, so a balancer may fail on one
        rank only; the failure travels with the weights' all-reduce and every rank raises, instead
        of the other ranks waiting forever in their next collective.
        """
        if not self._cheap:
            return self.balancer.combine(info)
        combination: Combination | None = None
        error: Exception | None = None
        if bool(info.present.any()):
            try:
                combination = self.balancer.combine(info)
            except Exception as err:  # re-raised below, once every rank knows
                error = err
        t = len(self.tasks)
        device = info.losses.device
        here = info.present.to(device=device, dtype=torch.float64)
        local = torch.zeros(t, dtype=torch.float64, device=device)
        if combination is not None:
            w = combination.weights.detach().to(device=device, dtype=torch.float64)
            local = torch.where(info.present.to(device), w, 0.0)
        failed = torch.tensor([0.0 if error is None else 1.0], dtype=torch.float64, device=device)
        stats = self.comm.sum(torch.cat([local, here, failed]))
        if float(stats[-1]) > 0:
            if error is not None:
                raise error
            raise BalancerError(
                f"{type(self.balancer).__name__} failed on another rank at step {info.step} "
                "(cheap DDP runs one balancer per rank); see that rank's error"
            )
        self._mean_weights = stats[:t] / stats[t : 2 * t].clamp(min=1)
        if combination is None:  # this rank had no label: it contributes zero gradients
            combination = Combination(weights=self._mean_weights.clone())
        return combination

    def _loss_based(self, info: StepInfo) -> Combination:
        combination = self._combine(info)
        if combination.loss is None:
            raise BalancerError(f"{type(self.balancer).__name__} returned no loss to backpropagate")
        combination.loss.backward()
        return combination

    def _gramian_based(self, info: StepInfo, rep: Tensor | None) -> Combination:
        """Local Gramian [Tp, Tp] of the shared parameters' Jacobian, never materialising it.

        Under DDP only cheap mode gets here (exact DDP refuses this mode: the global Gramian has
        cross-rank terms), and its balancers work on their rank's data. With a shared
        representation ``rep``, its per-task gradients ``R`` (one small backward per head) give
        the surrogate outputs ``s = R · rep``, whose Jacobian w.r.t. the shared parameters is ``J``
        (chain rule): the autogram engine then only differentiates through the trunk, and the
        update is ``rep.backward(wᵀR)``.
        """
        assert self._autogram is not None
        present_losses = info.losses[info.present]
        if rep is not None:
            rows = self._representation_rows(info, rep).to(rep.dtype)
            info.gramian = self._autogram.compute_gramian(rows @ rep.reshape(-1))
            combination = self._combine(info)
            weights = self._weights_for_update(combination)[info.present].to(rows)
            rep.backward((weights @ rows).view_as(rep))  # task parameters: done with the rows
            return combination
        info.gramian = self._autogram.compute_gramian(present_losses)
        combination = self._combine(info)
        weights = self._weights_for_update(combination)
        torch.autograd.backward(
            present_losses,
            grad_tensors=weights[info.present].to(present_losses),
            inputs=self.shared,
            retain_graph=bool(self._all_task_params),
        )
        self._task_backward(present_losses)
        return combination

    def _representation_weighted(
        self, info: StepInfo, rep: Tensor | None, rep_in: Tensor | None
    ) -> Combination:
        """Weights from the representation Gramian ``R Rᵀ``; the update of the shared part ``wᵀ J``.

        ``R`` holds each present task's gradient with respect to the representation (one small
        backward per head, which also gives the task parameters their own gradients). By the chain
        rule ``J = R ∂rep/∂θ``, so ``wᵀ J`` is one backward of ``wᵀ R`` through the trunk: the weighted
        sum of the task losses' gradients, at the cost of one backward. The rows are this rank's
        samples, so under exact DDP the global Gramian is the sum of the local ones.
        """
        assert rep is not None  # validated: the model has one shared representation
        rows = self._representation_rows(info, rep_in if rep_in is not None else rep)
        wide = rows.float() if rows.dtype in (torch.float16, torch.bfloat16) else rows
        gramian = wide @ wide.T
        exact = self.comm.world_size > 1 and self.dist_mode == "exact"
        info.gramian = self.comm.sum(gramian) if exact else gramian
        combination = self._combine(info)
        weights = self._weights_for_update(combination)[info.present].to(rows)
        rep.backward((weights @ rows).view_as(rep))
        return combination

    def _jacobian_based(
        self, info: StepInfo, rep: Tensor | None, rep_in: Tensor | None
    ) -> Combination:
        from torchjd.autojac import jac

        present_losses = info.losses[info.present]
        tp = int(info.present.sum())
        targets: list[Tensor] = [rep_in] if rep_in is not None else list(self.shared)
        if rep_in is not None:
            jacobian = self._representation_rows(info, rep_in)
        elif rep is not None:
            jacobian = self._parameter_rows(info, rep)
        elif present_losses.requires_grad:
            parts = jac(
                present_losses, targets, retain_graph=True, parallel_chunk_size=self.chunk_size
            )
            jacobian = _flat_cat(parts, tp)
        else:  # this rank holds no label of any present task: its share of J is zero
            jacobian = targets[0].new_zeros(tp, sum(t.numel() for t in targets))
        distributed = self.comm.world_size > 1
        exact = distributed and self.dist_mode == "exact"
        if rep_in is None:
            if exact:
                jacobian = self.comm.sum(jacobian)
            info.jacobian = jacobian
            info.gramian = jacobian @ jacobian.T
        else:
            # Representation rows are this rank's samples: J's columns are split across ranks,
            # so the global Gramian is the sum of the local ones (no cross terms).
            info.jacobian = jacobian
            gramian = jacobian @ jacobian.T
            info.gramian = self.comm.sum(gramian) if exact else gramian
        combination = self._combine(info)
        if combination.direction is not None:
            # Cheap DDP: the local directions are averaged with the gradients in
            # _reduce_parameter_grads (a representation direction is per sample: it must never be
            # averaged across ranks, whose rows are different samples).
            direction = combination.direction
        else:
            direction = self._weights_for_update(combination)[info.present].to(jacobian) @ jacobian
        if distributed and (not exact or rep_in is not None):
            self._deferred_check = True  # rank-local: checked on the reduced gradients instead
        elif not torch.isfinite(direction).all():
            raise BalancerError(
                f"{type(self.balancer).__name__} produced a non-finite update at step {info.step}"
            )
        if rep_in is None:
            _set_grads(self.shared, direction)
        else:
            assert rep is not None
            rep.backward(direction.view_as(rep).to(rep.dtype))
        if rep is None:  # otherwise the task parameters got their gradients with the rows
            self._task_backward(present_losses)
        return combination

    def _weights_for_update(self, combination: Combination) -> Tensor:
        weights = combination.weights.detach()
        if self._cheap:
            assert self._mean_weights is not None
            weights = self._mean_weights.to(weights.dtype)
        if not torch.isfinite(weights).all():
            raise BalancerError(
                f"{type(self.balancer).__name__} produced non-finite task weights {weights.tolist()}"
            )
        return weights

    def _task_backward(self, present_losses: Tensor) -> None:
        """Each task's own parameters get the gradient of that task's loss."""
        params = [p for p in self._all_task_params]
        if params and present_losses.requires_grad:
            torch.autograd.backward(present_losses.sum(), inputs=params)

    def _reduce_parameter_grads(self, exact: bool, step: int) -> None:
        """All-reduce the gradients: SUM (exact) or MEAN (cheap); balancer parameters: MEAN.

        One flat all-reduce per (device, dtype) instead of one per parameter. In exact jacobian
        mode the shared gradients were set from the summed Jacobian and are skipped.
        """
        if self.comm.world_size == 1:
            return
        shared_done = (
            exact
            and self._gradients != "none"
            and self.mode == "jacobian"
            and not self._from_representation
        )
        shared_ids = {id(p) for p in self.shared}
        model_params = [
            p
            for p in self.model.parameters()
            if p.requires_grad and not (shared_done and id(p) in shared_ids)
        ]
        balancer_params = [p for p in self.balancer.parameters() if p.requires_grad]
        summed = {id(p) for p in model_params} if exact else set()
        groups: dict[tuple[torch.device, torch.dtype], list[nn.Parameter]] = {}
        for p in [*model_params, *balancer_params]:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p)
        finite = True
        for params in groups.values():
            flat = self.comm.sum(torch.cat([p.grad.reshape(-1) for p in params]))
            finite = finite and bool(torch.isfinite(flat).all())
            offset = 0
            for p in params:
                g = flat[offset : offset + p.numel()].view_as(p)
                p.grad = g if id(p) in summed else g / self.comm.world_size
                offset += p.numel()
        if self._deferred_check and not finite:  # the reduced values: every rank agrees
            raise BalancerError(
                f"{type(self.balancer).__name__} produced a non-finite update at step {step}"
            )

    @torch.no_grad()
    def after_step(self, x: Inputs, targets: dict[str, Tensor]) -> None:
        """The extra forward some balancers ask for: losses on the same batch after the update.

        Exact DDP hands every rank's balancer the global mean losses; cheap DDP hands each local
        balancer its own rank's losses, as it saw them in ``combine``.
        """
        if not self.balancer.needs.after_step:
            return
        outputs = self.model(x)
        per_sample, counts = self._sample_losses(outputs, targets)
        losses = per_sample.sum(dim=0)
        present = counts > 0
        if self.comm.world_size > 1 and self.dist_mode == "exact":
            t = len(self.tasks)
            stats = self.comm.sum(torch.cat([counts, losses.double() * counts]))
            present = stats[:t] > 0
            losses = (stats[t:] / stats[:t].clamp(min=1)).to(losses.dtype)
        elif self._cheap and not bool(present.any()):
            return  # this rank had no label: its balancer did not take part in the step
        self.balancer.after_step(losses, present)
