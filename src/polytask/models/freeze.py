"""Freezing a trunk's stages: ``requires_grad=False`` on the parameters of the chosen stages.

Why freezing is only a flag: :class:`~polytask.models.MultiTaskModel` lists as shared (and task)
parameters only those with ``requires_grad``, so a frozen parameter simply drops out of what the
gradient engine and the optimizer update; nothing else has to know about it. The usual use is
fine-tuning a pretrained trunk: keep its early, generic stages as they are and train the later ones
and the heads.

What a *stage* is: the trunk's ``stages`` attribute, an ordered sequence of modules. For the
:class:`~polytask.models.StagedTrunk` trunks it is the ``nn.ModuleList`` of the stage contract; a
trunk that cannot follow that contract (the Hugging Face wrapper, whose layers need the attention
mask) may still expose its layer groups as a plain sequence for freezing. A trunk without stages can
only be frozen whole (``"all"``).

Selections (``stages``):

* an ``int`` ``n``: the first ``n`` stages (``0`` freezes nothing), the common "freeze the early
  layers" meaning;
* a list of indices into ``stages`` (negative indices count from the end);
* ``"all"``: every parameter of the trunk, inside the stages or not.

Norm layers: freezing stops the gradient updates of a BatchNorm's affine parameters but not the
update of its running statistics in training mode; the built-in trunks default to GroupNorm or
LayerNorm, which have no running statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Union

from torch import nn

__all__ = ["StageSelection", "freeze_stages", "stage_modules", "unfreeze_stages"]

StageSelection = Union[int, Sequence[int], Literal["all"]]  # noqa: UP007 (a runtime alias)


def stage_modules(trunk: nn.Module) -> list[nn.Module] | None:
    """The trunk's stages as a list of modules, or ``None`` when it exposes none."""
    stages = getattr(trunk, "stages", None)
    if isinstance(stages, nn.Module) and not isinstance(stages, nn.ModuleList):
        return None
    if isinstance(stages, nn.ModuleList | list | tuple) and all(
        isinstance(s, nn.Module) for s in stages
    ):
        return list(stages)
    return None


def _selected(trunk: nn.Module, stages: StageSelection) -> list[nn.Module]:
    """The modules that ``stages`` selects, with an error naming the trunk when it cannot."""
    if isinstance(stages, str):
        if stages != "all":
            raise ValueError(f"stages must be an int, a list of indices or 'all', got {stages!r}")
        return [trunk]
    name = type(trunk).__name__
    mods = stage_modules(trunk)
    if mods is None:
        raise TypeError(
            f"{name} exposes no `stages`, so only the whole trunk can be frozen (stages='all')"
        )
    if isinstance(stages, bool):
        raise TypeError("stages must be an int, a list of indices or 'all', not a bool")
    if isinstance(stages, int):
        if not 0 <= stages <= len(mods):
            raise ValueError(f"{name} has {len(mods)} stages; cannot select the first {stages}")
        return mods[:stages]
    picked = []
    for i in stages:
        if isinstance(i, bool) or not isinstance(i, int) or not -len(mods) <= i < len(mods):
            raise ValueError(f"{name} has {len(mods)} stages; {i!r} is not a stage index")
        picked.append(mods[i])
    return picked


def _set(trunk: nn.Module, stages: StageSelection, flag: bool) -> list[nn.Parameter]:
    params: dict[int, nn.Parameter] = {}
    for module in _selected(trunk, stages):
        for p in module.parameters():
            params[id(p)] = p
    for p in params.values():
        p.requires_grad_(flag)
    return list(params.values())


def freeze_stages(trunk: nn.Module, stages: StageSelection) -> list[nn.Parameter]:
    """Set ``requires_grad=False`` on the parameters of the selected stages; return them.

    Call it before building the multi-task model and the optimizer: both read ``requires_grad``
    when they collect parameters.
    """
    return _set(trunk, stages, False)


def unfreeze_stages(trunk: nn.Module, stages: StageSelection = "all") -> list[nn.Parameter]:
    """Set ``requires_grad=True`` again on the selected stages (all by default); return them.

    The optimizer must be rebuilt afterwards (or the parameters added to it): one built while they
    were frozen does not know them.
    """
    return _set(trunk, stages, True)
