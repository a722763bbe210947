"""Multi-gate Mixture-of-Experts (Ma et al., KDD 2018) and the building blocks that the mixture
(MMoE, CGC/PLE, DSelect-k) and stage-wise (Cross-stitch, MTAN) architectures share.

Experts
    Every expert is a copy of the trunk you pass: the trunk is a *template* and is never trained in
    place, so one trunk object can seed several models. Expert 0 is an exact copy (it keeps
    pretrained or hand-made weights); the others are re-initialised through each submodule's
    ``reset_parameters`` so that the experts start different (``reinit_experts=False`` keeps exact
    copies). Parameters a module registers outside any ``reset_parameters`` are copied unchanged.

Gate input (``gate_input``)
    ``"input"``: the gates read the flattened input, right for tables. ``"features"``: the gates read
    a shared *gate feature extractor*, a re-initialised copy of the trunk's first ``gate_stages``
    stages followed by global average pooling over the spatial dimensions (for a trunk without
    stages, a re-initialised copy of the whole trunk, pooled), so a gate over images reads learned
    channels instead of the flattened raw pixels. An ``nn.Module`` given as ``gate_input`` is used
    as that extractor (its output is pooled the same way). ``"auto"`` (the default) picks
    ``"input"`` for 2-D inputs ``[B, F]`` and ``"features"`` for anything with more dimensions.

Representation (MMoE)
    ``encode`` returns ONE tensor ``[B, E*D (+ G)]``: the E experts' flattened outputs, followed by
    the pooled gate features when a shared extractor exists (it serves every gate, so it is a shared
    module and belongs in ``encode``). ``decode`` splits it back, applies each task's gate
    (task-owned: a linear layer and a softmax over experts) and head. Every shared parameter is
    upstream of the representation and only task parameters are downstream, so the
    representation-level gradient mode (MGDA-UB) is exact for MMoE.

Shapes are read off one forward pass of the template on ``example_input`` (the built-in ``MLP`` and
``SmallCNN`` do not need one). The stage contract used by PLE, Cross-stitch and MTAN is checked by
:func:`staged_parts`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from polytask.data.batch import Inputs, batch_len, move_to, slice_inputs
from polytask.models.base import MultiTaskModel
from polytask.models.registry import register_architecture
from polytask.models.trunks import MLP, SmallCNN
from polytask.tasks import Task

__all__ = [
    "GateFeatures",
    "InputPrep",
    "MMoE",
    "clone_module",
    "example_batch",
    "flat_width",
    "make_experts",
    "mix",
    "pool_features",
    "probe",
    "reinitialize",
    "staged_parts",
]

GateInputKind = Literal["auto", "input", "features"]

STAGE_CONTRACT = (
    "a trunk that exposes its stages: `stages` (an nn.ModuleList, run in order, stage i+1 reading "
    "stage i's output unchanged) and `forward_features(x)` returning every stage's output, any "
    "pre-processing of x (e.g. flattening) happening before the first stage; subclass "
    "polytask.models.StagedTrunk"
)


# ---------------------------------------------------------------------------- building blocks
def reinitialize(module: nn.Module) -> nn.Module:
    """Re-draw every parameter that a submodule's ``reset_parameters`` knows how to draw."""
    for m in module.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    return module


def clone_module(module: nn.Module, reinit: bool) -> nn.Module:
    """A deep copy of ``module``, optionally re-initialised."""
    twin = copy.deepcopy(module)
    return reinitialize(twin) if reinit else twin


def make_experts(template: nn.Module, n: int, reinit: bool) -> list[nn.Module]:
    """``n`` copies of ``template``: the first exact, the others re-initialised when ``reinit``."""
    if n < 1:
        raise ValueError(f"the number of experts must be >= 1, got {n}")
    return [clone_module(template, reinit and i > 0) for i in range(n)]


def _device_of(module: nn.Module) -> torch.device | None:
    for p in module.parameters():
        return p.device
    return None


def example_batch(trunk: nn.Module, example_input: Inputs | None, arch: str) -> Inputs:
    """Two rows of ``example_input``, or a zero batch for the built-in trunks."""
    if isinstance(example_input, dict):  # several named inputs: kept as they are (ids stay ints)
        if batch_len(example_input) < 1:
            raise ValueError(f"{arch}: example_input must hold at least one row")
        ex_named = slice_inputs(example_input, slice(0, 2))
        device = _device_of(trunk)
        return move_to(ex_named, device) if device is not None else ex_named
    if example_input is not None:
        if example_input.ndim < 2 or example_input.shape[0] < 1:
            raise ValueError(
                f"{arch}: example_input must be a batch [B, ...] with B >= 1, got shape "
                f"{tuple(example_input.shape)}"
            )
        ex = example_input[:2]
    elif isinstance(trunk, MLP):
        ex = torch.zeros(2, trunk.in_features)
    elif isinstance(trunk, SmallCNN):
        first = trunk.stages[0][0]
        assert isinstance(first, nn.Conv2d)
        ex = torch.zeros(2, first.in_channels, 28, 28)
    else:
        raise ValueError(
            f"{arch}: cannot tell the shapes of {type(trunk).__name__}'s outputs; pass "
            "example_input=<a batch of inputs> (create_model(..., example_input=x))"
        )
    device = _device_of(trunk)
    ex = ex.float() if ex.dtype == torch.bool else ex  # integer ids / codes stay integers
    return ex.to(device) if device is not None else ex


@torch.no_grad()
def probe(module: nn.Module, x: Tensor, features: bool = False) -> list[Tensor] | Tensor:
    """One eval-mode, no-grad forward (``forward_features`` when ``features``)."""
    was_training = module.training
    module.eval()
    try:
        return module.forward_features(x) if features else module(x)  # type: ignore[operator]
    finally:
        module.train(was_training)


def flat_width(t: Tensor) -> int:
    return int(t[0].numel())


def pool_features(t: Tensor) -> Tensor:
    """``[B, C, *spatial]`` -> ``[B, C]`` by global average pooling; ``[B, D]`` unchanged."""
    if t.ndim > 2:
        return t.flatten(2).mean(dim=-1)
    if t.ndim == 1:
        return t.unsqueeze(1)
    return t


def mix(weights: Tensor, outputs: Sequence[Tensor]) -> Tensor:
    """``Σ_i weights[:, i] * outputs[i]`` for outputs of any (equal) shape ``[B, ...]``."""
    stacked = torch.stack(list(outputs), dim=1)
    w = weights.reshape(*weights.shape, *([1] * (stacked.ndim - 2)))
    return (w.to(stacked.dtype) * stacked).sum(dim=1)


class InputPrep(nn.Module):
    """What the trunk's ``forward_features`` does to ``x`` before its first stage (e.g. flatten).

    Built from a copy of the trunk whose stages are replaced by one identity stage, so whatever
    pre-processing the trunk's class defines (and any parameter it owns outside the stages) is kept.
    """

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        stages = trunk._modules["stages"]
        trunk._modules["stages"] = nn.ModuleList([nn.Identity()])
        try:
            self.probe = copy.deepcopy(trunk)
        finally:
            trunk._modules["stages"] = stages

    def forward(self, x: Tensor) -> Tensor:
        feats = self.probe.forward_features(x)
        if len(feats) != 1:
            raise TypeError(
                f"{type(self.probe).__name__}.forward_features does not iterate over "
                f"`self.stages`; the architecture needs {STAGE_CONTRACT}"
            )
        return feats[0]


def staged_parts(
    trunk: nn.Module, arch: str, example: Tensor
) -> tuple[InputPrep, nn.ModuleList, list[Tensor]]:
    """Split a staged trunk into pre-processing and stages, checking the contract on ``example``.

    Returns the pre-processing module (new), the template's stages (to be copied by the caller) and
    the template's stage outputs on ``example``.
    """
    stages = getattr(trunk, "stages", None)
    if (
        not isinstance(stages, nn.ModuleList)
        or len(stages) == 0
        or not callable(getattr(trunk, "forward_features", None))
    ):
        raise TypeError(
            f"{arch} needs {STAGE_CONTRACT}; {type(trunk).__name__} has no non-empty `stages` "
            "ModuleList with `forward_features`"
        )
    feats = probe(trunk, example, features=True)
    assert isinstance(feats, list)
    if len(feats) != len(stages):
        raise TypeError(
            f"{arch}: {type(trunk).__name__}.forward_features returned {len(feats)} outputs for "
            f"{len(stages)} stages; the architecture needs {STAGE_CONTRACT}"
        )
    prep = InputPrep(trunk)
    with torch.no_grad():
        was = trunk.training, prep.training
        trunk.eval()
        prep.eval()
        try:
            h = prep(example)
            for i, (stage, f) in enumerate(zip(stages, feats, strict=True)):
                h = stage(h)
                if h.shape != f.shape or not torch.allclose(h, f, rtol=1e-4, atol=1e-5):
                    raise TypeError(
                        f"{arch}: running the stages of {type(trunk).__name__} one after the other "
                        f"does not reproduce forward_features at stage {i}; the architecture needs "
                        f"{STAGE_CONTRACT}"
                    )
        finally:
            trunk.train(was[0])
            prep.train(was[1])
    return prep, stages, [f.detach() for f in feats]


class GateFeatures(nn.Module):
    """A shared feature extractor for gates: ``body(x)`` globally average-pooled to ``[B, C]``."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return pool_features(self.body(x))


def build_gate_input(
    trunk: nn.Module,
    gate_input: GateInputKind | nn.Module,
    gate_stages: int,
    example: Tensor,
    arch: str,
) -> tuple[GateFeatures | None, int]:
    """The shared gate feature extractor (``None`` for the raw input) and the gates' input width."""
    if isinstance(gate_input, nn.Module):
        module = GateFeatures(gate_input)
    else:
        if gate_input not in ("auto", "input", "features"):
            raise ValueError(
                f"{arch}: gate_input must be 'auto', 'input', 'features' or an nn.Module, got "
                f"{gate_input!r}"
            )
        kind = gate_input
        if kind == "auto":
            kind = "input" if isinstance(example, Tensor) and example.ndim == 2 else "features"
        if kind == "input" and not isinstance(example, Tensor):
            raise ValueError(
                f"{arch}: gate_input='input' reads one flat input tensor; with several named "
                "inputs the gates read pooled trunk features (gate_input='features')"
            )
        if kind == "input":
            return None, flat_width(example)
        stages = getattr(trunk, "stages", None)
        if isinstance(stages, nn.ModuleList) and len(stages) > 0:
            if not 1 <= gate_stages <= len(stages):
                raise ValueError(
                    f"{arch}: gate_stages must be between 1 and the trunk's {len(stages)} stages, "
                    f"got {gate_stages}"
                )
            prep, template_stages, _ = staged_parts(trunk, arch, example)
            body: nn.Module = nn.Sequential(
                prep, *[clone_module(s, True) for s in list(template_stages)[:gate_stages]]
            )
        else:
            body = clone_module(trunk, True)
        module = GateFeatures(body)
    out = probe(module, example)
    assert isinstance(out, Tensor)
    if out.ndim != 2:
        raise ValueError(f"{arch}: gate features must be [B, C], got {tuple(out.shape)}")
    return module, int(out.shape[1])


class _GateRecorder:
    """Keeps the batch-mean gate weights of the last forward, per task (detached)."""

    _last_gates: dict[str, Tensor]

    def _record(self, task: str, weights: Tensor) -> None:
        self._last_gates[task] = weights.detach().float().mean(dim=0)

    def gate_weights(self) -> dict[str, Tensor] | None:
        if not self._last_gates:
            return None
        return {k: v.clone() for k, v in self._last_gates.items()}


# ---------------------------------------------------------------------------- MMoE
class MMoE(_GateRecorder, MultiTaskModel):
    """Multi-gate Mixture-of-Experts: shared experts, one softmax gate per task (Ma et al. 2018).

    ``y_k = head_k(Σ_e g_k(x)_e · expert_e(x))`` with ``g_k = softmax(W_k · gate_input(x))``.

    Args:
        trunk: the expert template (any module mapping a batch to features).
        tasks: the tasks.
        num_experts: number of expert copies.
        gate_input: ``"auto"``, ``"input"``, ``"features"`` or a module; see the module docstring.
        gate_stages: stages of the trunk copied into the gate feature extractor.
        reinit_experts: re-initialise experts 1..E-1 (expert 0 is always an exact copy).
        example_input: a batch, to read the shapes (optional for ``MLP`` and ``SmallCNN``).
    """

    arch_name = "mmoe"

    def __init__(
        self,
        trunk: nn.Module,
        tasks: Sequence[Task],
        *,
        num_experts: int = 4,
        gate_input: GateInputKind | nn.Module = "auto",
        gate_stages: int = 1,
        reinit_experts: bool = True,
        example_input: Inputs | None = None,
    ) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("a multi-task model needs at least one task")
        self.tasks = list(tasks)
        self._last_gates = {}
        ex = example_batch(trunk, example_input, self.arch_name)
        out = probe(trunk, ex)
        assert isinstance(out, Tensor)
        self.num_experts = int(num_experts)
        self.expert_width = flat_width(out)
        self.experts = nn.ModuleList(make_experts(trunk, self.num_experts, reinit_experts))
        self.gate_features, self.gate_width = build_gate_input(
            trunk, gate_input, gate_stages, ex, self.arch_name
        )
        self.gates = nn.ModuleDict({t.name: self._make_gate(self.gate_width) for t in self.tasks})
        self.heads = nn.ModuleDict({t.name: t.make_head(self.expert_width) for t in self.tasks})

    # -- gates (DSelect-k overrides these two)
    def _make_gate(self, in_features: int) -> nn.Module:
        return nn.Linear(in_features, self.num_experts)

    def _gate(self, task: str, gate_in: Tensor) -> Tensor:
        return torch.softmax(self.gates[task](gate_in), dim=-1)

    # -- contract
    def encode(self, x: Inputs) -> Tensor:
        b = batch_len(x)
        parts = [expert(x).reshape(b, -1) for expert in self.experts]
        if self.gate_features is not None:
            parts.append(self.gate_features(x))
        return torch.cat(parts, dim=1)

    def decode(self, rep: Tensor, x: Inputs) -> dict[str, Tensor]:
        b = rep.shape[0]
        split = self.num_experts * self.expert_width
        outs = rep[:, :split].reshape(b, self.num_experts, self.expert_width)
        if self.gate_features is not None:
            gate_in = rep[:, split:]
        else:
            assert isinstance(x, Tensor)  # refused at construction otherwise
            gate_in = x.reshape(b, -1)
        result = {}
        for task in self.tasks:
            w = self._gate(task.name, gate_in.to(rep.dtype))
            self._record(task.name, w)
            mixed = torch.einsum("be,bed->bd", w.to(outs.dtype), outs)
            result[task.name] = self.heads[task.name](mixed)
        return result

    def shared_modules(self) -> list[nn.Module]:
        mods: list[nn.Module] = [self.experts]
        if self.gate_features is not None:
            mods.append(self.gate_features)
        return mods

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.gates[task], self.heads[task]]

    def expert_names(self) -> list[str]:
        """Labels of the entries of each ``gate_weights()`` vector."""
        return [f"expert{i}" for i in range(self.num_experts)]


@register_architecture(
    "mmoe",
    "multi-gate mixture of experts: copies of the trunk mixed by one softmax gate per task "
    "(Ma et al. 2018)",
)
def mmoe(
    trunk: nn.Module, tasks: Sequence[Task], *, example_input: Inputs | None = None, **options: object
) -> MMoE:
    return MMoE(trunk, tasks, example_input=example_input, **options)  # type: ignore[arg-type]
