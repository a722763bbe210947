"""A native ResNet trunk (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

Written here rather than taken from torchvision so that the image trunk needs nothing beyond torch
(torchvision pins a torch build of its own) and so that it follows polytask's stage contract and
feature spec directly.

Layout: BasicBlock stages of widths ``w, 2w, 4w, 8w`` (``w = width``), the first block of stages
2-4 halving the resolution. Depths 18 and 34 use the paper's block counts ``(2, 2, 2, 2)`` and
``(3, 4, 6, 3)``; depth 10 (one block per stage) is a cheap variant for small data and tests.

Stem: ``small_input=True`` is a 3x3 convolution of stride 1 without max-pooling (CIFAR-sized
images: an ImageNet stem would shrink 32x32 inputs to 1x1 by the last stage); ``False`` is the
ImageNet stem, a 7x7 convolution of stride 2 followed by a 3x3 max-pool of stride 2. The output
stride is therefore 8 (small) or 32 (ImageNet).

Stages (the contract of :class:`~polytask.models.StagedTrunk`): ``stem + layer1``, ``layer2``,
``layer3``, ``layer4``, and, for ``output="vector"``, a fifth stage that average-pools globally and
flattens to ``[B, 8w]``. ``output="map"`` ends at ``layer4``'s ``[B, 8w, H/s, W/s]`` map (stride
``s`` above), for dense heads.

Normalisation (``norm``): ``"group"`` (default) is GroupNorm; ``"batch"`` is BatchNorm; ``"none"``
uses biased convolutions and no normalisation. GroupNorm is the default because BatchNorm's batch
statistics couple the samples of a batch: a sample's output, and so its loss and gradient, depend on
the other samples, which breaks per-sample Gramians (the Jacobian rows are not per-sample any more)
and makes DDP results depend on how the batch is sharded over processes. BatchNorm is offered for
comparison with published ResNet numbers.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from polytask.models.features import FeatureSpec
from polytask.models.freeze import StageSelection, freeze_stages
from polytask.models.registry import register_trunk
from polytask.models.trunks import StagedTrunk

__all__ = ["LAYOUTS", "BasicBlock", "ResNet", "group_count", "make_norm"]

NormKind = Literal["batch", "group", "none"]
LAYOUTS: dict[int, tuple[int, int, int, int]] = {
    10: (1, 1, 1, 1),
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
}


def group_count(channels: int, max_groups: int = 32) -> int:
    """GroupNorm groups for ``channels``: the most groups (at most 32) of at least 2 channels each.

    Why not always 32: narrow ResNets (``width=8`` for tests and small data) have fewer than 64
    channels, and a group of one channel is instance norm, which throws away the per-channel
    contrast a small image trunk relies on.
    """
    for g in range(min(max_groups, channels // 2), 0, -1):
        if channels % g == 0:
            return g
    return 1


def make_norm(kind: NormKind, channels: int) -> nn.Module:
    """The normalisation layer of ``kind`` for ``channels`` (Identity for ``"none"``)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'group' or 'none', got {kind!r}")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (a 1x1 projection when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: NormKind) -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=bias)
        self.norm1 = make_norm(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=bias)
        self.norm2 = make_norm(norm, out_channels)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=bias),
                make_norm(norm, out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class ResNet(StagedTrunk):
    """ResNet-10/18/34 image trunk with BasicBlocks; see the module docstring for the options.

    Args:
        depth: 10, 18 or 34 (block layouts in :data:`LAYOUTS`).
        width: channels of the first stage (64 in the paper); later stages double it.
        in_channels: channels of the input images.
        small_input: the stride-1 3x3 stem without max-pool, for images of about 32x32 or less.
        norm: ``"group"`` (default), ``"batch"`` or ``"none"``.
        output: ``"vector"`` (``[B, 8w]``, pooled) or ``"map"`` (``[B, 8w, H/s, W/s]``).
        freeze: stages to freeze after construction (see
            :func:`~polytask.models.freeze.freeze_stages`): an int (the first n), a list of indices
            or ``"all"``.
    """

    def __init__(
        self,
        depth: int = 18,
        width: int = 64,
        in_channels: int = 3,
        small_input: bool = True,
        norm: NormKind = "group",
        output: Literal["vector", "map"] = "vector",
        freeze: StageSelection | None = None,
    ) -> None:
        super().__init__()
        if depth not in LAYOUTS:
            raise ValueError(f"ResNet depth must be one of {sorted(LAYOUTS)}, got {depth}")
        if width < 1 or in_channels < 1:
            raise ValueError(
                f"ResNet needs width >= 1 and in_channels >= 1, got {width}, {in_channels}"
            )
        if output not in ("vector", "map"):
            raise ValueError(f"ResNet output must be 'vector' or 'map', got {output!r}")
        make_norm(norm, 2)  # validates `norm` before any layer is built
        self.depth, self.width, self.in_channels = depth, width, in_channels
        self.small_input, self.norm, self.output = small_input, norm, output

        bias = norm == "none"
        stem: list[nn.Module]
        if small_input:
            stem = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=bias)]
            stem_stride = 1
        else:
            stem = [nn.Conv2d(in_channels, width, 7, 2, 3, bias=bias)]
            stem_stride = 4  # the max-pool below halves once more
        stem += [make_norm(norm, width), nn.ReLU(inplace=True)]
        if not small_input:
            stem.append(nn.MaxPool2d(3, 2, 1))

        widths = [width * 2**i for i in range(4)]
        layers: list[nn.Module] = []
        prev = width
        for i, (w, blocks) in enumerate(zip(widths, LAYOUTS[depth], strict=True)):
            first_stride = 1 if i == 0 else 2
            layers.append(self._layer(prev, w, blocks, first_stride, norm))
            prev = w
        stages: list[nn.Module] = [nn.Sequential(*stem, layers[0]), *layers[1:]]
        self.stage_widths = list(widths)
        out_stride = stem_stride * 8
        if output == "vector":
            stages.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
            self.stage_widths.append(widths[-1])
            self.out_features = widths[-1]
            self.feature_spec = FeatureSpec("vector", widths[-1])
        else:
            self.feature_spec = FeatureSpec("map", widths[-1], stride=out_stride)
        self.stages = nn.ModuleList(stages)
        self._init_weights()
        if freeze is not None:
            freeze_stages(self, freeze)

    @staticmethod
    def _layer(in_ch: int, out_ch: int, blocks: int, stride: int, norm: NormKind) -> nn.Sequential:
        mods = [BasicBlock(in_ch, out_ch, stride, norm)]
        mods += [BasicBlock(out_ch, out_ch, 1, norm) for _ in range(blocks - 1)]
        return nn.Sequential(*mods)

    def _init_weights(self) -> None:
        """He initialisation for convolutions (the paper's), unit scale and zero shift for norms."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"ResNet expects images [B, {self.in_channels}, H, W], got {got}")

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return super().forward(x)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        self._check(x)
        return super().forward_features(x)


register_trunk(
    "resnet",
    "native ResNet-10/18/34 for images (options: depth, width, in_channels, small_input, norm, "
    "output=vector|map, freeze)",
)(ResNet)
