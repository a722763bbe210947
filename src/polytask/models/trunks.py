"""Built-in trunks: an MLP for tables and a small CNN for 28x28 images.

Both are a sequence of *stages* (``self.stages``) and expose ``forward_features`` returning every
stage's output: the small contract that lets Cross-stitch and MTAN work on any trunk that follows
it, a user's module included. No BatchNorm: batch statistics couple the samples of a batch, which
breaks per-sample Gramian computations and makes DDP results depend on the shard.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["MLP", "SmallCNN", "StagedTrunk"]


class StagedTrunk(nn.Module):
    """A trunk that is an ordered list of stages; ``forward`` runs them in order."""

    stages: nn.ModuleList
    stage_widths: list[int]
    out_features: int

    def forward_features(self, x: Tensor) -> list[Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


class MLP(StagedTrunk):
    """Fully connected trunk: each hidden layer (Linear, ReLU, dropout) is one stage."""

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        if in_features < 1 or not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"MLP needs in_features >= 1 and positive hidden sizes, got {hidden}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        stages: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers: list[nn.Module] = [nn.Linear(width, h)]
            if layer_norm:
                layers.append(nn.LayerNorm(h))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            stages.append(nn.Sequential(*layers))
            width = h
        self.stages = nn.ModuleList(stages)
        self.stage_widths = list(hidden)
        self.out_features = width
        self.in_features = in_features

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.reshape(x.shape[0], -1))

    def forward_features(self, x: Tensor) -> list[Tensor]:
        return super().forward_features(x.reshape(x.shape[0], -1))


class SmallCNN(StagedTrunk):
    """LeNet-style trunk for 1x28x28 images (the MultiMNIST encoder of Sener & Koltun 2018).

    Stages: conv 5x5 -> pool -> ReLU (10 ch), conv 5x5 -> pool -> ReLU (20 ch), flatten -> linear
    -> ReLU (``out_features``).
    """

    def __init__(
        self, in_channels: int = 1, channels: tuple[int, int] = (10, 20), out_features: int = 50
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.stages = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(in_channels, c1, 5), nn.MaxPool2d(2), nn.ReLU()),
                nn.Sequential(nn.Conv2d(c1, c2, 5), nn.MaxPool2d(2), nn.ReLU()),
                nn.Sequential(nn.Flatten(), nn.Linear(c2 * 4 * 4, out_features), nn.ReLU()),
            ]
        )
        self.stage_widths = [c1, c2, out_features]
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[-2:] != (28, 28):
            raise ValueError(f"SmallCNN expects [B, C, 28, 28] images, got {tuple(x.shape)}")
        return super().forward(x)
