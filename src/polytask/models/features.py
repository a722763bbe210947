"""What a trunk hands to the heads: the *feature spec* (vector, feature map or token sequence).

A trunk declares the shape of its output once, as a :class:`FeatureSpec`; every head is chosen from
the pair (task, feature spec), so a trunk of any kind works with any task that can be read off its
features:

``vector``    ``[B, D]``: tables, pooled CNNs, pooled text encoders. ``channels`` is ``D``.
``map``       ``[B, C, H, W]``: convolutional stages (``channels`` is ``C``; ``stride`` is how many
              input pixels one feature pixel covers, so a dense head knows how far to upsample).
``sequence``  ``[B, L, D]``: transformer encoders (``channels`` is ``D``). ``pooling`` says how a
              sequence-level head reads it: ``"cls"`` (the first position, for encoders that put a
              summary token there) or ``"mean"`` (over positions whose features are not all zero:
              encoders zero the padded positions, so no mask has to travel beside the features).
              ``summary_positions`` counts the leading positions the trunk adds in front of the
              input's tokens (the built-in transformer's CLS: 1): a token-level head skips them,
              so its output has exactly one position per input token and the labels align with
              the tokens the user gave. A trunk whose ids already hold their special tokens (a
              Hugging Face tokenizer's ``[CLS]``) adds none: 0.

Why a declared spec rather than shape sniffing at every forward: heads are built once, before any
training, and a trunk whose output cannot feed a task's head must fail *then*, naming both.
A trunk without a ``feature_spec`` attribute gets one inferred by :func:`infer_feature_spec` from
one forward pass on an example batch (2-D output: vector, 3-D: sequence, 4-D: map).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["FeatureKind", "FeatureSpec", "infer_feature_spec", "pool_to_vector"]

FeatureKind = Literal["vector", "map", "sequence"]
_NDIM = {"vector": 2, "sequence": 3, "map": 4}


@dataclass(frozen=True)
class FeatureSpec:
    """The trunk's output: its kind, width (channels) and, for maps, stride; for sequences, pooling
    and the summary positions it prepends to the tokens (see the module docstring)."""

    kind: FeatureKind
    channels: int
    stride: int = 1
    pooling: Literal["mean", "cls"] = "mean"
    summary_positions: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _NDIM:
            raise ValueError(f"feature kind must be one of {list(_NDIM)}, got {self.kind!r}")
        if self.channels < 1 or self.stride < 1:
            raise ValueError(f"feature spec needs channels >= 1 and stride >= 1, got {self}")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"sequence pooling must be 'mean' or 'cls', got {self.pooling!r}")
        if self.summary_positions < 0 or (self.summary_positions and self.kind != "sequence"):
            raise ValueError(
                "summary_positions (leading positions a trunk adds before the tokens) must be "
                f">= 0 and belongs to sequence features only, got {self}"
            )

    @property
    def ndim(self) -> int:
        return _NDIM[self.kind]

    def describe(self) -> str:
        shape = {"vector": "[B, {c}]", "map": "[B, {c}, H, W]", "sequence": "[B, L, {c}]"}
        return f"{self.kind} {shape[self.kind].format(c=self.channels)}"

    def check(self, features: Tensor, where: str = "trunk") -> None:
        """Raise naming ``where`` when ``features`` does not have the declared shape."""
        channel_dim = 1 if self.kind == "map" else -1
        if features.ndim != self.ndim or features.shape[channel_dim] != self.channels:
            raise ValueError(
                f"{where} declared {self.describe()} features but produced shape "
                f"{list(features.shape)}"
            )


def infer_feature_spec(trunk: nn.Module, example_input: object) -> FeatureSpec:
    """The trunk's declared ``feature_spec``, or one read off a forward pass on ``example_input``.

    Outputs with more than 4 dimensions are refused (say what to do) rather than flattened, since
    flattening a feature map silently would throw away the spatial layout a dense head needs.
    """
    declared = getattr(trunk, "feature_spec", None)
    if isinstance(declared, FeatureSpec):
        return declared
    if example_input is None:
        width = getattr(trunk, "out_features", None)
        if isinstance(width, int):
            return FeatureSpec("vector", width)
        raise ValueError(
            f"cannot tell what {type(trunk).__name__} outputs: give it a `feature_spec` "
            "(polytask.models.FeatureSpec) or `out_features` attribute, or pass an example input"
        )
    from polytask.data.batch import slice_inputs

    was_training = trunk.training
    trunk.eval()
    with torch.no_grad():
        out = trunk(slice_inputs(example_input, slice(0, 2)))
    trunk.train(was_training)
    if not isinstance(out, Tensor):
        raise ValueError(
            f"{type(trunk).__name__} returned {type(out).__name__}; a trunk returns one tensor "
            "(vector [B, D], sequence [B, L, D] or feature map [B, C, H, W])"
        )
    if out.ndim == 2:
        return FeatureSpec("vector", int(out.shape[1]))
    if out.ndim == 3:
        return FeatureSpec("sequence", int(out.shape[2]))
    if out.ndim == 4:
        return FeatureSpec("map", int(out.shape[1]))
    raise ValueError(
        f"{type(trunk).__name__} outputs shape {list(out.shape)}; a trunk returns a vector "
        "[B, D], a sequence [B, L, D] or a feature map [B, C, H, W] (wrap it to reshape)"
    )


def pool_to_vector(features: Tensor, spec: FeatureSpec) -> Tensor:
    """``[B, C]`` from any feature kind: global average pool (maps) or the spec's pooling (sequences)."""
    if spec.kind == "vector":
        return features
    if spec.kind == "map":
        return features.mean(dim=(2, 3))
    if spec.pooling == "cls":
        return features[:, 0]
    present = (features != 0).any(dim=-1, keepdim=True).to(features.dtype)
    return (features * present).sum(dim=1) / present.sum(dim=1).clamp(min=1)
