"""Cityscapes in MTAN's ``.npy`` layout (7- or 19-class labels), on a tiny copy the tests write.

The layout checks shared with NYUv2 (numbering, shapes, counts) are tested in test_nyuv2.py; here:
the class-count option and its folder, inverse depth with missing pixels, and a short training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from polytask.balancing import create_balancer
from polytask.data import available, load_dataset
from polytask.data.base import DataError
from polytask.data.cityscapes import load_cityscapes
from polytask.models import create_model, create_trunk
from polytask.training import TrainSettings, fit

SIZE = (8, 16)


def write_cityscapes(
    root: Path, n_train: int = 8, n_val: int = 3, label_dirs: tuple[str, ...] = ("label_7", "label_19")
) -> Path:
    rng = np.random.default_rng(1)
    h, w = SIZE
    for split, n in (("train", n_train), ("val", n_val)):
        for folder in ("image", "depth", *label_dirs):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            np.save(root / split / "image" / f"{i}.npy", rng.random((h, w, 3)).astype(np.float32))
            for folder in label_dirs:
                classes = 19 if folder.endswith("19") else 7
                np.save(root / split / folder / f"{i}.npy",
                        rng.integers(-1, classes, (h, w)).astype(np.float32))
            disparity = rng.uniform(0.01, 0.3, (h, w, 1)).astype(np.float32)
            disparity[-1] = 0.0  # the car bonnet row: no depth
            np.save(root / split / "depth" / f"{i}.npy", disparity)
    return root


@pytest.fixture
def city(tmp_path: Path) -> Path:
    return write_cityscapes(tmp_path / "cityscapes")


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


def test_missing_label_folder_lists_the_ones_there(tmp_path: Path) -> None:
    root = write_cityscapes(tmp_path / "c", label_dirs=("label",))  # LibMTL's name of the 7 classes
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


def test_trains_through_fit_with_mtan(city: Path, tmp_path: Path) -> None:
    splits = load_cityscapes(city, size=SIZE, val_fraction=0.25)
    torch.manual_seed(0)
    trunk = create_trunk("resnet", depth=10, width=4, in_channels=3, output="map")
    model = create_model("mtan", trunk, splits.tasks, example_input=splits.train.example())
    settings = TrainSettings(
        epochs=1, batch_size=3, lr=1e-3, device="cpu", progress=False, tensorboard=False,
        eval_batch_size=3,
    )
    result = fit(model, splits, create_balancer("upgrad", splits.train.task_names), settings, tmp_path)
    assert result.epochs_run == 1
    assert 0.0 <= result.test["segmentation"]["pixel_accuracy"] <= 1.0
    assert result.test["depth"]["abs_error"] > 0.0
