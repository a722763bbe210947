"""Dense kinds: one target per pixel (semantic segmentation, depth, surface normals).

Outputs come from a dense head (:class:`~polytask.models.heads.DenseDecoder`) as ``[B, C, H, W]``
at the targets' resolution. Missing labels are per pixel: the segmentation ``ignore_index``, an
invalid depth (NaN, or 0 when ``zero_is_missing``), a normal that is NaN or all zero.

Losses follow the per-label convention of every kind: a sample's loss is the *sum* over its
labelled pixels and the count is the number of labelled pixels, so the gradient engine's
``sum / count`` is the mean over the batch's labelled pixels (LibMTL and MTAN average over valid
pixels the same way). Metrics are accumulated over every labelled pixel of the split (not averaged
per batch), so they do not depend on the evaluation batch size.

A target whose spatial size differs from the head's output raises a :class:`LabelError` naming
the task and both shapes: resizing silently would score a prediction against the wrong pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torchmetrics
from torch import Tensor
from torch.nn import functional as F

from polytask.task_kinds import KindSpec, LabelError, MetricFactory
from polytask.task_kinds.metrics import AngleWithin, MeanAngularError, MedianAngularError
from polytask.task_kinds.sample import REGRESSION_LOSSES

if TYPE_CHECKING:
    from polytask.tasks import Task

__all__ = ["DepthKind", "NormalsKind", "SegmentationKind", "check_dense_output"]

#: Thresholds (degrees) of the surface-normal "within" metrics.
NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)


def _loc(where: str) -> str:
    return f" ({where})" if where else ""


def _pixel(flat_index: int, shape: torch.Size) -> str:
    """``sample s, pixel (y, x)`` of a flat index into a ``[B, ..., H, W]`` tensor."""
    b = flat_index // math.prod(shape[1:])
    rest = flat_index % (shape[-2] * shape[-1])
    return f"sample {b}, pixel (y={rest // shape[-1]}, x={rest % shape[-1]})"


def check_dense_output(task: Task, output: Tensor, target_hw: tuple[int, ...], channels: int) -> None:
    """Raise naming the task and both shapes unless ``output`` is ``[B, channels, *target_hw]``."""
    if output.ndim != 4 or output.shape[1] != channels or tuple(output.shape[2:]) != target_hw:
        raise LabelError(
            f"task {task.name!r}: the head outputs {list(output.shape)} but the targets need "
            f"[B, {channels}, {', '.join(map(str, target_hw))}] (spatial size of the targets "
            f"{'x'.join(map(str, target_hw))}); resize the targets to the input images, or give "
            "the model a dense head at that resolution"
        )


class SegmentationKind(KindSpec):
    """Semantic segmentation: a class per pixel, per-pixel cross-entropy, mIoU and pixel accuracy.

    ``ignore_index`` (the task's; ``-1`` by default, ``255`` as in the Cityscapes/NYUv2 files)
    marks unlabelled pixels. mIoU is torchmetrics' macro Jaccard index over the split's pixels: the
    mean IoU over the classes present in the truth or the predictions (a class absent from both
    counts for nothing, rather than as 0 or 1).
    """

    layout = "dense"
    description = "semantic segmentation: one class per pixel"
    target = "long [B, H, W] in [0, num_classes); ignore_index (-1 or 255) = unlabelled"
    loss_text = "per-pixel cross-entropy over labelled pixels"
    metric_names = ("miou", "pixel_accuracy")
    primary_higher_is_better = True
    index_labels = True

    def check(self, task: Task) -> None:
        super().check(task)
        if task.num_classes is None or task.num_classes < 2:
            raise ValueError(
                f"task {task.name!r}: kind {self.name} needs num_classes >= 2, got {task.num_classes}"
            )
        if 0 <= task.ignore_index < task.num_classes:
            raise ValueError(
                f"task {task.name!r}: ignore_index {task.ignore_index} is one of the classes "
                f"[0, {task.num_classes}); use a value outside them (-1 or 255)"
            )
        if isinstance(task.loss, str):
            raise ValueError(
                f"task {task.name!r}: kind {self.name} has no named losses; pass a callable "
                "(output [B, C, H, W], target [B, H, W]) -> per-pixel loss, or nothing"
            )

    def output_dim(self, task: Task) -> int:
        assert task.num_classes is not None
        return task.num_classes

    def validate_targets(self, task: Task, target: Tensor, where: str = "") -> None:
        loc = _loc(where)
        if target.ndim != 3:
            raise LabelError(
                f"task {task.name!r}{loc}: segmentation targets are [B, H, W] class indices, got "
                f"shape {list(target.shape)}"
            )
        if target.is_floating_point():
            if torch.isnan(target).any():
                raise LabelError(
                    f"task {task.name!r}{loc}: segmentation targets mark unlabelled pixels with "
                    f"ignore_index={task.ignore_index}, not NaN"
                )
            if (target != target.round()).any():
                raise LabelError(f"task {task.name!r}{loc}: segmentation targets must be integers")
        assert task.num_classes is not None
        bad = (target != task.ignore_index) & ((target < 0) | (target >= task.num_classes))
        if bad.any():
            first = int(bad.reshape(-1).nonzero()[0, 0])
            value = target.reshape(-1)[first].item()
            raise LabelError(
                f"task {task.name!r}{loc}: class {value} at {_pixel(first, target.shape)} is "
                f"outside [0, {task.num_classes}) and is not the ignore_index {task.ignore_index}"
            )

    def sample_losses(self, task: Task, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        assert task.num_classes is not None
        check_dense_output(task, output, tuple(target.shape[1:]), task.num_classes)
        mask = self.label_mask(task, target)
        count = int(mask.sum())
        y = torch.where(mask, target, torch.zeros_like(target)).long()
        if callable(task.loss):
            per_pixel = task.loss(output, y).reshape(mask.shape)
        else:
            per_pixel = F.cross_entropy(output, y, reduction="none")
        per = torch.where(mask, per_pixel, torch.zeros_like(per_pixel)).sum(dim=(1, 2))
        return per, count

    def chance_loss(self, task: Task) -> float | None:
        return math.log(task.num_classes or 2)

    def predict(self, task: Task, output: Tensor) -> Tensor:
        return output.argmax(dim=1)

    def metric_factories(self, task: Task) -> dict[str, MetricFactory]:
        from torchmetrics import classification as C

        n = task.num_classes
        assert n is not None
        return {
            "miou": lambda: C.MulticlassJaccardIndex(num_classes=n, average="macro"),
            "pixel_accuracy": lambda: C.MulticlassAccuracy(num_classes=n, average="micro"),
        }

    def update_metrics(
        self, task: Task, metrics: torchmetrics.MetricCollection, output: Tensor, target: Tensor
    ) -> int:
        mask = self.label_mask(task, target)
        fed = int(mask.sum())
        if fed == 0:
            return 0
        # class indices, not logits: [pixels] instead of [pixels, C] held by the metrics' update
        metrics.update(output.argmax(dim=1)[mask], target[mask].long())
        return fed


class DepthKind(KindSpec):
    """Depth: masked L1 on valid pixels; absolute and relative error over the split's valid pixels.

    NaN is always a missing pixel (not an error). ``options={"zero_is_missing": True}`` (the
    default) also treats 0 as missing, the convention of the NYUv2 and Cityscapes ``.npy`` files
    (no sensor return); set it to False when 0 is a real depth. The relative error is
    ``|pred - depth| / depth`` (torchmetrics' mean absolute percentage error, as a fraction).
    """

    layout = "dense"
    description = "depth (or any per-pixel distance): one value per pixel"
    target = "float [B, H, W] or [B, 1, H, W]; NaN (and 0 if zero_is_missing) = invalid"
    loss_text = "L1 over valid pixels (or mse, huber)"
    metric_names = ("abs_error", "rel_error")
    primary_higher_is_better = False
    option_defaults: ClassVar[Mapping[str, Any]] = {"zero_is_missing": True}

    def check(self, task: Task) -> None:
        super().check(task)
        if task.out_dim not in (None, 1):
            raise ValueError(f"task {task.name!r}: depth has one channel, got out_dim={task.out_dim}")
        if not isinstance(self.option(task, "zero_is_missing"), bool):
            raise ValueError(f"task {task.name!r}: option zero_is_missing must be True or False")

    def output_dim(self, task: Task) -> int:
        return 1

    def label_mask(self, task: Task, target: Tensor) -> Tensor:
        mask = ~torch.isnan(target) if target.is_floating_point() else torch.ones_like(
            target, dtype=torch.bool
        )
        if self.option(task, "zero_is_missing"):
            mask &= target != 0
        return mask

    @staticmethod
    def _as_4d(target: Tensor) -> Tensor:
        return target.unsqueeze(1) if target.ndim == 3 else target

    def validate_targets(self, task: Task, target: Tensor, where: str = "") -> None:
        loc = _loc(where)
        if not (target.ndim == 3 or (target.ndim == 4 and target.shape[1] == 1)):
            raise LabelError(
                f"task {task.name!r}{loc}: depth targets are [B, H, W] or [B, 1, H, W], got shape "
                f"{list(target.shape)}"
            )
        if target.dtype == torch.bool or target.is_complex():
            raise LabelError(f"task {task.name!r}{loc}: depth targets must be real numbers")
        t = target.float() if not target.is_floating_point() else target
        inf = torch.isinf(t)
        if inf.any():
            first = int(inf.reshape(-1).nonzero()[0, 0])
            raise LabelError(
                f"task {task.name!r}{loc}: infinite depth at {_pixel(first, t.shape)} "
                "(mark invalid pixels with NaN)"
            )
        negative = self.label_mask(task, t) & (t < 0)
        if negative.any():
            first = int(negative.reshape(-1).nonzero()[0, 0])
            raise LabelError(
                f"task {task.name!r}{loc}: negative depth {t.reshape(-1)[first].item()} at "
                f"{_pixel(first, t.shape)}; depth is a distance (mark invalid pixels with NaN)"
            )

    def sample_losses(self, task: Task, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        t = self._as_4d(target)
        check_dense_output(task, output, tuple(t.shape[2:]), 1)
        mask = self.label_mask(task, t)
        count = int(mask.sum())
        y = torch.where(mask, t.to(output.dtype), torch.zeros_like(output))
        if callable(task.loss):
            elementwise = task.loss(output, y).reshape(mask.shape)
        else:
            elementwise = REGRESSION_LOSSES[task.loss or "l1"](output, y)
        per = torch.where(mask, elementwise, torch.zeros_like(elementwise)).sum(dim=(1, 2, 3))
        return per, count

    def predict(self, task: Task, output: Tensor) -> Tensor:
        return output[:, 0]

    def metric_factories(self, task: Task) -> dict[str, MetricFactory]:
        from torchmetrics import regression as R

        return {"abs_error": R.MeanAbsoluteError, "rel_error": R.MeanAbsolutePercentageError}

    def update_metrics(
        self, task: Task, metrics: torchmetrics.MetricCollection, output: Tensor, target: Tensor
    ) -> int:
        t = self._as_4d(target)
        mask = self.label_mask(task, t)
        fed = int(mask.sum())
        if fed == 0:
            return 0
        metrics.update(output[mask], t[mask].to(output.dtype))
        return fed


class NormalsKind(KindSpec):
    """Surface normals: cosine loss on valid pixels; angle error statistics in degrees.

    A pixel is valid when its true normal is finite and not all zero (the NYUv2 files write 0
    where no normal exists). The loss per pixel is ``1 - cos(pred, truth)``, so the prediction's
    length is free (it is normalised by :meth:`predict`). True normals must be unit vectors (a
    length of 0.5-1.5 is accepted, to allow resampled maps): a map stored as an image (0-255 or
    0-1 per channel) is refused rather than trained on.
    """

    layout = "dense"
    description = "surface normals: a unit 3-vector per pixel"
    target = "float [B, 3, H, W] unit vectors; NaN or (0, 0, 0) = invalid"
    loss_text = "1 - cosine similarity over valid pixels"
    metric_names = ("mean_angle", "median_angle", "within_11_25", "within_22_5", "within_30")
    primary_higher_is_better = False

    def check(self, task: Task) -> None:
        super().check(task)
        if task.out_dim not in (None, 3):
            raise ValueError(f"task {task.name!r}: normals have 3 channels, got out_dim={task.out_dim}")
        if isinstance(task.loss, str):
            raise ValueError(f"task {task.name!r}: kind {self.name} has no named losses")

    def output_dim(self, task: Task) -> int:
        return 3

    def label_mask(self, task: Task, target: Tensor) -> Tensor:
        """``[B, H, W]``: pixels whose normal is finite and not all zero."""
        return torch.isfinite(target).all(dim=1) & (target != 0).any(dim=1)

    def validate_targets(self, task: Task, target: Tensor, where: str = "") -> None:
        loc = _loc(where)
        if target.ndim != 4 or target.shape[1] != 3:
            raise LabelError(
                f"task {task.name!r}{loc}: normal targets are [B, 3, H, W], got shape "
                f"{list(target.shape)}"
            )
        if not target.is_floating_point():
            raise LabelError(f"task {task.name!r}{loc}: normal targets must be floats in [-1, 1]")
        inf = torch.isinf(target).any(dim=1)
        if inf.any():
            first = int(inf.reshape(-1).nonzero()[0, 0])
            raise LabelError(
                f"task {task.name!r}{loc}: infinite normal at {_pixel(first, inf.shape)} "
                "(mark invalid pixels with NaN or 0)"
            )
        mask = self.label_mask(task, target)
        norm = torch.linalg.vector_norm(torch.nan_to_num(target.double()), dim=1)
        bad = mask & ((norm < 0.5) | (norm > 1.5))
        if bad.any():
            first = int(bad.reshape(-1).nonzero()[0, 0])
            raise LabelError(
                f"task {task.name!r}{loc}: the normal at {_pixel(first, bad.shape)} has length "
                f"{norm.reshape(-1)[first].item():.4g}; normals are unit vectors in [-1, 1] "
                "(a map stored as an image, 0-255 or 0-1, must be mapped to [-1, 1] first)"
            )

    def sample_losses(self, task: Task, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        check_dense_output(task, output, tuple(target.shape[2:]), 3)
        mask = self.label_mask(task, target)
        count = int(mask.sum())
        y = torch.where(mask.unsqueeze(1), target.to(output.dtype), torch.zeros_like(output))
        if callable(task.loss):
            per_pixel = task.loss(output, y).reshape(mask.shape)
        else:
            per_pixel = 1.0 - F.cosine_similarity(output, y, dim=1, eps=1e-8)
        per = torch.where(mask, per_pixel, torch.zeros_like(per_pixel)).sum(dim=(1, 2))
        return per, count

    def chance_loss(self, task: Task) -> float | None:
        return 1.0  # E[1 - cos] of a direction drawn uniformly on the sphere

    def predict(self, task: Task, output: Tensor) -> Tensor:
        return F.normalize(output, dim=1)

    def metric_factories(self, task: Task) -> dict[str, MetricFactory]:
        factories: dict[str, MetricFactory] = {
            "mean_angle": MeanAngularError,
            "median_angle": MedianAngularError,
        }
        for threshold in NORMAL_THRESHOLDS:
            name = "within_" + f"{threshold:g}".replace(".", "_")
            factories[name] = lambda t=threshold: AngleWithin(t)
        return factories

    def update_metrics(
        self, task: Task, metrics: torchmetrics.MetricCollection, output: Tensor, target: Tensor
    ) -> int:
        mask = self.label_mask(task, target)
        fed = int(mask.sum())
        if fed == 0:
            return 0
        pred = output.permute(0, 2, 3, 1)[mask]
        metrics.update(pred, target.permute(0, 2, 3, 1)[mask].to(pred.dtype))
        return fed
