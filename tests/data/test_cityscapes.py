"""Cityscapes in MTAN's ``.npy`` layout (7- or 19-class labels), on a tiny copy the tests write.

The layout checks shared with NYUv2 (numbering, shapes, counts) are tested in test_nyuv2.py; here:
the class-count option and its folder, inverse depth with missing pixels, and a short training.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from polytask.data import available, load_dataset
from polytask.data.base import DataError
from polytask.data.cityscapes import load_cityscapes

SIZE = (8, 16)
COUNTS = {"train": 8, "val": 3}


def _labels(classes: int) -> Callable[[np.random.Generator, int, int], np.ndarray]:
    return lambda rng, h, w: rng.integers(-1, classes, (h, w)).astype(np.float32)


def _disparity(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    disparity = rng.uniform(0.01, 0.3, (h, w, 1)).astype(np.float32)
    disparity[-1] = 0.0  # the car bonnet row: no depth
    return disparity


def cityscapes_arrays(
    label_dirs: tuple[str, ...] = ("label_7", "label_19"),
) -> dict[str, Callable[[np.random.Generator, int, int], np.ndarray]]:
    """MTAN's Cityscapes folders; a label folder ending in 19 holds 19 classes, any other 7."""
    return {
        "image": lambda rng, h, w: rng.random((h, w, 3)).astype(np.float32),
        **{d: _labels(19 if d.endswith("19") else 7) for d in label_dirs},
        "depth": _disparity,
    }


@pytest.fixture
def city(tmp_path: Path, write_mtan_npy: Callable[..., Path]) -> Path:
    return write_mtan_npy(tmp_path / "cityscapes", cityscapes_arrays(), COUNTS, SIZE, seed=1)


@pytest.mark.parametrize("classes", [7, 19])
def test_class_count_picks_its_label_folder(city: Path, classes: int) -> None:
    assert "cityscapes" in available()
    splits = load_dataset("cityscapes", path=str(city), classes=classes, size=SIZE)
    seg = splits.tasks[0]
    assert seg.name == "segmentation" and seg.num_classes == classes
    x, y = next(splits.test.batches(3))
    assert x.shape == (3, 3, *SIZE)
    truth = np.load(city / "val" / f"label_{classes}" / "1.npy")
    assert torch.equal(y["segmentation"][1], torch.from_numpy(truth).long())
    depth = splits.tasks[1]
    assert not depth.label_mask(y["depth"])[:, 0, -1].any()  # 0 = missing, not an error
    assert depth.label_mask(y["depth"])[:, 0, :-1].all()


def test_missing_label_folder_lists_the_ones_there(
    tmp_path: Path, write_mtan_npy: Callable[..., Path]
) -> None:
    arrays = cityscapes_arrays(label_dirs=("label",))  # LibMTL's name of the 7 classes
    root = write_mtan_npy(tmp_path / "c", arrays, COUNTS, SIZE, seed=1)
    with pytest.raises(DataError, match=r"train/label_7 \(the 7-class labels\) does not exist.*\['label'\]"):
        load_cityscapes(root, size=SIZE)
    splits = load_cityscapes(root, size=SIZE, label_dir="label")
    assert splits.tasks[0].num_classes == 7


def test_nineteen_class_labels_do_not_pass_as_seven(city: Path) -> None:
    seven = city / "train" / "label_7"
    for f in seven.iterdir():
        f.unlink()
    for f in (city / "train" / "label_19").iterdir():
        f.rename(seven / f.name)
    with pytest.raises(DataError, match=r"label_7/\d+\.npy.*class \d+(\.0)? at .*outside \[0, 7\)"):
        load_cityscapes(city, size=SIZE)


def test_options_are_checked(city: Path) -> None:
    with pytest.raises(DataError, match="classes must be 7 or 19"):
        load_cityscapes(city, classes=13, size=SIZE)
    with pytest.raises(DataError, match="val_fraction must be in"):
        load_cityscapes(city, size=SIZE, val_fraction=1.0)


def test_trains_through_fit_with_mtan(city: Path, fit_dense: Callable[..., Any]) -> None:
    splits = load_cityscapes(city, size=SIZE, val_fraction=0.25)
    result = fit_dense(splits, "mtan", "upgrad", epochs=1, batch_size=3)
    assert result.epochs_run == 1
    assert 0.0 <= result.test["segmentation"]["pixel_accuracy"] <= 1.0
    assert result.test["depth"]["abs_error"] > 0.0
