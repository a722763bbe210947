"""Cross-stitch networks (Misra et al., "Cross-stitch Networks for Multi-task Learning", CVPR 2016).

One *column* per task, each a copy of the trunk's stages, and after every stage a cross-stitch
unit: a learnable ``T x T`` matrix ``α`` that replaces task ``t``'s feature by
``Σ_s α[t, s] · feature_s`` before the next stage. ``α`` starts near the identity (``self_weight``
on the diagonal, 0.9 by default as in the paper, the rest spread evenly over the other tasks) so the
columns start almost independent and learn how much to share. Units follow every stage including
the last one (the paper stitches after fc7, the last layer before the task outputs); each task's
head reads its column's last, stitched feature.

Works with any trunk that follows the stage contract of :class:`~polytask.models.StagedTrunk`
(``stages`` run in order, ``forward_features``); the trunk's own pre-processing (e.g. the MLP's
flattening) runs once, shared. A module without stages is refused with an explanation.

Simplifications: one scalar per task pair and stage (the paper also discusses one per channel);
no separate learning rate for ``α``. Columns are exact copies of the trunk (the paper initialises
them from the same network); ``reinit_columns=True`` re-initialises every column but the first.

Ownership: columns and heads belong to their task, the units (and the pre-processing, if it has
parameters) are shared. Because the units feed every column into every other, there is no single
shared representation: ``supports_representation_grad = False``. In the Jacobian and Gramian modes
the balancer decides the update of the units; each column receives the gradient of the *sum* of the
present losses (the engine's rule for non-shared parameters), which includes the other tasks' losses
reaching it through the units. ``mixing_matrices()`` returns the current ``α`` of every unit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from polytask.data.batch import Inputs, batch_len
from polytask.models.base import MultiTaskModel
from polytask.models.mmoe import clone_module, example_batch, flat_width, staged_parts
from polytask.models.registry import register_architecture
from polytask.tasks import Task

__all__ = ["CrossStitch", "CrossStitchUnit"]


class CrossStitchUnit(nn.Module):
    """``out[t] = Σ_s weight[t, s] · feats[s]`` over the tasks' features of one stage."""

    def __init__(self, num_tasks: int, self_weight: float = 0.9) -> None:
        super().__init__()
        if num_tasks == 1:
            init = torch.ones(1, 1)
        else:
            init = torch.full((num_tasks, num_tasks), (1.0 - self_weight) / (num_tasks - 1))
            init.fill_diagonal_(self_weight)
        self.weight = nn.Parameter(init)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        stacked = torch.stack(feats, dim=1)  # [B, T, ...]
        mixed = torch.einsum("ts,bs...->bt...", self.weight.to(stacked.dtype), stacked)
        return list(mixed.unbind(dim=1))


class CrossStitch(MultiTaskModel):
    """One trunk column per task, linked by cross-stitch units after every stage."""

    supports_representation_grad = False

    def __init__(
        self,
        trunk: nn.Module,
        tasks: Sequence[Task],
        *,
        self_weight: float = 0.9,
        reinit_columns: bool = False,
        example_input: Inputs | None = None,
    ) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("a multi-task model needs at least one task")
        if not 0.0 <= self_weight <= 1.0:
            raise ValueError(f"cross_stitch: self_weight must be in [0, 1], got {self_weight}")
        self.tasks = list(tasks)
        ex = example_batch(trunk, example_input, "cross_stitch")
        prep, stages, feats = staged_parts(trunk, "cross_stitch", ex)
        self.prep = prep
        self.columns = nn.ModuleDict(
            {
                t.name: clone_module(stages, reinit_columns and i > 0)
                for i, t in enumerate(self.tasks)
            }
        )
        self.units = nn.ModuleList(
            CrossStitchUnit(len(self.tasks), self_weight) for _ in range(len(stages))
        )
        self.out_features = flat_width(feats[-1])
        self.heads = nn.ModuleDict({t.name: t.make_head(self.out_features) for t in self.tasks})

    def encode(self, x: Inputs) -> Tensor:
        """Every task's last stitched feature, flattened and concatenated: ``[B, T*D]``."""
        h0 = self.prep(x)
        names = self.task_names
        feats = [h0] * len(names)
        for j, unit in enumerate(self.units):
            feats = [self.columns[t][j](f) for t, f in zip(names, feats, strict=True)]
            feats = unit(feats)
        b = batch_len(x)
        return torch.cat([f.reshape(b, -1) for f in feats], dim=1)

    def decode(self, rep: Tensor, x: Inputs) -> dict[str, Tensor]:
        d = self.out_features
        return {t: self.heads[t](rep[:, k * d : (k + 1) * d]) for k, t in enumerate(self.task_names)}

    def shared_modules(self) -> list[nn.Module]:
        return [self.prep, self.units]

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.columns[task], self.heads[task]]

    def mixing_matrices(self) -> list[Tensor]:
        """The current ``T x T`` matrix of every unit (rows: receiving task), detached."""
        return [u.weight.detach().clone() for u in self.units]


@register_architecture(
    "cross_stitch",
    "one trunk column per task linked by learnable cross-stitch units after every stage "
    "(Misra et al. 2016)",
)
def cross_stitch(
    trunk: nn.Module, tasks: Sequence[Task], *, example_input: Inputs | None = None, **options: object
) -> CrossStitch:
    return CrossStitch(trunk, tasks, example_input=example_input, **options)  # type: ignore[arg-type]
