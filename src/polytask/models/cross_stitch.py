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

Tasks added to a trained model (``added_tasks``, used by :mod:`polytask.lifecycle.extend`)
    The last ``added_tasks`` tasks were added after training. Each unit then keeps the trained
    ``T0 x T0`` block as its ``weight`` and computes the old tasks' mixtures from the old columns
    first, exactly as before, then adds ``to_added`` (``T0 x K``: how much each old task reads the
    new columns; shared, zero when the tasks are added), so the old tasks' outputs stay bit for bit
    what they were until ``to_added`` moves. An added task's row of every unit (its mixture over
    all ``T`` columns) lives in ``added_rows[task]`` and belongs to that task, like its column: in
    the ``frozen`` extension only the added tasks' columns, rows and heads train.
    :meth:`CrossStitch.start_added_tasks` starts each added task as a copy of one trained task's
    path (its column, and its rows with the self weight moved onto the new column), so the new
    task's features at the start equal that task's features.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from polytask.data.batch import Inputs, batch_len
from polytask.models.base import MultiTaskModel
from polytask.models.mmoe import clone_module, example_batch, flat_width, staged_parts
from polytask.models.registry import register_architecture
from polytask.tasks import Task

__all__ = ["CrossStitch", "CrossStitchUnit"]


def _stitch_init(num_tasks: int, self_weight: float) -> Tensor:
    """``self_weight`` on the diagonal, the rest of each row spread evenly over the other tasks."""
    if num_tasks == 1:
        return torch.ones(1, 1)
    init = torch.full((num_tasks, num_tasks), (1.0 - self_weight) / (num_tasks - 1))
    return init.fill_diagonal_(self_weight)


def _mix(weight: Tensor, feats: Sequence[Tensor]) -> Tensor:
    stacked = torch.stack(list(feats), dim=1)  # [B, S, ...]
    return torch.einsum("ts,bs...->bt...", weight.to(stacked.dtype), stacked)


class CrossStitchUnit(nn.Module):
    """``out[t] = Σ_s weight[t, s] · feats[s]`` over the tasks' features of one stage.

    With ``added > 0`` the last ``added`` tasks came later: ``weight`` is the old tasks' block,
    ``to_added`` (zeros) their weights on the added columns, and the added tasks' rows come in
    with each call (they belong to those tasks, see the module docstring).
    """

    def __init__(self, num_tasks: int, self_weight: float = 0.9, added: int = 0) -> None:
        super().__init__()
        base = num_tasks - added
        self.weight = nn.Parameter(_stitch_init(base, self_weight))
        self.to_added = nn.Parameter(torch.zeros(base, added)) if added else None

    def forward(self, feats: list[Tensor], added_rows: Tensor | None = None) -> list[Tensor]:
        if self.to_added is None:
            return list(_mix(self.weight, feats).unbind(dim=1))
        if added_rows is None:
            raise ValueError("a unit with added tasks needs their rows (added_rows)")
        base = self.weight.shape[0]
        # the old tasks' mixture first, computed exactly as before the tasks were added
        old = _mix(self.weight, feats[:base]) + _mix(self.to_added, feats[base:])
        new = _mix(added_rows, feats)
        return list(torch.cat([old, new], dim=1).unbind(dim=1))


class _TaskRows(nn.Module):
    """An added task's row of every cross-stitch unit: ``weight[j]`` mixes the columns at stage j."""

    def __init__(self, rows: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(rows)


class CrossStitch(MultiTaskModel):
    """One trunk column per task, linked by cross-stitch units after every stage.

    ``added_tasks``: how many of the last tasks were added to a trained model (see the module
    docstring); 0 for a model trained with all its tasks from the start.
    """

    supports_representation_grad = False

    def __init__(
        self,
        trunk: nn.Module,
        tasks: Sequence[Task],
        *,
        self_weight: float = 0.9,
        reinit_columns: bool = False,
        added_tasks: int = 0,
        example_input: Inputs | None = None,
    ) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("a multi-task model needs at least one task")
        if not 0.0 <= self_weight <= 1.0:
            raise ValueError(f"cross_stitch: self_weight must be in [0, 1], got {self_weight}")
        if not 0 <= added_tasks < len(tasks):
            raise ValueError(
                f"cross_stitch: added_tasks must be in [0, {len(tasks) - 1}] for {len(tasks)} "
                f"tasks (at least one task was trained first), got {added_tasks}"
            )
        self.tasks = list(tasks)
        self.added_tasks = int(added_tasks)
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
            CrossStitchUnit(len(self.tasks), self_weight, self.added_tasks)
            for _ in range(len(stages))
        )
        full = _stitch_init(len(self.tasks), self_weight)
        base = len(self.tasks) - self.added_tasks
        self.added_rows = nn.ModuleDict(
            {
                t.name: _TaskRows(full[base + k].repeat(len(stages), 1))
                for k, t in enumerate(self.tasks[base:])
            }
        )
        self.out_features = flat_width(feats[-1])
        self.heads = nn.ModuleDict({t.name: t.make_head(self.out_features) for t in self.tasks})

    def encode(self, x: Inputs) -> Tensor:
        """Every task's last stitched feature, flattened and concatenated: ``[B, T*D]``."""
        h0 = self.prep(x)
        names = self.task_names
        feats = [h0] * len(names)
        added = self._added_names()
        for j, unit in enumerate(self.units):
            feats = [self.columns[t][j](f) for t, f in zip(names, feats, strict=True)]
            if added:
                feats = unit(feats, torch.stack([self.added_rows[t].weight[j] for t in added]))
            else:
                feats = unit(feats)
        b = batch_len(x)
        return torch.cat([f.reshape(b, -1) for f in feats], dim=1)

    def decode(self, rep: Tensor, x: Inputs) -> dict[str, Tensor]:
        d = self.out_features
        return {t: self.heads[t](rep[:, k * d : (k + 1) * d]) for k, t in enumerate(self.task_names)}

    def shared_modules(self) -> list[nn.Module]:
        return [self.prep, self.units]

    def task_modules(self, task: str) -> list[nn.Module]:
        own = [self.columns[task], self.heads[task]]
        return [*own, self.added_rows[task]] if task in self.added_rows else own

    def mixing_matrices(self) -> list[Tensor]:
        """The current ``T x T`` matrix of every unit (rows: receiving task), detached."""
        added = self._added_names()
        mats = []
        for j, unit in enumerate(self.units):
            m = unit.weight.detach()
            if unit.to_added is not None:
                rows = torch.stack([self.added_rows[t].weight[j].detach() for t in added])
                m = torch.cat([torch.cat([m, unit.to_added.detach()], dim=1), rows])
            mats.append(m.clone())
        return mats

    def _added_names(self) -> list[str]:
        return self.task_names[len(self.tasks) - self.added_tasks :] if self.added_tasks else []

    @torch.no_grad()
    def start_added_tasks(self, source: str) -> list[str]:
        """Start every added task as a copy of trained task ``source``'s path; old tasks untouched.

        Called once the trained tensors are in place. An added task gets a copy of ``source``'s
        column and, in every unit, ``source``'s row with the self weight moved from ``source``'s
        column to its own; the old tasks' weights on the added columns (``to_added``) are zero.
        Then the added task's stitched features equal ``source``'s at every stage (exact in
        real arithmetic; the sums run over more terms, so in floating point to rounding), and the
        old tasks' outputs are bit for bit unchanged. Why a copy of one trained path rather than
        a mean of the columns: a copy is a path the trained units were fitted to, and columns that
        were re-initialised (``reinit_columns``) or drifted apart do not average into one.

        Returns the state keys of shared tensors that exist for the added tasks only (whose
        values it set), so that a caller can check that nothing else was left untrained.
        """
        if not self.added_tasks:
            return []
        old = self.task_names[: len(self.tasks) - self.added_tasks]
        if source not in old:
            raise ValueError(f"cross_stitch: source task {source!r} is not one of the trained {old}")
        s = old.index(source)
        keys = []
        for i, name in enumerate(self._added_names()):
            self.columns[name].load_state_dict(copy.deepcopy(self.columns[source].state_dict()))
            for j, unit in enumerate(self.units):
                row = unit.weight.new_zeros(len(self.tasks))
                row[: len(old)] = unit.weight[s]
                row[s], row[len(old) + i] = 0.0, unit.weight[s, s]
                self.added_rows[name].weight[j].copy_(row)
        for j, unit in enumerate(self.units):
            assert unit.to_added is not None
            unit.to_added.zero_()
            keys.append(f"units.{j}.to_added")
        return keys


@register_architecture(
    "cross_stitch",
    "one trunk column per task linked by learnable cross-stitch units after every stage "
    "(Misra et al. 2016)",
)
def cross_stitch(
    trunk: nn.Module, tasks: Sequence[Task], *, example_input: Inputs | None = None, **options: object
) -> CrossStitch:
    return CrossStitch(trunk, tasks, example_input=example_input, **options)  # type: ignore[arg-type]
