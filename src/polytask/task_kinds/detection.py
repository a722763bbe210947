"""Object detection as a task kind: centres on a heatmap, box size and offset read at the centre.

The detector follows "Objects as Points" (Zhou, Wang & Krähenbühl 2019, CenterNet): the head
(:class:`~polytask.models.heads.DetectionHead`) outputs, at the task's output ``stride`` (4 by
default), one heatmap channel per class plus four regression channels. An object is the peak of
its class's heatmap at its box centre; the box width and height and the sub-cell offset of the
centre are regressed at that cell only. Why this design in a multi-task library: it needs no
anchors, no proposals and no non-differentiable matching, so the loss is a plain per-image sum
that the gradient engine can differentiate per sample like every other kind, and the head is a
small convolution on the shared feature map beside the segmentation and depth decoders.

Target layout (``boxes``), fixed-shape so that the existing collate stacks it:

* one ``float32 [K, 5]`` tensor per image, a row per box: ``(class, x0, y0, x1, y1)`` with the
  corners as pixel edges of the input image (``x1 - x0`` is the width in pixels, as in
  torchmetrics' ``xyxy``) and ``class`` in ``[0, num_classes)``;
* rows whose class is ``-1`` are padding (``K`` is the most boxes an image of the data has;
  their coordinates are ignored): an image annotated with *zero* boxes is all padding, and it
  still teaches the heatmap where no centre is;
* an image whose *annotation is missing* is all NaN: it contributes an exact zero to the loss and
  is left out of the metrics. A partly NaN image is refused by :meth:`DetectionKind.validate_targets`.

Head output: ``[B, num_classes + 4, H / stride, W / stride]``: heatmap logits, then the box width
and height in output cells, then the centre's offset (x, y) within its cell.

Loss per image (summed over its cells, divided by the number of objects in the batch's labelled
images, at least 1, as CenterNet normalises): the penalty-reduced focal loss on the heatmap
(``alpha = 2``, ``beta = 4``, CornerNet's variant) against Gaussians splatted at the centres, plus
``size_weight`` (0.1) x L1 of the size and L1 of the offset at each centre cell. Two objects of a
class whose centres fall into one cell share that cell's peak; the size and offset targets there
are the last object's.

Prediction (:meth:`DetectionKind.predict`): the ``max_detections`` highest local maxima (3x3) of
the heatmaps over all classes, decoded to ``[B, max_detections, 6]`` rows ``(x0, y0, x1, y1,
score, class)`` in pixels of the input image, clipped to it.

Metrics: COCO box mAP (IoU 0.50:0.95) and mAP@0.5 over every labelled image of the split, from
pycocotools' ``COCOeval`` (:class:`BoxMeanAP`; ``pip install 'polytask[detection]'``). Why not
``torchmetrics.detection.MeanAveragePrecision``: it refuses to run without torchvision, and no
torchvision build matches the CPU torch the project pins; :class:`BoxMeanAP` runs the same COCO
evaluation (its ``pycocotools`` backend) as a torchmetrics ``Metric`` without it. Higher is better.
Checked once against ``MeanAveragePrecision`` (torchvision's ``box_convert`` stood in by its
three-line formula) on random boxes: equal to 1e-8 when given torchmetrics' recall and IoU
thresholds, which it rounds to float32 (``torch.linspace(...).tolist()``); with COCO's own
float64 thresholds, used here, the two differ by up to 0.001 mAP where a recall lands exactly on
a rounded threshold.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torchmetrics
from torch import Tensor
from torch.nn import functional as F

from polytask.task_kinds import KindSpec, LabelError, MetricFactory

if TYPE_CHECKING:
    from polytask.tasks import Task

__all__ = [
    "BOX_COLUMNS",
    "BoxMeanAP",
    "DetectionKind",
    "EncodedBoxes",
    "box_targets",
    "decode_detections",
    "encode_boxes",
    "gaussian_radius",
]

#: The columns of one row of a detection target.
BOX_COLUMNS = ("class", "x0", "y0", "x1", "y1")
#: The class value of a padding row.
PAD = -1.0
#: IoU the CenterNet radius keeps between a box and one whose corners moved by the radius.
MIN_OVERLAP = 0.7
_FOCAL_ALPHA = 2.0
_FOCAL_BETA = 4.0
_EXTRA_HINT = "pip install 'polytask[detection]'"


def _loc(where: str) -> str:
    return f" ({where})" if where else ""


def _image_size(task: Task) -> tuple[int, int]:
    """``(H, W)`` from the task's ``image_size`` option (one int means a square image)."""
    size = (task.options or {}).get("image_size")
    if isinstance(size, int):
        return size, size
    assert isinstance(size, Sequence)
    return int(size[0]), int(size[1])


# ---------------------------------------------------------------------------------- geometry
def gaussian_radius(width: Tensor, height: Tensor, min_overlap: float = MIN_OVERLAP) -> Tensor:
    """The largest corner displacement ``r`` that keeps IoU >= ``min_overlap`` with the box.

    Three ways a box can move by ``r`` (CenterNet's construction, re-derived here): one corner
    moves inwards by ``r`` in x and y and the other outwards (a shift, ``(w - r)(h - r)`` of
    overlap), both corners move inwards (a shrink, ``(w - 2r)(h - 2r)``), or outwards (a growth,
    ``(w + 2r)(h + 2r)``). Each gives a quadratic in ``r`` whose smaller root is where IoU falls
    to ``min_overlap``; the radius is the smallest of the three, so every case stays above it.
    """
    w, h, o = width.double(), height.double(), float(min_overlap)
    s, p = w + h, w * h
    shift = (s - torch.sqrt((s * s - 4 * (p - 2 * o * p / (1 + o))).clamp(min=0))) / 2
    shrink = (s - torch.sqrt((s * s - 4 * p * (1 - o)).clamp(min=0))) / 4
    grow = (-s + torch.sqrt(s * s + 4 * p * (1 / o - 1))) / 4
    return torch.minimum(torch.minimum(shift, shrink), grow).clamp(min=0).to(width.dtype)


class EncodedBoxes:
    """The dense training targets of a batch of box targets, at the head's resolution.

    ``heatmap [B, C, h, w]`` (1 exactly at each centre cell, Gaussians around it), ``regression
    [B, 4, h, w]`` (width, height in cells and centre offset x, y; zero off centres),
    ``centres [B, h, w]`` (bool) and ``objects [B]`` (boxes per image).
    """

    __slots__ = ("centres", "heatmap", "objects", "regression")

    def __init__(self, heatmap: Tensor, regression: Tensor, centres: Tensor, objects: Tensor):
        self.heatmap, self.regression, self.centres, self.objects = (
            heatmap, regression, centres, objects
        )


def box_targets(target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(image, class, corners)`` of the real boxes of ``[B, K, 5]`` targets (NaN images, padding
    rows and the rest skipped): ``[N]`` long, ``[N]`` long, ``[N, 4]`` float."""
    finite = torch.isfinite(target).all(dim=2)
    real = finite & (target[..., 0] >= 0)
    image, row = real.nonzero(as_tuple=True)
    boxes = target[image, row]
    return image, boxes[:, 0].long(), boxes[:, 1:5].float()


def encode_boxes(
    target: Tensor, num_classes: int, out_hw: tuple[int, int], stride: int
) -> EncodedBoxes:
    """Splat the centres of ``[B, K, 5]`` pixel boxes onto ``[B, C, *out_hw]`` heatmaps.

    A centre ``c`` (in cells, ``(x0 + x1) / 2 / stride``) lands in cell ``floor(c)``, clipped to
    the map; its Gaussian has ``sigma = (2r + 1) / 6`` for the integer radius ``r`` of
    :func:`gaussian_radius` and is cut off beyond ``r`` cells, so the peak is exactly 1 and only
    centre cells are positives of the focal loss. Overlapping Gaussians of one class keep their
    maximum.
    """
    b = target.shape[0]
    h, w = out_hw
    device = target.device
    image, cls, corners = box_targets(target)
    heat = torch.zeros(b * num_classes, h * w, device=device)
    regression = torch.zeros(b, 4, h, w, device=device)
    centres = torch.zeros(b, h, w, dtype=torch.bool, device=device)
    objects = torch.bincount(image, minlength=b) if image.numel() else torch.zeros(
        b, dtype=torch.long, device=device
    )
    if image.numel() == 0:
        return EncodedBoxes(heat.view(b, num_classes, h, w), regression, centres, objects)
    cells = corners / stride
    size = cells[:, 2:] - cells[:, :2]  # width, height in cells
    centre = (cells[:, :2] + cells[:, 2:]) / 2
    cx = centre[:, 0].floor().long().clamp(0, w - 1)
    cy = centre[:, 1].floor().long().clamp(0, h - 1)
    radius = gaussian_radius(size[:, 0], size[:, 1]).floor()
    sigma = (2 * radius + 1) / 6
    dx = torch.arange(w, device=device)[None, :] - cx[:, None]  # [N, w]
    dy = torch.arange(h, device=device)[None, :] - cy[:, None]  # [N, h]
    gx = torch.where(dx.abs() <= radius[:, None], -(dx**2) / (2 * sigma[:, None] ** 2), -math.inf)
    gy = torch.where(dy.abs() <= radius[:, None], -(dy**2) / (2 * sigma[:, None] ** 2), -math.inf)
    gauss = torch.exp(gy[:, :, None] + gx[:, None, :]).reshape(-1, h * w)  # [N, h * w]
    rows = (image * num_classes + cls)[:, None].expand(-1, h * w)
    heat.scatter_reduce_(0, rows, gauss, reduce="amax", include_self=True)
    offset = centre - torch.stack([cx, cy], dim=1).to(centre.dtype)
    regression[image, :, cy, cx] = torch.cat([size, offset], dim=1)
    centres[image, cy, cx] = True
    return EncodedBoxes(heat.view(b, num_classes, h, w), regression, centres, objects)


@torch.no_grad()
def decode_detections(
    output: Tensor, num_classes: int, stride: int, image_hw: tuple[int, int], top_k: int
) -> Tensor:
    """``[B, k, 6]`` detections ``(x0, y0, x1, y1, score, class)`` in pixels from head outputs.

    Peaks are cells that are the maximum of their 3x3 neighbourhood in their class's heatmap
    (CenterNet's max-pool in place of box NMS); the ``top_k`` highest over all classes are kept,
    whatever their score, which is what mAP's ranking expects.
    """
    b, _, h, w = output.shape
    heat = torch.sigmoid(output[:, :num_classes].float())
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    k = min(int(top_k), num_classes * h * w)
    scores, index = peaks.reshape(b, -1).topk(k, dim=1)
    cls = index // (h * w)
    cell = index % (h * w)
    ys, xs = cell // w, cell % w
    reg = output[:, num_classes : num_classes + 4].float().reshape(b, 4, h * w)
    at = reg.gather(2, cell[:, None, :].expand(b, 4, k))  # [B, 4, k]
    width, height = at[:, 0].clamp(min=0) * stride, at[:, 1].clamp(min=0) * stride
    cx = (xs.to(at.dtype) + at[:, 2]) * stride
    cy = (ys.to(at.dtype) + at[:, 3]) * stride
    img_h, img_w = image_hw
    x0 = (cx - width / 2).clamp(0, img_w)
    x1 = (cx + width / 2).clamp(0, img_w)
    y0 = (cy - height / 2).clamp(0, img_h)
    y1 = (cy + height / 2).clamp(0, img_h)
    return torch.stack([x0, y0, x1, y1, scores, cls.to(at.dtype)], dim=2)


# ---------------------------------------------------------------------------------- metric
def _require_pycocotools() -> Any:
    try:
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"detection mAP needs pycocotools: {_EXTRA_HINT} ({err})"
        ) from None
    return COCOeval


class BoxMeanAP(torchmetrics.Metric):
    """COCO box mean average precision over every image fed, by pycocotools' ``COCOeval``.

    ``iou_thresholds=None`` is COCO's mAP (IoU 0.50, 0.55, ..., 0.95); ``[0.5]`` is mAP@0.5. As in
    COCO (and torchmetrics), AP is the 101-point interpolated precision averaged over the classes
    that have at least one true box, at up to 100 detections per image, boxes of every area. The
    states hold every image's boxes, so a collection's mAP and mAP@0.5 share one copy of them
    (torchmetrics' compute groups). A split without any true box has no mAP: NaN, with a warning.
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, iou_thresholds: Sequence[float] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _require_pycocotools()
        self.iou_thresholds = (
            [0.5 + 0.05 * i for i in range(10)] if iou_thresholds is None
            else [float(t) for t in iou_thresholds]
        )
        for name in ("det_boxes", "det_scores", "det_labels", "true_boxes", "true_labels"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: Sequence[Mapping[str, Tensor]], target: Sequence[Mapping[str, Tensor]]) -> None:
        """``preds``: per image ``boxes [k, 4]`` (xyxy pixels), ``scores [k]``, ``labels [k]``;
        ``target``: per image ``boxes [m, 4]``, ``labels [m]`` (m may be 0)."""
        if len(preds) != len(target):
            raise ValueError(f"BoxMeanAP: {len(preds)} predicted images for {len(target)} true ones")
        for p, t in zip(preds, target, strict=True):
            self.det_boxes.append(p["boxes"].detach().float().reshape(-1, 4).cpu())  # type: ignore[attr-defined]
            self.det_scores.append(p["scores"].detach().float().reshape(-1).cpu())  # type: ignore[attr-defined]
            self.det_labels.append(p["labels"].detach().long().reshape(-1).cpu())  # type: ignore[attr-defined]
            self.true_boxes.append(t["boxes"].detach().float().reshape(-1, 4).cpu())  # type: ignore[attr-defined]
            self.true_labels.append(t["labels"].detach().long().reshape(-1).cpu())  # type: ignore[attr-defined]

    def compute(self) -> Tensor:
        import contextlib
        import io

        import numpy as np
        from pycocotools.coco import COCO

        COCOeval = _require_pycocotools()
        true_labels: list[Tensor] = self.true_labels  # type: ignore[assignment]
        if not any(t.numel() for t in true_labels):
            warnings.warn("BoxMeanAP: no true box in the images fed; mAP is undefined (NaN)",
                          stacklevel=2)
            return torch.tensor(math.nan, dtype=torch.float64)
        det_labels: list[Tensor] = self.det_labels  # type: ignore[assignment]
        classes = sorted({int(c) for t in (*true_labels, *det_labels) for c in t.tolist()})

        def dataset(boxes: list[Tensor], labels: list[Tensor], scores: list[Tensor] | None) -> COCO:
            annotations = []
            for image, (bx, lb) in enumerate(zip(boxes, labels, strict=True)):
                for j, (box, label) in enumerate(zip(bx.tolist(), lb.tolist(), strict=True)):
                    w, h = box[2] - box[0], box[3] - box[1]
                    ann = {
                        "id": len(annotations) + 1,  # COCOeval reads id 0 as "unmatched"
                        "image_id": image, "category_id": int(label),
                        "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0,
                    }
                    if scores is not None:
                        ann["score"] = float(scores[image][j])
                    annotations.append(ann)
            coco = COCO()
            coco.dataset = {
                "images": [{"id": i} for i in range(len(boxes))],
                "annotations": annotations,
                "categories": [{"id": c} for c in classes],
            }
            with contextlib.redirect_stdout(io.StringIO()):
                coco.createIndex()
            return coco

        truth = dataset(self.true_boxes, true_labels, None)  # type: ignore[arg-type]
        found = dataset(self.det_boxes, det_labels, self.det_scores)  # type: ignore[arg-type]
        evaluator = COCOeval(truth, found, iouType="bbox")
        evaluator.params.iouThrs = np.array(self.iou_thresholds, dtype=np.float64)
        evaluator.params.areaRng = [[0.0, 1e10]]  # every area: the only range reported
        evaluator.params.areaRngLbl = ["all"]
        evaluator.params.maxDets = [100]
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
        precision = evaluator.eval["precision"]  # [iou, recall, class, area, max dets]
        valid = precision[..., 0, -1] > -1  # classes without a true box are -1: left out
        if not valid.any():
            return torch.tensor(math.nan, dtype=torch.float64)
        return torch.tensor(float(precision[..., 0, -1][valid].mean()), dtype=torch.float64)


# ---------------------------------------------------------------------------------- the kind
class DetectionKind(KindSpec):
    """Boxes per image: CenterNet heatmap, size and offset; COCO mAP and mAP@0.5 (module docs).

    Options: ``image_size`` (``[H, W]`` of the input images, required: boxes are checked against
    it and the head's output must be ``image_size / stride``), ``stride`` (output stride of the
    head, default 4; it must divide ``image_size`` and the trunk's stride), ``max_detections``
    (peaks decoded per image, default 100, COCO's limit) and ``size_weight`` (weight of the size
    L1 against the focal loss, default 0.1 as in CenterNet).
    """

    layout = "boxes"
    description = "object detection: class + box per object (CenterNet: centre heatmap, size, offset)"
    target = (
        "float [B, K, 5] rows (class, x0, y0, x1, y1) in pixels; class -1 = padding row; "
        "an image all NaN = missing annotation"
    )
    loss_text = "focal loss on Gaussian centre heatmaps + L1 of box size and offset at centres"
    metric_names = ("map", "map_50")
    primary_higher_is_better = True
    option_defaults: ClassVar[Mapping[str, Any]] = {
        "image_size": None, "stride": 4, "max_detections": 100, "size_weight": 0.1,
    }

    # ------------------------------------------------------------------ definition
    def check(self, task: Task) -> None:
        super().check(task)
        if task.num_classes is None or task.num_classes < 1:
            raise ValueError(
                f"task {task.name!r}: kind {self.name} needs num_classes >= 1, got {task.num_classes}"
            )
        if task.loss is not None:
            raise ValueError(f"task {task.name!r}: kind {self.name} has no loss override")
        stride = self.option(task, "stride")
        if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
            raise ValueError(f"task {task.name!r}: option stride must be an integer >= 1, got {stride!r}")
        size = self.option(task, "image_size")
        if isinstance(size, int) and not isinstance(size, bool):
            size = [size, size]
        if (
            not isinstance(size, Sequence) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
        ):
            raise ValueError(
                f"task {task.name!r}: kind {self.name} needs option image_size: [height, width] of "
                f"the input images in pixels (positive integers), got {size!r}"
            )
        if size[0] % stride or size[1] % stride:
            raise ValueError(
                f"task {task.name!r}: image_size {list(size)} is not divisible by the output "
                f"stride {stride}; the heatmap would not cover the image exactly"
            )
        top_k = self.option(task, "max_detections")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"task {task.name!r}: option max_detections must be >= 1, got {top_k!r}")
        weight = self.option(task, "size_weight")
        if not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"task {task.name!r}: option size_weight must be >= 0, got {weight!r}")

    def output_dim(self, task: Task) -> int:
        assert task.num_classes is not None
        return task.num_classes + 4

    def output_hw(self, task: Task) -> tuple[int, int]:
        """Spatial size of the head's output: ``image_size / stride``."""
        h, w = _image_size(task)
        stride = int(self.option(task, "stride"))
        return h // stride, w // stride

    # ------------------------------------------------------------------ labels
    def label_mask(self, task: Task, target: Tensor) -> Tensor:
        """``[B]``: images with an annotation (not NaN), including those with zero boxes."""
        if not target.is_floating_point():
            return torch.ones(target.shape[0], dtype=torch.bool, device=target.device)
        return ~torch.isnan(target).reshape(target.shape[0], -1).any(dim=1)

    def validate_targets(self, task: Task, target: Tensor, where: str = "") -> None:
        loc = _loc(where)
        if target.ndim != 3 or target.shape[2] != len(BOX_COLUMNS):
            raise LabelError(
                f"task {task.name!r}{loc}: detection targets are [B, K, 5] rows "
                f"{BOX_COLUMNS} (class -1 = padding), got shape {list(target.shape)}"
            )
        if target.dtype == torch.bool or target.is_complex():
            raise LabelError(f"task {task.name!r}{loc}: detection targets must be real numbers")
        t = target.double()
        nan = torch.isnan(t).reshape(t.shape[0], -1)
        partly = nan.any(dim=1) & ~nan.all(dim=1)
        if partly.any():
            i = int(partly.nonzero()[0, 0])
            raise LabelError(
                f"task {task.name!r}{loc}: sample {i} has NaN in some of its box values; a "
                "missing annotation is all NaN, padding rows have class -1"
            )
        rows = ~nan.all(dim=1)
        labelled = t[rows]
        index = rows.nonzero().flatten()
        inf = torch.isinf(labelled).any(dim=2)
        if inf.any():
            i, j = (int(v) for v in inf.nonzero()[0])
            raise LabelError(
                f"task {task.name!r}{loc}: sample {int(index[i])}, box {j}: infinite value "
                f"{labelled[i, j].tolist()}"
            )
        cls = labelled[..., 0]
        assert task.num_classes is not None
        bad = (cls != PAD) & ((cls != cls.round()) | (cls < 0) | (cls >= task.num_classes))
        if bad.any():
            i, j = (int(v) for v in bad.nonzero()[0])
            raise LabelError(
                f"task {task.name!r}{loc}: sample {int(index[i])}, box {j}: class "
                f"{cls[i, j].item():g} is outside [0, {task.num_classes}) and is not the "
                f"padding class -1"
            )
        h, w = _image_size(task)
        x0, y0, x1, y1 = labelled[..., 1], labelled[..., 2], labelled[..., 3], labelled[..., 4]
        real = cls != PAD
        problems = (
            ((x1 <= x0) | (y1 <= y0), "has zero or negative size (x1 <= x0 or y1 <= y0)"),
            ((x0 < 0) | (y0 < 0) | (x1 > w) | (y1 > h), f"lies outside the {h}x{w} image"),
        )
        for mask, what in problems:
            mask = mask & real
            if mask.any():
                i, j = (int(v) for v in mask.nonzero()[0])
                box = [round(v, 4) for v in labelled[i, j, 1:].tolist()]
                raise LabelError(
                    f"task {task.name!r}{loc}: sample {int(index[i])}, box {j} "
                    f"(x0, y0, x1, y1) = {box} {what}"
                )

    # ------------------------------------------------------------------ loss
    def check_output(self, task: Task, output: Tensor) -> None:
        """Raise naming both shapes unless ``output`` is ``[B, C + 4, H / stride, W / stride]``."""
        h, w = self.output_hw(task)
        channels = self.output_dim(task)
        if output.ndim != 4 or output.shape[1] != channels or tuple(output.shape[2:]) != (h, w):
            size = _image_size(task)
            raise LabelError(
                f"task {task.name!r}: the detection head outputs {list(output.shape)} but images "
                f"of {size[0]}x{size[1]} at output stride {self.option(task, 'stride')} need "
                f"[B, {channels}, {h}, {w}]; the trunk's feature map and the task's stride and "
                "image_size must agree"
            )

    def sample_losses(self, task: Task, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        self.check_output(task, output)
        assert task.num_classes is not None
        c = task.num_classes
        labelled = self.label_mask(task, target)
        enc = encode_boxes(target, c, self.output_hw(task), int(self.option(task, "stride")))
        logits = output[:, :c].float()
        positive = enc.heatmap == 1
        pos = -((1 - torch.sigmoid(logits)) ** _FOCAL_ALPHA) * F.logsigmoid(logits)
        neg = (
            -((1 - enc.heatmap) ** _FOCAL_BETA) * torch.sigmoid(logits) ** _FOCAL_ALPHA
            * F.logsigmoid(-logits)
        )
        focal = torch.where(positive, pos, neg).sum(dim=(1, 2, 3))
        weight = float(self.option(task, "size_weight"))
        scale = torch.tensor([weight, weight, 1.0, 1.0], device=output.device)[None, :, None, None]
        l1 = (output[:, c : c + 4].float() - enc.regression).abs() * scale
        regression = torch.where(enc.centres[:, None], l1, torch.zeros_like(l1)).sum(dim=(1, 2, 3))
        per = torch.where(labelled, focal + regression, torch.zeros_like(focal))
        if not bool(labelled.any()):
            return per, 0
        return per, max(1, int(enc.objects[labelled].sum()))

    # ------------------------------------------------------------------ predictions and metrics
    def predict(self, task: Task, output: Tensor) -> Tensor:
        """``[B, max_detections, 6]``: ``(x0, y0, x1, y1, score, class)`` in pixels, best first."""
        self.check_output(task, output)
        assert task.num_classes is not None
        return decode_detections(
            output, task.num_classes, int(self.option(task, "stride")), _image_size(task),
            int(self.option(task, "max_detections")),
        )

    def metric_factories(self, task: Task) -> dict[str, MetricFactory]:
        return {"map": BoxMeanAP, "map_50": lambda: BoxMeanAP(iou_thresholds=[0.5])}

    def update_metrics(
        self, task: Task, metrics: torchmetrics.MetricCollection, output: Tensor, target: Tensor
    ) -> int:
        labelled = self.label_mask(task, target)
        fed = int(labelled.sum())
        if fed == 0:
            return 0
        detections = self.predict(task, output[labelled])
        kept = target[labelled]
        preds, truths = [], []
        for det, rows in zip(detections, kept, strict=True):
            real = rows[:, 0] >= 0
            preds.append({"boxes": det[:, :4], "scores": det[:, 4], "labels": det[:, 5].long()})
            truths.append({"boxes": rows[real, 1:5].float(), "labels": rows[real, 0].long()})
        metrics.update(preds, truths)
        return fed
