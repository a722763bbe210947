"""The detection kind: target layout, CenterNet encoding and decoding, loss, mAP and head.

Why hand-made tensors: the loss is a per-image sum over heatmap cells divided by the number of
objects, so an exact value on a 2x2 map (log 2 for p = 0.5 with one centre) pins the focal-loss
convention, the normalisation and the missing-label zeros down; mAP on three detections of two
true boxes has a value one can compute by hand (COCO's 101-point interpolation). Hypothesis
covers the geometry: the Gaussian radius keeps IoU at the overlap it promises, and a perfect
head output decodes back to the boxes it was made from.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from typer.testing import CliRunner

from polytask.models.features import FeatureSpec
from polytask.models.heads import DetectionHead, HeadError, make_task_head
from polytask.task_kinds import LabelError, TaskKind
from polytask.task_kinds.detection import (
    BoxMeanAP,
    decode_detections,
    encode_boxes,
    gaussian_radius,
)
from polytask.tasks import Task

NAN = float("nan")


def _task(size: int = 48, stride: int = 4, classes: int = 3, **options: object) -> Task:
    return Task(
        "det", "detection", num_classes=classes,
        options={"image_size": [size, size], "stride": stride, **options},
    )


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


# ---------------------------------------------------------------------------------- the kind
def test_registered_with_its_layout_metrics_and_direction() -> None:
    from polytask.cli import app

    task = _task()
    assert task.kind is TaskKind.DETECTION and task.layout == "boxes"
    assert task.output_dim == 3 + 4
    assert task.primary == "map" and task.primary_higher_is_better
    assert set(task.metric_factories()) == {"map", "map_50"}
    listed = CliRunner().invoke(app, ["list", "tasks"])
    assert listed.exit_code == 0, listed.output
    line = next(line for line in listed.output.splitlines() if "detection" in line)
    assert "[boxes]" in line and "map (primary, higher is better)" in line


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"options": {"stride": 4}}, "needs option image_size"),
        ({"options": {"image_size": [50, 48]}}, r"image_size \[50, 48\] is not divisible"),
        ({"options": {"image_size": 48, "stride": 0}}, "stride must be an integer"),
        ({"options": {"image_size": 48, "colour": 1}}, "unknown option"),
        ({"options": {"image_size": 48}, "num_classes": None}, "num_classes >= 1"),
        ({"options": {"image_size": 48}, "loss": "l1"}, "no loss override"),
    ],
)
def test_task_definitions_it_cannot_train_are_refused(kwargs: dict, message: str) -> None:
    args = {"num_classes": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        Task("det", "detection", **args)


def _rows(*boxes: list[float], k: int = 3) -> Tensor:
    """One image's ``[k, 5]`` target: the given rows, then padding."""
    out = torch.full((k, 5), -1.0)
    for i, box in enumerate(boxes):
        out[i] = torch.tensor(box)
    return out


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ([1, 10, 10, 50, 20], r"sample 1, box 0 \(x0, y0, x1, y1\) = \[10.0, 10.0, 50.0, 20.0\] lies outside the 48x48 image"),
        ([1, -2, 10, 20, 20], "sample 1, box 0 .* lies outside"),
        ([1, 10, 10, 10, 20], "sample 1, box 0 .* has zero or negative size"),
        ([1, 20, 10, 10, 20], "sample 1, box 0 .* has zero or negative size"),
        ([3, 10, 10, 20, 20], r"sample 1, box 0: class 3 is outside \[0, 3\)"),
        ([1.5, 10, 10, 20, 20], "sample 1, box 0: class 1.5"),
        ([1, 10, NAN, 20, 20], "sample 1 has NaN in some of its box values"),
    ],
)
def test_bad_boxes_are_named_by_task_sample_and_box(bad_row: list[float], message: str) -> None:
    task = _task()
    good = _rows([0, 1, 1, 5, 5])
    target = torch.stack([good, _rows(bad_row)])
    with pytest.raises(LabelError, match=rf"task 'det' \(split val\): {message}"):
        task.validate_targets(target, "split val")


def test_missing_and_empty_annotations_are_told_apart() -> None:
    task = _task()
    missing = torch.full((3, 5), NAN)
    empty = _rows()
    one = _rows([2, 4, 4, 20, 30])
    target = torch.stack([missing, empty, one])
    task.validate_targets(target)  # all three are valid targets
    assert task.label_mask(target).tolist() == [False, True, True]
    with pytest.raises(LabelError, match=r"\[B, K, 5\]"):
        task.validate_targets(torch.zeros(2, 3, 4))


# ---------------------------------------------------------------------------------- geometry
@settings(max_examples=60, deadline=None)
@given(st.floats(2.0, 80.0), st.floats(2.0, 80.0))
def test_gaussian_radius_keeps_the_promised_overlap(w: float, h: float) -> None:
    r = float(gaussian_radius(torch.tensor([w], dtype=torch.float64),
                              torch.tensor([h], dtype=torch.float64))[0])
    box = [0.0, 0.0, w, h]
    moved = {
        "shift": [r, r, w + r, h + r],
        "shrink": [r, r, w - r, h - r],
        "grow": [-r, -r, w + r, h + r],
    }
    ious = {name: _iou(box, b) if b[2] > b[0] and b[3] > b[1] else 0.0 for name, b in moved.items()}
    assert min(ious.values()) >= 0.7 - 1e-9, ious
    assert min(ious.values()) == pytest.approx(0.7, abs=1e-9), ious  # the radius is the largest


@st.composite
def _scenes(draw: st.DrawFn) -> list[list[float]]:
    """Up to 5 boxes on a 48x48 image (stride 4: 12x12 cells), no two centres in one cell."""
    n = draw(st.integers(1, 5))
    boxes, cells = [], set()
    for _ in range(n):
        x0 = draw(st.integers(0, 40))
        y0 = draw(st.integers(0, 40))
        x1 = draw(st.integers(x0 + 1, 48))
        y1 = draw(st.integers(y0 + 1, 48))
        cell = ((x0 + x1) // 8, (y0 + y1) // 8)
        if cell in cells:
            continue
        cells.add(cell)
        boxes.append([float(draw(st.integers(0, 2))), x0, y0, x1, y1])
    return boxes


@settings(max_examples=25, deadline=None)
@given(_scenes())
def test_a_perfect_head_output_decodes_to_its_boxes(boxes: list[list[float]]) -> None:
    target = _rows(*boxes, k=5)[None]
    enc = encode_boxes(target, 3, (12, 12), 4)
    assert int((enc.heatmap == 1).sum()) == len(boxes) == int(enc.centres.sum())
    assert float(enc.heatmap.max()) == 1.0
    # a head that is right everywhere: +20 logits at the centres, -20 elsewhere
    logits = torch.where(enc.heatmap == 1, 20.0, -20.0)
    output = torch.cat([logits, enc.regression], dim=1)
    decoded = decode_detections(output, 3, 4, (48, 48), top_k=10)[0]
    found = decoded[: len(boxes)]
    assert (found[:, 4] > 0.99).all() and (decoded[len(boxes):, 4] < 0.01).all()
    want = sorted(tuple(b) for b in boxes)
    got = sorted((float(d[5]), *d[:4].tolist()) for d in found)
    for g, w in zip(got, want, strict=True):
        assert g[0] == w[0]
        assert g[1:] == pytest.approx(w[1:], abs=1e-4)


# ---------------------------------------------------------------------------------- loss
def test_loss_value_count_and_missing_images_by_hand() -> None:
    task = _task(size=8, stride=4, classes=1)
    # one 2x2 box whose centre (in cells: 0.5, 0.5) lies in cell (0, 0): radius 0, so the other
    # three cells have heatmap 0 and the focal loss is 4 x 0.25 log 2 at logits 0 (p = 0.5)
    target = torch.stack([
        _rows([0, 1, 1, 3, 3], k=2),
        torch.full((2, 5), NAN),  # not annotated
        _rows(k=2),  # annotated: no object
    ])
    output = torch.zeros(3, 5, 2, 2, requires_grad=True)
    per, count = task.sample_losses(output, target)
    size_l1 = 0.1 * (0.5 + 0.5)  # width and height 2 px = 0.5 cells, weight 0.1
    offset_l1 = 0.5 + 0.5  # the centre sits half a cell into its cell
    assert per[0].item() == pytest.approx(math.log(2) + size_l1 + offset_l1, rel=1e-6)
    assert per[1].item() == 0.0
    assert per[2].item() == pytest.approx(math.log(2), rel=1e-6)  # four negatives
    assert count == 1  # objects in the labelled images
    per.sum().backward()
    assert output.grad is not None and not output.grad[1].any()  # the missing image: no gradient
    assert output.grad[2].any()
    only_missing = task.sample_losses(torch.zeros(1, 5, 2, 2), torch.full((1, 2, 5), NAN))
    assert only_missing[1] == 0 and only_missing[0].item() == 0.0


def test_a_head_output_of_the_wrong_size_names_both_shapes() -> None:
    task = _task(size=48, stride=4, classes=3)
    target = _rows([0, 1, 1, 9, 9])[None]
    with pytest.raises(LabelError, match=r"outputs \[1, 7, 6, 6\] but images of 48x48 at output "
                       r"stride 4 need \[B, 7, 12, 12\]"):
        task.sample_losses(torch.zeros(1, 7, 6, 6), target)


# ---------------------------------------------------------------------------------- head
def test_the_head_upsamples_a_stride_8_map_to_the_task_stride() -> None:
    task = _task(size=48, stride=4, classes=3)
    head = make_task_head(task, FeatureSpec("map", 16, stride=8))
    assert isinstance(head, DetectionHead)
    out = head(torch.randn(2, 16, 6, 6))
    assert out.shape == (2, 7, 12, 12)
    assert torch.allclose(head.heatmap.bias, torch.full((3,), -math.log(9.0)))
    with pytest.raises(HeadError, match=r"task 'det'.*output stride 3 cannot read a feature map "
                       r"of stride 8"):
        make_task_head(_task(size=48, stride=3), FeatureSpec("map", 16, stride=8))
    with pytest.raises(HeadError, match="needs a feature map"):
        make_task_head(task, FeatureSpec("vector", 16))


# ---------------------------------------------------------------------------------- metric
def _pred(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, Tensor]:
    return {"boxes": torch.tensor(boxes).reshape(-1, 4), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


def _true(boxes: list[list[float]], labels: list[int]) -> dict[str, Tensor]:
    return {"boxes": torch.tensor(boxes).reshape(-1, 4), "labels": torch.tensor(labels, dtype=torch.long)}


def test_map_by_hand_with_coco_101_point_interpolation() -> None:
    a, b = [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]
    preds = [_pred([a, [40.0, 0.0, 45.0, 5.0], b], [0.9, 0.8, 0.7], [1, 1, 1])]
    truth = [_true([a, b], [1, 1])]
    # ranked: hit, miss, hit -> precision 1 up to recall 0.5, then 2/3 up to recall 1
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101
    for metric in (BoxMeanAP(), BoxMeanAP(iou_thresholds=[0.5])):
        metric.update(preds, truth)
        assert float(metric.compute()) == pytest.approx(expected, abs=1e-9)
    # a class with detections but no true box is left out; a second image with a perfect hit
    # of another class averages in at AP 1
    metric = BoxMeanAP()
    metric.update(
        [*preds, _pred([b, a], [0.9, 0.5], [2, 7])],
        [*truth, _true([b], [2])],
    )
    assert float(metric.compute()) == pytest.approx((expected + 1.0) / 2, abs=1e-9)


def test_map_at_half_iou_accepts_a_loose_box_that_coco_map_penalises() -> None:
    truth = [_true([[0.0, 0.0, 10.0, 10.0]], [0])]
    loose = [_pred([[0.0, 0.0, 10.0, 16.0]], [0.9], [0])]  # IoU 100/160 = 0.625
    strict, half = BoxMeanAP(), BoxMeanAP(iou_thresholds=[0.5])
    for metric in (strict, half):
        metric.update(loose, truth)
    assert float(half.compute()) == pytest.approx(1.0)
    assert float(strict.compute()) == pytest.approx(3 / 10)  # hits at IoU 0.50, 0.55, 0.60 only


def test_map_without_any_true_box_is_nan_with_a_warning() -> None:
    metric = BoxMeanAP()
    metric.update([_pred([[0.0, 0.0, 4.0, 4.0]], [0.5], [0])], [_true([], [])])
    with pytest.warns(UserWarning, match="no true box"):
        assert math.isnan(float(metric.compute()))


def test_without_pycocotools_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pycocotools.cocoeval", None)
    with pytest.raises(ImportError, match=r"pip install 'polytask\[detection\]'"):
        BoxMeanAP()


def test_update_metrics_feeds_annotated_images_only() -> None:
    task = _task(size=8, stride=4, classes=1)
    target = torch.stack([_rows([0, 1, 1, 3, 3], k=2), torch.full((2, 5), NAN), _rows(k=2)])
    enc = encode_boxes(target, 1, (2, 2), 4)
    output = torch.cat([torch.where(enc.heatmap == 1, 20.0, -20.0), enc.regression], dim=1)
    metrics = task.make_metrics()
    assert task.update_metrics(metrics, output, target) == 2
    scores = metrics.compute()
    assert float(scores["map"]) == pytest.approx(1.0)
    assert float(scores["map_50"]) == pytest.approx(1.0)
    boxes = task.predict(output)
    assert boxes.shape == (3, 4, 6)  # top 100 peaks, but only 4 cells x 1 class exist
    assert boxes[0, 0].tolist() == pytest.approx([1.0, 1.0, 3.0, 3.0, 1.0, 0.0], abs=1e-6)
