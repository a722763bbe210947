"""Task heads, chosen from the pair (task, trunk feature spec).

=================  ================================================  ==============================
task layout        vector ``[B, D]``                                 map ``[B, C, H, W]`` /
                                                                     sequence ``[B, L, D]``
=================  ================================================  ==============================
``sample``         linear                                            pool (mean / CLS), then linear
``dense``          refused                                           map: upsampling decoder
                                                                     (:class:`DenseDecoder`)
``token``          refused                                           sequence: linear per token
                                                                     (summary positions skipped)
``boxes``          refused                                           map: detection head
                                                                     (:class:`DetectionHead`)
=================  ================================================  ==============================

A task's *layout* says what one target is: one value per sample (every classification and
regression of a table or an image), one per pixel (segmentation, depth), one per token, or a
padded list of boxes per image (detection: heatmaps and box regressions at the task's output
stride, :mod:`polytask.task_kinds.detection`). A task
that brings its own head factory (``Task.head``) gets the trunk's width and the features as they
are. A pair with no head raises before any training, naming the task and the feature spec.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from polytask.models.features import FeatureSpec, pool_to_vector
from polytask.tasks import Task

__all__ = [
    "DenseDecoder",
    "DetectionHead",
    "HeadError",
    "PooledHead",
    "TokenHead",
    "make_task_head",
    "task_layout",
]


class HeadError(ValueError):
    """No head can read this trunk's features for this task."""


def task_layout(task: Task) -> str:
    return str(getattr(task, "layout", "sample"))


class PooledHead(nn.Module):
    """Pool a feature map (global average) or a sequence (CLS / mean), then a linear layer."""

    def __init__(self, spec: FeatureSpec, out_features: int) -> None:
        super().__init__()
        self.spec = spec
        self.linear = nn.Linear(spec.channels, out_features)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(pool_to_vector(features, self.spec))


class TokenHead(nn.Module):
    """One prediction per input token: ``[B, S + L, D] -> [B, L, out]``.

    ``S`` is the spec's ``summary_positions``: positions the trunk prepends to the tokens (the
    built-in transformer's CLS). They summarise the sequence for sequence-level heads and belong
    to no token, so they are skipped here: the output then has one position per token id the user
    gave, and token labels are written for their own tokens, without a placeholder for the CLS.
    The summary position still feeds every token's prediction through attention.
    """

    def __init__(self, spec: FeatureSpec, out_features: int) -> None:
        super().__init__()
        self.skip = spec.summary_positions
        self.linear = nn.Linear(spec.channels, out_features)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features[:, self.skip :])

    def extra_repr(self) -> str:
        return f"skip={self.skip}" if self.skip else ""


class DenseDecoder(nn.Module):
    """A small upsampling decoder ``[B, C, h, w] -> [B, out, h*stride, w*stride]``.

    The shape of the per-task decoders of LibMTL's and MTAN's dense benchmarks: 3x3 conv + ReLU at
    the features' resolution, a 1x1 projection to the task's channels, then bilinear upsampling by
    the trunk's stride, so the output matches the input image's size (the targets' size).
    """

    def __init__(self, spec: FeatureSpec, out_features: int, hidden: int | None = None) -> None:
        super().__init__()
        width = hidden or max(16, min(256, spec.channels))
        self.stride = spec.stride
        self.body = nn.Sequential(
            nn.Conv2d(spec.channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, out_features, 1),
        )

    def forward(self, features: Tensor) -> Tensor:
        out = self.body(features)
        if self.stride == 1:
            return out
        size = (features.shape[-2] * self.stride, features.shape[-1] * self.stride)
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


class DetectionHead(nn.Module):
    """A CenterNet-style head ``[B, C, h, w] -> [B, classes + 4, h*S/s, w*S/s]``.

    The trunk's map (stride ``S``) is upsampled bilinearly to the task's output stride ``s``
    (``S / s`` must be a whole number), then a shared 3x3 conv + ReLU feeds two 1x1 convs: the
    class heatmaps (logits) and four box channels (width, height, centre offset x, y). Why one
    tensor out: a model's output is one tensor per task, and the kind splits it by channel. The
    heatmap bias starts at ``-log((1 - 0.1) / 0.1)`` (a prior of 0.1 per cell, as in CenterNet and
    RetinaNet), so the focal loss does not start from the huge loss of p = 0.5 everywhere.
    """

    def __init__(
        self, spec: FeatureSpec, num_classes: int, stride: int, hidden: int | None = None
    ) -> None:
        super().__init__()
        if stride < 1 or spec.stride % stride:
            raise HeadError(
                f"a detection head at output stride {stride} cannot read a feature map of stride "
                f"{spec.stride}: the trunk's stride must be a multiple of the task's (set the "
                f"task's stride option to a divisor of {spec.stride})"
            )
        width = hidden or max(32, min(128, spec.channels))
        self.scale = spec.stride // stride
        self.body = nn.Sequential(nn.Conv2d(spec.channels, width, 3, padding=1), nn.ReLU())
        self.heatmap = nn.Conv2d(width, num_classes, 1)
        self.boxes = nn.Conv2d(width, 4, 1)
        nn.init.constant_(self.heatmap.bias, -math.log((1 - 0.1) / 0.1))

    def forward(self, features: Tensor) -> Tensor:
        if self.scale > 1:
            features = F.interpolate(
                features, scale_factor=self.scale, mode="bilinear", align_corners=False
            )
        hidden = self.body(features)
        return torch.cat([self.heatmap(hidden), self.boxes(hidden)], dim=1)


def _box_head(task: Task, spec: FeatureSpec) -> DetectionHead:
    """The detection head of a ``boxes`` task: its kind gives the classes and output stride."""
    stride = (task.options or {}).get("stride", task.kind_spec.option_defaults.get("stride"))
    if task.num_classes is None or not isinstance(stride, int):
        raise HeadError(
            f"task {task.name!r} (boxes targets) needs num_classes and an integer stride option "
            f"for its detection head, got num_classes={task.num_classes}, stride={stride!r}"
        )
    try:
        return DetectionHead(spec, task.num_classes, stride)
    except HeadError as err:
        raise HeadError(f"task {task.name!r}: {err}") from None


def make_task_head(task: Task, spec: FeatureSpec) -> nn.Module:
    """The head of ``task`` on features described by ``spec``; :class:`HeadError` if none fits."""
    if task.head is not None:
        return task.head(spec.channels)
    layout = task_layout(task)
    out = task.output_dim
    if layout == "sample":
        if spec.kind == "vector":
            return nn.Linear(spec.channels, out)
        return PooledHead(spec, out)
    if layout == "dense" and spec.kind == "map":
        return DenseDecoder(spec, out)
    if layout == "token" and spec.kind == "sequence":
        return TokenHead(spec, out)
    if layout == "boxes" and spec.kind == "map":
        return _box_head(task, spec)
    needs = {
        "dense": "a feature map [B, C, H, W]",
        "token": "a token sequence [B, L, D]",
        "boxes": "a feature map [B, C, H, W]",
    }
    raise HeadError(
        f"task {task.name!r} ({layout} targets) needs {needs.get(layout, 'other features')}, but "
        f"the trunk gives {spec.describe()}; use a trunk with output='map' / a sequence "
        "encoder, or give the task its own head"
    )


@torch.no_grad()
def check_head_output(task: Task, head: nn.Module, features: Tensor) -> None:
    """One forward of ``head`` on example ``features``: a clear error if it fails."""
    try:
        head(features)
    except RuntimeError as err:
        raise HeadError(
            f"task {task.name!r}: its head cannot read the trunk's features of shape "
            f"{list(features.shape)}: {err}"
        ) from None
