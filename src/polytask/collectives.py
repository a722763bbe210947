"""Every collective call of a training step under ``torch.distributed``, in one place.

Why one module: a rank that makes one collective call more, or fewer, or in another order than
its peers blocks them all forever. Keeping every call here makes the invariant checkable by reading
one file: **every rank makes the same collective calls in the same order whatever its data.** Per
step (:mod:`polytask.training.step`), in this order:

1. :meth:`Collectives.loss_statistics`: one all-reduce of ``[label counts, label-weighted loss
   sums]`` (global mean losses, and which tasks are present anywhere);
2. exact mode: :meth:`Collectives.sum_exact` of the Jacobian (parameter Jacobian mode) or of the
   representation Gramian, once, by the gradient strategy; cheap mode:
   :meth:`Collectives.average_weights` (the balancers' weights, the tasks present on each rank and
   an error flag), once;
3. :meth:`Collectives.reduce_gradients`: one flat all-reduce of the gradients per (device, dtype);
4. for a balancer that asks for the losses after the update under exact DDP, one more
   :meth:`Collectives.loss_statistics`.

At construction the engine calls :meth:`Collectives.mismatched_replicas` once. A rank without any
label still makes every call (with zeros). The calls carry no policy: the caller decides what a
failure means and raises the same error on every rank, because every rank sees the same reduced
values.

The communicators carry the calls: :class:`Communicator` is the single process (the identity),
:class:`TorchDistributedCommunicator` an initialised ``torch.distributed`` process group. This
module depends on torch only, so the gradient engine and the launcher can both import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "Collectives",
    "Communicator",
    "DistMode",
    "LocalCommunicator",
    "TorchDistributedCommunicator",
]

DistMode = Literal["exact", "cheap"]

#: dtypes gloo reduces natively; others are reduced in float32 / int64 and cast back.
_GLOO_DTYPES = {torch.float32, torch.float64, torch.int32, torch.int64, torch.uint8, torch.int8}


class Communicator:
    """Reductions across processes; the single-process version is the identity."""

    rank: int = 0
    world_size: int = 1

    def sum(self, t: Tensor) -> Tensor:
        return t

    def mean(self, t: Tensor) -> Tensor:
        return t


LocalCommunicator = Communicator


class TorchDistributedCommunicator(Communicator):
    """Sums and means across the ranks of an initialised ``torch.distributed`` process group.

    ``sum`` returns a new, detached tensor with the input's dtype and device (booleans are summed
    as ``int64`` counts); the input is left untouched. Tensors are moved to where the backend can
    reduce them (CPU for gloo, the current CUDA device for nccl) and back. Reductions are not
    differentiable: the engine builds its surrogate losses around them.
    """

    def __init__(self, group: Any = None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "torch.distributed is not initialised: call init_from_env() (or "
                "torch.distributed.init_process_group) first"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.backend = str(dist.get_backend(group))

    def _work_layout(self, t: Tensor) -> tuple[torch.device, torch.dtype]:
        dtype = t.dtype
        if dtype == torch.bool:
            dtype = torch.int64
        if self.backend == "gloo":
            device = torch.device("cpu")
            if dtype not in _GLOO_DTYPES:
                dtype = torch.float32 if dtype.is_floating_point else torch.int64
        elif self.backend == "nccl":
            device = t.device if t.device.type == "cuda" else torch.device("cuda")
        else:
            device = t.device
        return device, dtype

    def sum(self, t: Tensor) -> Tensor:
        device, dtype = self._work_layout(t)
        buf = t.detach().to(
            device=device, dtype=dtype, copy=True, memory_format=torch.contiguous_format
        )
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.group)
        out_dtype = torch.int64 if t.dtype == torch.bool else t.dtype
        return buf.to(device=t.device, dtype=out_dtype)

    def mean(self, t: Tensor) -> Tensor:
        return self.sum(t) / self.world_size


@dataclass(frozen=True)
class Collectives:
    """The step's collective calls over ``comm``, for the distributed mode ``mode``.

    ``exact`` reproduces the single-process update on the global batch; ``cheap`` averages the
    weights of one balancer per rank. In a single process every call is the identity (and
    :meth:`reduce_gradients` returns at once), so the step reads the same either way.
    """

    comm: Communicator
    mode: DistMode = "exact"

    @property
    def distributed(self) -> bool:
        return self.comm.world_size > 1

    @property
    def exact(self) -> bool:
        return self.distributed and self.mode == "exact"

    @property
    def cheap(self) -> bool:
        return self.distributed and self.mode == "cheap"

    def loss_statistics(self, counts: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """Global ``(label counts, mean losses)`` from this rank's counts and mean losses.

        One all-reduce of the counts and the label-weighted loss sums (float64, so that the
        summed counts are exact); the means come back in ``losses``' dtype. Single process: the
        local values, untouched.
        """
        if not self.distributed:
            return counts, losses
        t = counts.shape[0]
        stats = self.comm.sum(torch.cat([counts, losses.double() * counts]))
        return stats[:t], (stats[t:] / stats[:t].clamp(min=1)).to(losses.dtype)

    def sum_exact(self, t: Tensor) -> Tensor:
        """``t`` summed over the ranks under exact DDP (Jacobians, Gramians); else ``t`` itself."""
        return self.comm.sum(t) if self.exact else t

    def average_weights(
        self, weights: Tensor | None, present: Tensor, failed: bool
    ) -> tuple[Tensor, bool]:
        """Cheap DDP: each task's weight averaged over the ranks where it is present.

        ``weights`` is this rank's balancer answer (``None`` when it had no label or failed);
        ``failed`` says that its balancer raised. One all-reduce carries the weights, the presence
        and the error flag together, so a failure on one rank is known to every rank at the same
        call (the caller raises on all of them instead of leaving the others blocked in the next
        collective). Returns the mean weights (float64) and whether any rank failed.
        """
        t = present.shape[0]
        device = present.device
        here = present.to(dtype=torch.float64)
        local = torch.zeros(t, dtype=torch.float64, device=device)
        if weights is not None:
            w = weights.detach().to(device=device, dtype=torch.float64)
            local = torch.where(present, w, 0.0)
        flag = torch.tensor([1.0 if failed else 0.0], dtype=torch.float64, device=device)
        stats = self.comm.sum(torch.cat([local, here, flag]))
        return stats[:t] / stats[t : 2 * t].clamp(min=1), float(stats[-1]) > 0

    def reduce_gradients(
        self, params: Sequence[nn.Parameter], summed: Sequence[nn.Parameter] = ()
    ) -> bool:
        """All-reduce ``.grad`` of ``params``: SUM for those in ``summed``, MEAN for the others.

        One flat all-reduce per (device, dtype) instead of one per parameter; a missing gradient
        takes part as zeros (a rank whose batch did not reach a parameter must still make the
        call). Returns whether every reduced value is finite: the same answer on every rank.
        """
        if not self.distributed:
            return True
        summed_ids = {id(p) for p in summed}
        groups: dict[tuple[torch.device, torch.dtype], list[nn.Parameter]] = {}
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p)
        finite = True
        for group in groups.values():
            flat = self.comm.sum(torch.cat([p.grad.reshape(-1) for p in group]))  # type: ignore[union-attr]
            finite = finite and bool(torch.isfinite(flat).all())
            offset = 0
            for p in group:
                g = flat[offset : offset + p.numel()].view_as(p)
                p.grad = g if id(p) in summed_ids else g / self.comm.world_size
                offset += p.numel()
        return finite

    def mismatched_replicas(self, modules: Sequence[nn.Module]) -> int:
        """How many ranks hold other floating-point values in ``modules`` than rank 0 (0: none).

        Rank 0's values are recovered exactly by a sum in which every other rank contributes
        zeros (``x + 0 == x``); each rank's verdict is then summed so that every rank knows.
        """
        if not self.distributed:
            return 0
        tensors = [
            t.detach()
            for module in modules
            for t in (*module.parameters(), *module.buffers())
            if t.is_floating_point()
        ]
        if not tensors:
            return 0
        device = tensors[0].device
        local = torch.cat([t.reshape(-1).to(device=device, dtype=torch.float64) for t in tensors])
        first = self.comm.sum(local if self.comm.rank == 0 else torch.zeros_like(local))
        same = (first == local) | (first.isnan() & local.isnan())
        bad = torch.tensor([0.0 if bool(same.all()) else 1.0], dtype=torch.float64, device=device)
        return int(self.comm.sum(bad)[0])
