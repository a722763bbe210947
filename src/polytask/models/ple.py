"""Customized Gate Control (CGC) and multi-level Progressive Layered Extraction (PLE)
(Tang et al., "Progressive Layered Extraction (PLE)", RecSys 2020).

Each *extraction level* holds shared experts and, per task, task-specific experts. Task ``k``'s gate
mixes the shared experts and task ``k``'s own experts; between levels a *shared gate* mixes every
expert of the level (shared and all tasks') into the input of the next level's shared experts, while
task ``k``'s mixture feeds task ``k``'s next experts. The last level has no shared gate; each task's
last mixture goes to its head. CGC is PLE with a single level.

Levels and the trunk
    With one level (CGC) every expert is a copy of the whole trunk, so any module works. With ``L``
    levels the trunk must expose its stages (:class:`~polytask.models.StagedTrunk`): its stages are
    cut into ``L`` contiguous groups (``stages_per_level``, by default as even as possible, earlier
    levels taking the extra stage) and the experts of level ``l`` are copies of group ``l``. The
    trunk's own input pre-processing runs once, shared, before level 0. Experts are copied as in
    :mod:`polytask.models.mmoe` (the first shared expert of each level exact, the others
    re-initialised).

Gates
    Level-0 gates read the gate input described in :mod:`polytask.models.mmoe` (``gate_input``);
    the gates of a later level read their own path's input (the task's, or the shared mixture),
    globally average-pooled to ``[B, C]``. ``gate_weights()`` reports the *last* level's task gates
    as a vector over every expert of that level, in the order of :meth:`PLE.expert_names`
    (shared experts, then each task's experts), with zeros on experts the task cannot see.

Ownership and the representation-level gradient
    Shared experts, shared gates and the gate feature extractor are shared; task experts, task gates
    and heads belong to their task. For CGC the shared experts (and the gate feature extractor) are
    the whole shared part and nothing task-specific precedes them, so ``encode`` returns their
    outputs ``[B, S*D (+ G)]`` and ``decode`` runs the task experts (which read ``x``), the gates and
    the heads: the representation mode is exact and supported. With two levels or more, task
    experts of level ``l`` feed the shared gate of level ``l + 1``, so shared parameters sit
    downstream of task-specific ones and there is no single shared representation:
    ``supports_representation_grad`` is ``False`` and the engine refuses that mode. Note also that
    the engine gives task-specific parameters the gradient of the *sum* of the present losses; with
    several levels, task ``k``'s lower experts reach the other tasks through the shared gates, so
    they receive those tasks' (unweighted) gradients too.

Tasks added to a trained model (``added_tasks``, used by :mod:`polytask.lifecycle.extend`)
    The last ``added_tasks`` tasks were added after training. Each gets what every task has (its
    own experts at every level, its own gates, its head); the shared gates keep mixing the experts
    they were trained on (the shared experts and the *old* tasks' experts) and do not read the
    added tasks' experts. Why: a softmax over a larger set of experts cannot give the old experts
    the same weights as before unless the new logits are minus infinity, so an exact "unchanged"
    needs the added experts outside the shared gates; the old tasks' outputs are then bit for bit
    those of the trained model. Added tasks' experts therefore feed only their own gates (as in
    a single CGC level), also when the extension goes on to fine-tune the shared part.
    :meth:`PLE.start_added_tasks` starts each added task as a copy of one trained task's experts
    and gates, so its mixtures at the start equal that task's.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from polytask.data.batch import Inputs
from polytask.models.base import MultiTaskModel
from polytask.models.mmoe import (
    GateInputKind,
    _GateRecorder,
    build_gate_input,
    clone_module,
    example_batch,
    flat_width,
    mix,
    pool_features,
    probe,
    staged_parts,
)
from polytask.models.registry import register_architecture
from polytask.tasks import Task

__all__ = ["CGC", "PLE"]


def _even_groups(n_stages: int, levels: int) -> list[int]:
    base, extra = divmod(n_stages, levels)
    return [base + (1 if i < extra else 0) for i in range(levels)]


class PLE(_GateRecorder, MultiTaskModel):
    """Progressive Layered Extraction with ``num_levels`` extraction levels (1 = CGC).

    Args:
        trunk: the expert template (staged when ``num_levels > 1``).
        tasks: the tasks.
        num_levels: extraction levels.
        num_shared_experts: shared experts per level.
        num_task_experts: experts per task per level.
        gate_input, gate_stages: the level-0 gate input, as in :class:`~polytask.models.mmoe.MMoE`.
        stages_per_level: how many trunk stages each level takes (sums to the trunk's stages).
        reinit_experts: re-initialise every expert but the first shared expert of each level.
        added_tasks: how many of the last tasks were added to a trained model (their experts are
            outside the shared gates; see the module docstring); 0 for a model trained with all
            its tasks from the start.
        example_input: a batch, to read the shapes (optional for ``MLP`` and ``SmallCNN``).
    """

    arch_name = "ple"

    def __init__(
        self,
        trunk: nn.Module,
        tasks: Sequence[Task],
        *,
        num_levels: int = 2,
        num_shared_experts: int = 2,
        num_task_experts: int = 1,
        gate_input: GateInputKind | nn.Module = "auto",
        gate_stages: int = 1,
        stages_per_level: Sequence[int] | None = None,
        reinit_experts: bool = True,
        added_tasks: int = 0,
        example_input: Inputs | None = None,
    ) -> None:
        super().__init__()
        arch = self.arch_name
        if not tasks:
            raise ValueError("a multi-task model needs at least one task")
        if not 0 <= added_tasks < len(tasks):
            raise ValueError(
                f"{arch}: added_tasks must be in [0, {len(tasks) - 1}] for {len(tasks)} tasks "
                f"(at least one task was trained first), got {added_tasks}"
            )
        if num_levels < 1:
            raise ValueError(f"{arch}: num_levels must be >= 1, got {num_levels}")
        if num_shared_experts < 1 or num_task_experts < 0:
            raise ValueError(
                f"{arch}: needs num_shared_experts >= 1 and num_task_experts >= 0, got "
                f"{num_shared_experts} and {num_task_experts}"
            )
        self.tasks = list(tasks)
        self._last_gates = {}
        self.num_levels = int(num_levels)
        self.num_shared = int(num_shared_experts)
        self.num_task = int(num_task_experts)
        self.added_tasks = int(added_tasks)
        self.supports_representation_grad = self.num_levels == 1
        ex = example_batch(trunk, example_input, arch)
        names = self.task_names

        self.stages_per_level: list[int] | None = None
        if self.num_levels == 1:
            self.prep: nn.Module | None = None
            level_templates: list[nn.Module] = [trunk]
            out = probe(trunk, ex)
            assert isinstance(out, Tensor)
            level_in_channels: list[int] = []
            self.out_width = flat_width(out)
        else:
            prep, stages, feats = staged_parts(trunk, arch, ex)
            n = len(stages)
            groups = list(stages_per_level) if stages_per_level is not None else None
            if groups is None:
                if n < self.num_levels:
                    raise ValueError(
                        f"{arch}: {self.num_levels} levels need a trunk with at least as many "
                        f"stages; {type(trunk).__name__} has {n}"
                    )
                groups = _even_groups(n, self.num_levels)
            if len(groups) != self.num_levels or any(g < 1 for g in groups) or sum(groups) != n:
                raise ValueError(
                    f"{arch}: stages_per_level {groups} must give {self.num_levels} positive "
                    f"counts summing to the trunk's {n} stages"
                )
            self.prep = prep
            bounds = [sum(groups[:i]) for i in range(self.num_levels + 1)]
            level_templates = [
                nn.Sequential(*list(stages)[bounds[i] : bounds[i + 1]])
                for i in range(self.num_levels)
            ]
            # Channels of each level's input (levels 1..L-1): the previous group's last output.
            level_in_channels = [
                int(pool_features(feats[bounds[i] - 1]).shape[1])
                for i in range(1, self.num_levels)
            ]
            self.out_width = flat_width(feats[-1])
            self.stages_per_level = groups

        self.gate_features, gate_width = build_gate_input(trunk, gate_input, gate_stages, ex, arch)
        # what a shared gate mixes: the shared experts and the experts of the tasks trained first
        n_all = self.num_shared + (len(names) - self.added_tasks) * self.num_task
        self.shared_experts = nn.ModuleList(
            nn.ModuleList(
                clone_module(tpl, reinit_experts and i > 0) for i in range(self.num_shared)
            )
            for tpl in level_templates
        )
        self.task_experts = nn.ModuleDict(
            {
                t: nn.ModuleList(
                    nn.ModuleList(clone_module(tpl, reinit_experts) for _ in range(self.num_task))
                    for tpl in level_templates
                )
                for t in names
            }
        )
        widths = [gate_width, *level_in_channels]
        self.task_gates = nn.ModuleDict(
            {
                t: nn.ModuleList(nn.Linear(w, self.num_shared + self.num_task) for w in widths)
                for t in names
            }
        )
        self.shared_gates = nn.ModuleList(nn.Linear(w, n_all) for w in widths[:-1])
        self.heads = nn.ModuleDict({t.name: t.make_head(self.out_width) for t in self.tasks})

    # ------------------------------------------------------------------ helpers
    def _run(self, expert: nn.Module, h: Tensor) -> Tensor:
        out = expert(h)
        return out.reshape(out.shape[0], -1) if self.num_levels == 1 else out

    def _task_gate(self, level: int, task: str, gate_in: Tensor, outs: list[Tensor]) -> Tensor:
        w = torch.softmax(self.task_gates[task][level](gate_in), dim=-1)
        if level == self.num_levels - 1:
            self._record_full(task, w)
        return mix(w, outs)

    def _record_full(self, task: str, w: Tensor) -> None:
        full = w.new_zeros(w.shape[0], self.num_shared + len(self.tasks) * self.num_task)
        full[:, : self.num_shared] = w[:, : self.num_shared]
        k = self.task_names.index(task)
        start = self.num_shared + k * self.num_task
        full[:, start : start + self.num_task] = w[:, self.num_shared :]
        self._record(task, full)

    def _level0_gate_input(self, x: Tensor, gate_feats: Tensor | None) -> Tensor:
        return gate_feats if gate_feats is not None else x.reshape(x.shape[0], -1)

    def _forward_all(self, x: Tensor) -> dict[str, Tensor]:
        """The full multi-level forward; returns each task's last mixture (flattened)."""
        gate_feats = self.gate_features(x) if self.gate_features is not None else None
        h0 = self.prep(x) if self.prep is not None else x
        shared_in = h0
        task_in = {t: h0 for t in self.task_names}
        for level in range(self.num_levels):
            shared_out = [self._run(e, shared_in) for e in self.shared_experts[level]]
            task_out = {
                t: [self._run(e, task_in[t]) for e in self.task_experts[t][level]]
                for t in self.task_names
            }
            if level == 0:
                g_shared = self._level0_gate_input(x, gate_feats)
                g_task = dict.fromkeys(self.task_names, g_shared)
            else:
                g_shared = pool_features(shared_in)
                g_task = {t: pool_features(task_in[t]) for t in self.task_names}
            new_task_in = {
                t: self._task_gate(level, t, g_task[t], shared_out + task_out[t])
                for t in self.task_names
            }
            if level < self.num_levels - 1:
                everything = shared_out + [o for t in self._gated_names() for o in task_out[t]]
                w = torch.softmax(self.shared_gates[level](g_shared), dim=-1)
                shared_in = mix(w, everything)
            task_in = new_task_in
        return {t: h.reshape(h.shape[0], -1) for t, h in task_in.items()}

    # ------------------------------------------------------------------ contract
    def encode(self, x: Inputs) -> Tensor:
        if self.num_levels == 1:
            parts = [self._run(e, x) for e in self.shared_experts[0]]
            if self.gate_features is not None:
                parts.append(self.gate_features(x))
            return torch.cat(parts, dim=1)
        finals = self._forward_all(x)
        return torch.cat([finals[t] for t in self.task_names], dim=1)

    def decode(self, rep: Tensor, x: Inputs) -> dict[str, Tensor]:
        b = rep.shape[0]
        d = self.out_width
        if self.num_levels == 1:
            shared_out = [rep[:, i * d : (i + 1) * d] for i in range(self.num_shared)]
            gate_feats = rep[:, self.num_shared * d :] if self.gate_features is not None else None
            gate_in = self._level0_gate_input(x, gate_feats).to(rep.dtype)
            result = {}
            for t in self.task_names:
                own = [self._run(e, x) for e in self.task_experts[t][0]]
                mixed = self._task_gate(0, t, gate_in, shared_out + own)
                result[t] = self.heads[t](mixed)
            return result
        return {
            t: self.heads[t](rep[:, k * d : (k + 1) * d].reshape(b, d))
            for k, t in enumerate(self.task_names)
        }

    def shared_modules(self) -> list[nn.Module]:
        mods: list[nn.Module] = [self.shared_experts]
        if self.prep is not None:
            mods.append(self.prep)
        if len(self.shared_gates) > 0:
            mods.append(self.shared_gates)
        if self.gate_features is not None:
            mods.append(self.gate_features)
        return mods

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.task_experts[task], self.task_gates[task], self.heads[task]]

    def expert_names(self) -> list[str]:
        """Labels of the entries of each ``gate_weights()`` vector (the last level's experts)."""
        names = [f"shared{i}" for i in range(self.num_shared)]
        return names + [f"{t}{i}" for t in self.task_names for i in range(self.num_task)]

    def _gated_names(self) -> list[str]:
        """The tasks whose experts the shared gates mix: those trained before any was added."""
        return self.task_names[: len(self.tasks) - self.added_tasks]

    @torch.no_grad()
    def start_added_tasks(self, source: str) -> list[str]:
        """Start every added task as a copy of trained task ``source``'s experts and gates.

        Called once the trained tensors are in place; the old tasks are not touched (their
        outputs stay bit for bit the same). An added task's mixture at every level then equals
        ``source``'s, and only its head starts fresh. Why a copy of one trained task rather than a
        mean of the task experts: the task experts are re-initialised independently by default
        (``reinit_experts``), so their parameters do not average into a working expert.

        Returns the state keys of shared tensors that exist for the added tasks only: none, since
        the shared gates do not read the added experts.
        """
        old = self._gated_names()
        if self.added_tasks and source not in old:
            raise ValueError(f"{self.arch_name}: source task {source!r} is not one of the trained {old}")
        for name in self.task_names[len(old) :]:
            for part in (self.task_experts, self.task_gates):
                part[name].load_state_dict(copy.deepcopy(part[source].state_dict()))
        return []


class CGC(PLE):
    """Customized Gate Control: PLE with one extraction level; works with any trunk module."""

    arch_name = "cgc"

    def __init__(
        self,
        trunk: nn.Module,
        tasks: Sequence[Task],
        *,
        num_shared_experts: int = 2,
        num_task_experts: int = 1,
        gate_input: GateInputKind | nn.Module = "auto",
        gate_stages: int = 1,
        reinit_experts: bool = True,
        added_tasks: int = 0,
        example_input: Inputs | None = None,
    ) -> None:
        super().__init__(
            trunk,
            tasks,
            num_levels=1,
            num_shared_experts=num_shared_experts,
            num_task_experts=num_task_experts,
            gate_input=gate_input,
            gate_stages=gate_stages,
            reinit_experts=reinit_experts,
            added_tasks=added_tasks,
            example_input=example_input,
        )


@register_architecture(
    "cgc",
    "customized gate control: shared + task-specific experts, one gate per task "
    "(Tang et al. 2020, single-level PLE)",
)
def cgc(
    trunk: nn.Module, tasks: Sequence[Task], *, example_input: Inputs | None = None, **options: object
) -> CGC:
    return CGC(trunk, tasks, example_input=example_input, **options)  # type: ignore[arg-type]


@register_architecture(
    "ple",
    "progressive layered extraction: stacked CGC levels over the trunk's stages with shared gates "
    "between levels (Tang et al. 2020)",
)
def ple(
    trunk: nn.Module, tasks: Sequence[Task], *, example_input: Inputs | None = None, **options: object
) -> PLE:
    return PLE(trunk, tasks, example_input=example_input, **options)  # type: ignore[arg-type]
