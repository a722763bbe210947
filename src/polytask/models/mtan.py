"""Multi-Task Attention Network (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019), simplified to work on any staged trunk.

A shared trunk (a copy of the one you pass, every stage shared) computes its stage outputs
``s_1 .. s_L``. Each task owns one soft-attention module per stage. At stage ``j`` task ``k``'s
mask is

    a_j = sigmoid(g_j^k([s_j, resize(t_{j-1})]))      (``a_1 = sigmoid(g_1^k(s_1))``)

and its attended feature is ``t_j = a_j ⊙ s_j``; the head reads the flattened ``t_L`` (a dense or
token task's head reads ``t_L`` unflattened: an upsampling decoder on a feature map). ``g`` is two
1x1 convolutions (written as linear layers over the channel dimension, so the same module serves
``[B, C]``, ``[B, C, L]`` and ``[B, C, H, W]`` features) with a ReLU between them, as in the paper
but without batch normalisation (it would couple the samples of a batch). ``resize`` brings the
previous attended feature to ``s_j``'s shape: adaptive average pooling between spatial features of
the same rank, global average pooling from spatial to flat, broadcasting from flat to spatial.

Simplifications compared with the paper: the mask reads the stage *output* (the paper reads a
feature inside the block and multiplies the block output), and there is no task-specific 3x3
convolution + pooling after each attended feature (``resize`` does the shape matching instead).
Features are assumed channels-first (``[B, C, *spatial]``).

Ownership and the representation-level gradient: the trunk is shared and the attention modules and
heads belong to their task. The task branches read *every* stage's output, so the shared
representation is the tuple of all stage outputs: ``encode`` returns them flattened and concatenated
(``[B, Σ_j |s_j|]``) and ``decode`` splits them back (by the shapes of the last ``encode``). All
shared parameters are upstream of that tensor and only task parameters downstream, so the
representation-level gradient (MGDA-UB) mode is exact: ``supports_representation_grad = True``.
Its Jacobian is as wide as all the stage outputs together, larger than a single final feature.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from polytask.data.batch import Inputs, batch_len
from polytask.models.base import MultiTaskModel
from polytask.models.features import infer_feature_spec
from polytask.models.heads import make_task_head
from polytask.models.mmoe import example_batch, flat_width, pool_features, staged_parts
from polytask.models.registry import register_architecture
from polytask.tasks import Task

__all__ = ["MTAN", "ChannelAttention", "match_shape"]

_ADAPTIVE_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def match_shape(prev: Tensor, like: Tensor) -> Tensor:
    """Bring ``prev`` ``[B, C', *S']`` to ``like``'s batch and spatial shape (channels kept)."""
    spatial = tuple(like.shape[2:])
    if not spatial:
        return pool_features(prev)
    if prev.ndim == 2:
        return prev.reshape(*prev.shape, *([1] * len(spatial))).expand(-1, -1, *spatial)
    if tuple(prev.shape[2:]) == spatial:
        return prev
    if prev.ndim == like.ndim and len(spatial) in _ADAPTIVE_POOL:
        return _ADAPTIVE_POOL[len(spatial)](prev, spatial)
    flat = pool_features(prev)
    return flat.reshape(*flat.shape, *([1] * len(spatial))).expand(-1, -1, *spatial)


class ChannelAttention(nn.Module):
    """Sigmoid mask from two 1x1 convolutions (linear layers over the channel dimension)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels, hidden)
        self.fc2 = nn.Linear(hidden, out_channels)

    def forward(self, h: Tensor) -> Tensor:
        spatial = h.ndim > 2
        if spatial:
            h = h.movedim(1, -1)
        a = torch.sigmoid(self.fc2(torch.relu(self.fc1(h))))
        return a.movedim(-1, 1) if spatial else a


class MTAN(MultiTaskModel):
    """Shared trunk + per-task soft attention at every stage (simplified MTAN).

    Args:
        trunk: a staged trunk (copied; the copy is shared).
        tasks: the tasks.
        attention_hidden: hidden width of the attention modules (default: the stage's channels).
        example_input: a batch, to read the shapes (optional for ``MLP`` and ``SmallCNN``).
    """

    supports_representation_grad = True

    def __init__(
        self,
        trunk: nn.Module,
        tasks: Sequence[Task],
        *,
        attention_hidden: int | None = None,
        example_input: Inputs | None = None,
    ) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("a multi-task model needs at least one task")
        if attention_hidden is not None and attention_hidden < 1:
            raise ValueError(f"mtan: attention_hidden must be >= 1, got {attention_hidden}")
        self.tasks = list(tasks)
        ex = example_batch(trunk, example_input, "mtan")
        _, _, feats = staged_parts(trunk, "mtan", ex)
        self.trunk = copy.deepcopy(trunk)
        channels = [int(f.shape[1]) for f in feats]
        self._shapes: list[tuple[int, ...]] = [tuple(f.shape[1:]) for f in feats]

        def attention(j: int) -> ChannelAttention:
            in_c = channels[j] + (channels[j - 1] if j > 0 else 0)
            return ChannelAttention(in_c, channels[j], attention_hidden or channels[j])

        self.attention = nn.ModuleDict(
            {t.name: nn.ModuleList(attention(j) for j in range(len(feats))) for t in self.tasks}
        )
        self.out_features = flat_width(feats[-1])
        # Per-pixel (and per-token) tasks read the attended last feature as it is, through the
        # head of their layout (an upsampling decoder on a map); per-sample tasks read it flat.
        last = infer_feature_spec(trunk, ex)  # the last stage's output: what t_L looks like
        self._unflat = {t.name for t in self.tasks if t.layout != "sample"}
        self.heads = nn.ModuleDict({
            t.name: make_task_head(t, last) if t.name in self._unflat
            else t.make_head(self.out_features)
            for t in self.tasks
        })

    def encode(self, x: Inputs) -> Tensor:
        feats = self.trunk.forward_features(x)
        self._shapes = [tuple(f.shape[1:]) for f in feats]
        b = batch_len(x)
        return torch.cat([f.reshape(b, -1) for f in feats], dim=1)

    def _split(self, rep: Tensor) -> list[Tensor]:
        sizes = [math.prod(s) for s in self._shapes]
        if sum(sizes) != rep.shape[1]:
            raise ValueError(
                f"MTAN.decode got a representation of width {rep.shape[1]}, but the last encode "
                f"produced stage outputs of shapes {self._shapes}; call encode on the same input"
            )
        b = rep.shape[0]
        return [
            part.reshape(b, *shape)
            for part, shape in zip(rep.split(sizes, dim=1), self._shapes, strict=True)
        ]

    def decode(self, rep: Tensor, x: Inputs) -> dict[str, Tensor]:
        feats = self._split(rep)
        result = {}
        for t in self.task_names:
            attended: Tensor | None = None
            for j, s in enumerate(feats):
                inp = s if attended is None else torch.cat([s, match_shape(attended, s)], dim=1)
                attended = self.attention[t][j](inp) * s
            assert attended is not None
            flat = t not in self._unflat
            result[t] = self.heads[t](attended.reshape(attended.shape[0], -1) if flat else attended)
        return result

    def shared_modules(self) -> list[nn.Module]:
        return [self.trunk]

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.attention[task], self.heads[task]]


@register_architecture(
    "mtan",
    "shared trunk with per-task soft-attention masks on every stage's output "
    "(Liu et al. 2019, simplified)",
)
def mtan(
    trunk: nn.Module, tasks: Sequence[Task], *, example_input: Inputs | None = None, **options: object
) -> MTAN:
    return MTAN(trunk, tasks, example_input=example_input, **options)  # type: ignore[arg-type]
