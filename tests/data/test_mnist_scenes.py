"""MNIST scenes: the renderer's occlusion and labels by hand, and the loader on a tiny slice.

Why the renderer is tested on hand-made glyphs: with two square "digits" whose pixels are known,
which one is nearer, which pixels each owns, its depth, box and visible fraction are exact; the
real-digit loader is then checked for what must hold on any scene (labels agree with the digits
drawn, depth exactly where a digit is, no digit image in two splits, same seed same tensors).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from polytask.data import available, load_dataset
from polytask.data.base import DataError, MultiTaskData, Splits
from polytask.data.mnist_scenes import NUM_CLASSES, load_mnist_scenes, render_scenes, scene_boxes

FAR = 28 / 27  # drawn 27 px wide


def _two_squares(dilate: int) -> dict[str, torch.Tensor]:
    """A near '3' (depth 1, 20x20 block at [4:24, 4:24]) over a far '7' placed at (10, 10)."""
    glyphs = torch.zeros(1, 2, 28, 28)
    glyphs[:, :, 4:24, 4:24] = 1.0
    return render_scenes(
        glyphs,
        digits=torch.tensor([[3, 7]]),
        counts=torch.tensor([2]),
        depths=torch.tensor([[1.0, FAR]]),
        positions=torch.tensor([[[0, 0], [10, 10]]]),
        canvas=40,
        dilate=dilate,
    )


def test_nearer_digit_owns_the_overlap_with_its_class_depth_and_brightness() -> None:
    drawn = _two_squares(dilate=0)
    seg, depth, image = drawn["segmentation"][0], drawn["depth"][0, 0], drawn["image"][0, 0]
    assert seg[20, 20] == 1 + 3 and depth[20, 20] == 1.0  # overlap: the near '3'
    assert seg[30, 30] == 1 + 7 and depth[30, 30] == pytest.approx(FAR)  # the far '7' alone
    assert seg[2, 38] == 0 and math.isnan(float(depth[2, 38]))  # background: missing depth
    assert torch.equal(torch.isnan(depth), seg == 0)
    assert image[20, 20] == pytest.approx(1.0)  # brightness 1.5 - d / 2
    assert image[30, 30] == pytest.approx(1.5 - 0.5 * FAR)
    assert (seg == 4).sum() == 20 * 20  # the near square is whole
    # boxes around the strokes as drawn (x0, y0, x1, y1), before occlusion
    assert drawn["boxes"][0, 0].tolist() == [4.0, 4.0, 24.0, 24.0]
    assert drawn["boxes"][0, 1].tolist() == [14.0, 14.0, 33.0, 33.0]  # 19 px at 27/28 scale
    visible = drawn["visible"][0]
    assert visible[0] == 1.0 and 0.0 < visible[1] < 1.0
    far_strokes = 19 * 19
    assert visible[1] == pytest.approx(1 - (24 - 14) ** 2 / far_strokes)


def test_dilation_grows_the_labelled_region_but_not_the_boxes() -> None:
    thin, grown = _two_squares(dilate=0), _two_squares(dilate=2)
    assert thin["segmentation"][0, 2, 10] == 0 and grown["segmentation"][0, 2, 10] == 4
    assert grown["segmentation"][0, 1, 10] == 0  # 3 px away from the stroke
    assert torch.equal(thin["boxes"], grown["boxes"])
    # the near region (grown by 2) now hides two more rows and columns of the far strokes
    assert grown["visible"][0, 1] == pytest.approx(1 - (26 - 14) ** 2 / 19**2)


@pytest.fixture(scope="module")
def scenes(data_dir: Path) -> Splits:
    return load_mnist_scenes(source="idx", path=data_dir, scenes=(24, 8, 8), seed=3)


def test_tiny_slice_shapes_labels_and_depth_agree_with_the_digits(scenes: Splits) -> None:
    splits = scenes
    assert [t.name for t in splits.tasks] == ["segmentation", "depth"]
    for split in (splits.train, splits.val, splits.test):
        x, seg, depth = split.inputs, split.targets["segmentation"], split.targets["depth"]
        n = len(split)
        assert x.shape == (n, 1, 48, 48) and x.dtype == torch.float32
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.9
        assert seg.shape == (n, 48, 48) and seg.dtype == torch.long
        assert depth.shape == (n, 1, 48, 48) and depth.dtype == torch.float32
        assert int(seg.max()) < NUM_CLASSES
        assert torch.equal(torch.isnan(depth[:, 0]), seg == 0)
        labels, depths = split.info["box_labels"], split.info["box_depths"]
        for i in range(n):
            drawn = labels[i][labels[i] >= 0]
            assert 2 <= drawn.numel() <= 4
            assert set(seg[i].unique().tolist()) <= {0, *(1 + drawn).tolist()}
            present = set(depth[i][~torch.isnan(depth[i])].unique().tolist())
            assert present <= set(depths[i][labels[i] >= 0].tolist())
            boxes = split.info["boxes"][i][labels[i] >= 0]
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
            assert float(boxes.min()) >= 0 and float(boxes.max()) <= 48


def test_no_digit_image_in_two_splits_and_the_seed_decides_everything(
    scenes: Splits, data_dir: Path
) -> None:
    splits = scenes
    used = {
        name: set(getattr(splits, name).info["source_digits"].flatten().tolist()) - {-1}
        for name in ("train", "val", "test")
    }
    assert not used["train"] & used["val"] and not used["train"] & used["test"]
    assert not used["val"] & used["test"]
    again = load_mnist_scenes(source="idx", path=data_dir, scenes=(24, 8, 8), seed=3)
    assert torch.equal(again.train.inputs, splits.train.inputs)
    assert torch.equal(again.val.targets["segmentation"], splits.val.targets["segmentation"])
    other = load_mnist_scenes(source="idx", path=data_dir, scenes=(24, 8, 8), seed=4)
    assert not torch.equal(other.train.inputs, again.train.inputs)


def test_boxes_follow_a_subset_of_the_rows(scenes: Splits) -> None:
    train = scenes.train
    full = scene_boxes(train)
    picked = scene_boxes(train.subset([5, 1]))
    for got, want in zip(picked, [full[5], full[1]], strict=True):
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in got)
    with pytest.raises(DataError, match="no scene boxes"):
        scene_boxes(MultiTaskData(torch.zeros(2, 3), {}, [], name="table"))


def test_registered_with_its_options_and_a_constant_background(data_dir: Path) -> None:
    assert "mnist_scenes" in available()
    splits = load_dataset(
        "mnist_scenes", source="idx", path=data_dir, scenes=(4, 2, 2), background_depth=3.0,
        canvas=32, digits=(2, 2),
    )
    depth, seg = splits.train.targets["depth"], splits.train.targets["segmentation"]
    assert depth.shape == (4, 1, 32, 32) and not torch.isnan(depth).any()
    assert (depth[:, 0][seg == 0] == 3.0).all()
    assert ((splits.train.info["box_labels"] >= 0).sum(dim=1) == 2).all()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"canvas": 20}, "at least 28"),
        ({"digits": (0, 2)}, "digits per scene"),
        ({"digits": (3, 5)}, "digits per scene"),
        ({"scenes": (0, 1, 1)}, "three positive counts"),
        ({"dilate": 7}, "dilate"),
        ({"background_depth": -1.0}, "background_depth"),
    ],
)
def test_bad_options_are_refused_by_name(options: dict[str, object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_mnist_scenes(**options)  # type: ignore[arg-type]


def test_detection_is_a_task_on_request_with_the_visible_digits_boxes(data_dir: Path) -> None:
    splits = load_mnist_scenes(
        source="idx", path=data_dir, scenes=(24, 8, 8), seed=3,
        tasks=["segmentation", "depth", "detection"], min_visible=0.25,
    )
    assert [t.name for t in splits.tasks] == ["segmentation", "depth", "detection"]
    task = splits.tasks[2]
    assert task.kind.value == "detection" and task.num_classes == 10
    assert task.options == {"image_size": [48, 48], "stride": 4}
    for split in (splits.train, splits.val, splits.test):
        target = split.targets["detection"]
        assert target.shape == (len(split), 4, 5) and target.dtype == torch.float32
        for row, drawn in zip(target, scene_boxes(split), strict=True):
            kept = drawn["visible"] >= 0.25
            real = row[row[:, 0] >= 0]
            assert torch.equal(real[:, 0].long(), drawn["labels"][kept])
            assert torch.equal(real[:, 1:], drawn["boxes"][kept])
            assert (row[row[:, 0] < 0] == -1).all()  # padding rows
    hidden = (splits.train.info["box_visible"] < 0.25) & (splits.train.info["box_labels"] >= 0)
    assert hidden.any(), "the slice should hold a hidden digit for this check to mean something"
    # the same scenes as without detection: the task is added, nothing else changes
    plain = load_mnist_scenes(source="idx", path=data_dir, scenes=(24, 8, 8), seed=3)
    assert torch.equal(plain.train.inputs, splits.train.inputs)
    assert [t.name for t in plain.tasks] == ["segmentation", "depth"]
    alone = load_mnist_scenes(source="idx", path=data_dir, scenes=(4, 2, 2), tasks=["detection"])
    assert list(alone.train.targets) == ["detection"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tasks": ["segmentation", "boxes"]}, "distinct names among"),
        ({"tasks": []}, "distinct names among"),
        ({"tasks": ["detection"], "detection_stride": 5}, "not divisible by the output stride 5"),
        ({"min_visible": 1.5}, "min_visible"),
    ],
)
def test_bad_task_options_are_refused_by_name(options: dict[str, object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_mnist_scenes(**options)  # type: ignore[arg-type]
