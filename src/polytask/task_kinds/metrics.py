"""Angular error of surface normals, as torchmetrics ``Metric`` classes (torchmetrics has none).

The surface-normal protocol of the dense multi-task literature (Eigen & Fergus 2015; MTAN, LibMTL
on NYUv2) reports, over every valid pixel of the split, the mean and median angle between the
predicted and the true normal in degrees, and the percentage of pixels within 11.25, 22.5 and 30
degrees. Each statistic is its own metric so that ``Task.metric_factories`` stays a flat
name -> factory mapping; each metric's states carry names of their own (``angle_sum_mean``,
``hits_11_25``...), because a ``MetricCollection`` merges metrics whose states have the same names
and values after the first batch into one compute group, and two thresholds that happened to count
the same pixels in the first batch would then share one count for the rest of the split.

Angles are computed in float64: ``acos`` of a float32 cosine near 1 cannot resolve angles below
about 0.03 degrees, which is the regime of a good prediction.
"""

from __future__ import annotations

import math

import torch
import torchmetrics
from torch import Tensor
from torch.nn import functional as F

__all__ = ["AngleWithin", "MeanAngularError", "MedianAngularError", "angles_degrees"]


def angles_degrees(preds: Tensor, target: Tensor) -> Tensor:
    """Angles in degrees (float64) between the rows of ``preds`` and ``target`` (``[N, 3]``)."""
    if preds.shape != target.shape or preds.ndim != 2:
        raise ValueError(
            f"angular error needs two [N, D] tensors of one shape, got {list(preds.shape)} and "
            f"{list(target.shape)}"
        )
    cos = F.cosine_similarity(preds.double(), target.double(), dim=1, eps=1e-12)
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


class MeanAngularError(torchmetrics.Metric):
    """Mean angle (degrees) between predicted and true normals over every pixel fed."""

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.add_state("angle_sum_mean", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("angle_count_mean", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        angles = angles_degrees(preds, target)
        self.angle_sum_mean += angles.sum()
        self.angle_count_mean += angles.numel()

    def compute(self) -> Tensor:
        if int(self.angle_count_mean) == 0:
            return torch.tensor(math.nan, dtype=torch.float64)
        return self.angle_sum_mean / self.angle_count_mean


class MedianAngularError(torchmetrics.Metric):
    """Median angle (degrees); even counts average the two middle angles (``numpy.median``).

    Keeps every angle (float32: 4 bytes per valid pixel of the split), as the median needs them.
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.add_state("angles_median", [], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.angles_median.append(angles_degrees(preds, target).float())  # type: ignore[attr-defined]

    def compute(self) -> Tensor:
        state = self.angles_median
        values = torch.cat(state) if isinstance(state, list) and state else state
        if not isinstance(values, Tensor) or values.numel() == 0:
            return torch.tensor(math.nan, dtype=torch.float64)
        values = values.reshape(-1).double()
        n = values.numel()
        # kthvalue, not torch.quantile: quantile refuses inputs above 16M elements
        upper = values.kthvalue(n // 2 + 1).values
        if n % 2:
            return upper
        return (values.kthvalue(n // 2).values + upper) / 2


class AngleWithin(torchmetrics.Metric):
    """Percentage (0-100) of pixels whose angle error is below ``threshold`` degrees."""

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, threshold: float, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if not threshold > 0:
            raise ValueError(f"angle threshold must be > 0 degrees, got {threshold}")
        self.threshold = float(threshold)
        tag = f"{threshold:g}".replace(".", "_")
        self._hits, self._total = f"hits_{tag}", f"total_{tag}"
        self.add_state(self._hits, torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state(self._total, torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        angles = angles_degrees(preds, target)
        setattr(self, self._hits, getattr(self, self._hits) + (angles < self.threshold).sum())
        setattr(self, self._total, getattr(self, self._total) + angles.numel())

    def compute(self) -> Tensor:
        total = int(getattr(self, self._total))
        if total == 0:
            return torch.tensor(math.nan, dtype=torch.float64)
        return 100.0 * getattr(self, self._hits).double() / total
