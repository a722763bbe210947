"""NYUv2 in MTAN's ``.npy`` layout, on a tiny copy of that layout the tests write themselves.

Why a fixture instead of the real files: the preprocessed NYUv2 (2.4 GB) is not on the test
machines, and what the loader must get right is the layout (folders, numbering, channels-last
arrays, -1 and 0 as missing) and its error messages, which a few random arrays exercise exactly.
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
from polytask.data.loader import DatasetData
from polytask.data.nyuv2 import load_nyuv2

SIZE = (16, 24)


def _depth(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Metres, with 0 (the sensor's missing value) and NaN pixels."""
    depth = rng.uniform(0.5, 10.0, (h, w, 1)).astype(np.float32)
    depth[0, :3] = 0.0
    depth[1, 0] = np.nan
    return depth


def _normal(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Unit normals, channels last, with one all-zero (missing) pixel."""
    v = rng.normal(size=(h, w, 3))
    normal = (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)
    normal[0, 0] = 0.0
    return normal


#: MTAN's NYUv2 folders; labels are floats on disk, as MTAN's are (-1: unlabelled pixel).
NYUV2_ARRAYS = {
    "image": lambda rng, h, w: rng.random((h, w, 3)).astype(np.float32),
    "label": lambda rng, h, w: rng.integers(-1, 13, (h, w)).astype(np.float32),
    "depth": _depth,
    "normal": _normal,
}


@pytest.fixture
def nyu(tmp_path: Path, write_mtan_npy: Callable[..., Path]) -> Path:
    return write_mtan_npy(tmp_path / "nyuv2", NYUV2_ARRAYS, {"train": 10, "val": 4}, SIZE, seed=0)


def test_registered_and_read_per_item_with_the_files_values(nyu: Path) -> None:
    assert "nyuv2" in available()
    splits = load_dataset("nyuv2", path=str(nyu), size=SIZE, seed=3, val_fraction=0.2)
    assert [t.name for t in splits.tasks] == ["segmentation", "depth", "normals"]
    assert isinstance(splits.train, DatasetData)  # lazy: a Dataset behind a DataLoader
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 2, 4)
    # train and val partition the published train folder; test is the published val folder
    rows = sorted([*splits.train.positions, *splits.val.positions])  # type: ignore[attr-defined]
    assert rows == list(range(10))
    x, y = next(splits.test.batches(4))
    assert x.shape == (4, 3, *SIZE) and x.dtype == torch.float32
    image = np.load(nyu / "val" / "image" / "2.npy")
    assert torch.equal(x[2], torch.from_numpy(np.moveaxis(image, -1, 0)))
    label = np.load(nyu / "val" / "label" / "2.npy")
    assert y["segmentation"].dtype == torch.long
    assert torch.equal(y["segmentation"][2], torch.from_numpy(label).long())
    assert y["depth"].shape == (4, 1, *SIZE) and y["normals"].shape == (4, 3, *SIZE)
    # missing depth (0 and NaN) and a zero normal are missing pixel labels, not errors
    depth_task, normal_task = splits.tasks[1], splits.tasks[2]
    assert not depth_task.label_mask(y["depth"])[2, 0, 0, :3].any()
    assert not depth_task.label_mask(y["depth"])[2, 0, 1, 0]
    assert not normal_task.label_mask(y["normals"])[2, 0, 0]
    labelled = int((torch.from_numpy(label) != -1).sum())
    assert splits.test.label_counts()["segmentation"] == labelled + sum(
        int((torch.from_numpy(np.load(nyu / "val" / "label" / f"{i}.npy")) != -1).sum())
        for i in (0, 1, 3)
    )


def test_validation_split_follows_the_seed(nyu: Path) -> None:
    a = load_nyuv2(nyu, seed=0, size=SIZE, val_fraction=0.3)
    b = load_nyuv2(nyu, seed=0, size=SIZE, val_fraction=0.3)
    c = load_nyuv2(nyu, seed=1, size=SIZE, val_fraction=0.3)
    assert a.val.positions == b.val.positions  # type: ignore[attr-defined]
    assert a.val.positions != c.val.positions  # type: ignore[attr-defined]


def test_task_subset_and_path_from_the_environment(
    nyu: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLYTASK_NYUV2", str(nyu))
    splits = load_nyuv2(tasks=["segmentation", "depth"], size=SIZE)
    assert [t.name for t in splits.tasks] == ["segmentation", "depth"]
    with pytest.raises(DataError, match=r"tasks must be distinct names.*'normal'"):
        load_nyuv2(tasks=["normal"], size=SIZE)


def test_missing_folder_and_missing_file_are_named(nyu: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_nyuv2(tmp_path / "nowhere", size=SIZE)
    for f in (nyu / "val" / "depth").iterdir():
        f.unlink()
    (nyu / "val" / "depth").rmdir()
    with pytest.raises(DataError, match=r"folder .*val/depth does not exist"):
        load_nyuv2(nyu, size=SIZE)


def test_mismatched_counts_name_both_folders(nyu: Path) -> None:
    (nyu / "train" / "normal" / "9.npy").unlink()
    with pytest.raises(DataError, match=r"train/image holds 10 images but .*train/normal holds 9"):
        load_nyuv2(nyu, size=SIZE)


def test_a_gap_in_the_numbering_names_the_missing_file(nyu: Path) -> None:
    (nyu / "train" / "depth" / "4.npy").rename(nyu / "train" / "depth" / "10.npy")
    with pytest.raises(DataError, match=r"file .*train/depth/4\.npy is missing"):
        load_nyuv2(nyu, size=SIZE)


def test_wrong_shape_names_the_file_and_its_shape(nyu: Path) -> None:
    np.save(nyu / "val" / "normal" / "1.npy", np.zeros((3, *SIZE), dtype=np.float32))
    with pytest.raises(DataError, match=r"val/normal/1\.npy has shape \[3, 16, 24\]"):
        load_nyuv2(nyu, size=SIZE)
    with pytest.raises(DataError, match=r"image/0\.npy has shape \[16, 24, 3\].*288x384"):
        load_nyuv2(nyu)  # the default size is MTAN's 288x384


def test_label_outside_the_classes_names_the_file_and_the_value(nyu: Path) -> None:
    label = np.load(nyu / "train" / "label" / "5.npy")
    label[2, 7] = 13.0
    np.save(nyu / "train" / "label" / "5.npy", label)
    with pytest.raises(DataError, match=r"train/label/5\.npy.*class 13(\.0)? at sample 0, pixel \(y=2, x=7\)"):
        load_nyuv2(nyu, size=SIZE)


def test_negative_depth_and_nan_image_are_refused_naming_the_file(nyu: Path) -> None:
    depth = np.load(nyu / "val" / "depth" / "0.npy")
    depth[3, 3] = -1.0
    np.save(nyu / "val" / "depth" / "0.npy", depth)
    with pytest.raises(DataError, match=r"val/depth/0\.npy.*negative depth -1"):
        load_nyuv2(nyu, size=SIZE)
    depth[3, 3] = 1.0
    np.save(nyu / "val" / "depth" / "0.npy", depth)
    image = np.load(nyu / "val" / "image" / "3.npy")
    image[0, 0, 0] = np.nan
    np.save(nyu / "val" / "image" / "3.npy", image)
    splits = load_nyuv2(nyu, size=SIZE)  # images are checked when read, per item
    with pytest.raises(DataError, match=r"image .*val/image/3\.npy holds NaN"):
        list(splits.test.batches(4))


def test_trains_through_fit_in_seconds(nyu: Path, fit_dense: Callable[..., Any]) -> None:
    splits = load_nyuv2(nyu, size=SIZE, val_fraction=0.2)
    result = fit_dense(splits, "hard_sharing", "dwa", epochs=2, batch_size=4)
    assert result.epochs_run == 2
    for split in (result.val, result.test):
        assert 0.0 <= split["segmentation"]["miou"] <= 1.0
        assert split["depth"]["abs_error"] > 0.0
        assert 0.0 < split["normals"]["mean_angle"] < 180.0
