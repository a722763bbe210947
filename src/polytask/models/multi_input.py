"""Several inputs, one trunk: an encoder per named input and a fusion module.

``inputs = {"smiles": ids [B, L], "fingerprint": bits [B, 2048]}`` goes through one encoder per key
(any trunk: a transformer over tokens, an MLP over bits, a CNN over an image); each encoder's
features are pooled to a vector (:func:`polytask.models.features.pool_to_vector`), projected to a
common width where the fusion needs one, and fused:

``concat``     ``[B, Σ D_k]``: the encoders' vectors side by side (no parameters of its own).
``sum``        ``[B, W]``: each vector projected to ``W`` and summed.
``gated``      ``[B, W]``: projections weighted per sample by a softmax gate over the inputs that
               reads all of them (so the model can lean on the more informative input per row).
``attention``  ``[B, W]``: the projections as a set of ``K`` tokens, one multi-head self-attention
               layer, then the mean over the tokens.

The fused vector is the shared representation: every parameter of every encoder and of the fusion
is shared by all tasks, so every balancer and engine mode (the representation mode included) works
as with one input. A missing input key raises naming the key and the keys the trunk expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from polytask.data.batch import Inputs
from polytask.models.features import FeatureSpec, infer_feature_spec, pool_to_vector
from polytask.models.registry import create_trunk, register_trunk

__all__ = ["FUSIONS", "MultiInputTrunk", "multi_input"]

Fusion = Literal["concat", "sum", "gated", "attention"]
FUSIONS = ("concat", "sum", "gated", "attention")


class MultiInputTrunk(nn.Module):
    """One encoder per named input, fused into one vector (see the module docstring).

    Args:
        encoders: input name -> trunk module (each declares or reveals its ``feature_spec``).
        fusion: ``concat``, ``sum``, ``gated`` or ``attention``.
        width: the common width ``W`` of the projections (``sum``, ``gated``, ``attention``);
            default the widest encoder's width.
        example_input: a batch of named inputs, to read the encoders' feature specs where they do
            not declare them.
        heads: attention heads (``attention`` only; must divide ``width``).
    """

    def __init__(
        self,
        encoders: Mapping[str, nn.Module],
        fusion: Fusion = "concat",
        width: int | None = None,
        example_input: Inputs | None = None,
        heads: int = 4,
    ) -> None:
        super().__init__()
        if not encoders:
            raise ValueError("multi_input needs at least one encoder")
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of: {', '.join(FUSIONS)}")
        if example_input is not None and not isinstance(example_input, dict):
            raise ValueError(
                "multi_input reads several named inputs (a dict of tensors); the data gives one "
                "tensor: use a single-input trunk, or return {name: tensor} from the data set"
            )
        self.names = list(encoders)
        self.encoders = nn.ModuleDict(dict(encoders))
        self.specs: dict[str, FeatureSpec] = {}
        for name, encoder in self.encoders.items():
            example = None
            if example_input is not None:
                if name not in example_input:
                    raise ValueError(
                        f"multi_input: encoder {name!r} has no input of that name; the data "
                        f"gives {sorted(example_input)}"
                    )
                example = example_input[name]
            self.specs[name] = infer_feature_spec(encoder, example)
        self.fusion = fusion
        widths = [s.channels for s in self.specs.values()]
        self.width = int(width or max(widths))
        if fusion == "concat":
            self.proj = None
            out = sum(widths)
        else:
            self.proj = nn.ModuleDict(
                {n: nn.Linear(self.specs[n].channels, self.width) for n in self.names}
            )
            out = self.width
        self.gate = nn.Linear(sum(widths), len(self.names)) if fusion == "gated" else None
        self.attention = None
        if fusion == "attention":
            if self.width % heads:
                raise ValueError(f"attention fusion: width {self.width} is not divisible by {heads} heads")
            self.attention = nn.MultiheadAttention(self.width, heads, batch_first=True)
        self.out_features = out
        self.feature_spec = FeatureSpec("vector", out)

    def forward(self, x: Inputs) -> Tensor:
        if not isinstance(x, dict):
            raise TypeError(
                f"multi_input expects a dict of named inputs {self.names}, got one "
                f"{type(x).__name__}"
            )
        missing = [n for n in self.names if n not in x]
        if missing:
            raise KeyError(f"multi_input: input(s) {missing} missing from the batch; it has {sorted(x)}")
        vectors = []
        for name in self.names:
            features = self.encoders[name](x[name])
            vectors.append(pool_to_vector(features, self.specs[name]).reshape(features.shape[0], -1))
        if self.proj is None:
            return torch.cat(vectors, dim=1)
        projected = torch.stack([self.proj[n](v) for n, v in zip(self.names, vectors, strict=True)], 1)
        if self.fusion == "sum":
            return projected.sum(dim=1)
        if self.fusion == "gated":
            assert self.gate is not None
            weights = torch.softmax(self.gate(torch.cat(vectors, dim=1)), dim=-1)
            return (weights.unsqueeze(-1) * projected).sum(dim=1)
        assert self.attention is not None
        attended, _ = self.attention(projected, projected, projected, need_weights=False)
        return attended.mean(dim=1)


def _encoder(
    name: str, spec: Any, example: Inputs | None, data_options: Mapping[str, Any]
) -> nn.Module:
    """Build the encoder of input ``name`` from ``{trunk: <name>, options: {...}}``.

    ``data_options`` are the options the data fixes for this input (e.g. ``vocab_size``); the
    config's own options win where both are given.
    """
    if not isinstance(spec, Mapping) or "trunk" not in spec:
        raise ValueError(
            f"multi_input encoder {name!r}: give {{trunk: <trunk name>, options: {{...}}}}, got {spec!r}"
        )
    unknown = set(spec) - {"trunk", "options"}
    if unknown:
        raise ValueError(f"multi_input encoder {name!r}: unknown key(s) {sorted(unknown)}")
    import inspect

    from polytask.models.registry import _TRUNKS

    options = dict(spec.get("options") or {})
    factory = _TRUNKS.get(spec["trunk"], (None, ""))[0]
    params = inspect.signature(factory).parameters if factory is not None else {}
    for key, value in data_options.items():
        if key in params:
            options.setdefault(key, value)
    if isinstance(example, dict) and name in example and "in_features" in params:
        options.setdefault("in_features", int(example[name][0].numel()))
    return create_trunk(spec["trunk"], **options)


@register_trunk(
    "multi_input",
    "one encoder per named input (any trunks) fused by concat / sum / gated / attention",
)
def multi_input(
    encoders: Mapping[str, Any],
    fusion: Fusion = "concat",
    width: int | None = None,
    heads: int = 4,
    example_input: Inputs | None = None,
    input_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> MultiInputTrunk:
    """``encoders: {input name: {trunk: <name>, options: {...}}}``; widths read from the data."""
    fixed = input_options or {}
    built = {
        name: _encoder(name, spec, example_input, fixed.get(name, {}))
        for name, spec in encoders.items()
    }
    return MultiInputTrunk(built, fusion=fusion, width=width, example_input=example_input, heads=heads)
