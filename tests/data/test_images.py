"""Images in a folder plus a CSV of labels: lazy reading, named errors, splits, transforms, loaders.

The fixture is real: 60 MNIST test digits written as PNGs, so pixels and labels can be checked
against the IDX source, and some label cells are empty (missing labels), as in real data.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import DataLoader

from polytask.data.base import DataError
from polytask.data.batch import MultiTaskCollate
from polytask.data.images import ImageTableDataset, write_digit_folder
from polytask.data.multimnist import load_mnist_digits
from polytask.data.transforms import (
    CenterCrop,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    build_transforms,
    torchvision_available,
)
from polytask.tasks import TaskKind

N = 60
# For folders too small to be sure both parities occur: one task, its kind given.
ONE_TASK: dict = {"targets": ["is_even"], "kinds": {"is_even": "binary"}}
TRAIN_SPEC = {"resize": 32, "crop": {"size": 28, "padding": 2}, "flip": True, "normalize": "mnist"}


@pytest.fixture(scope="module")
def digits(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 60 real digits (read-only for the tests: copy it before breaking files)."""
    return write_digit_folder(tmp_path_factory.mktemp("digits"), N, seed=0, data_path=data_dir)


@pytest.fixture
def own_digits(data_dir: Path, tmp_path: Path) -> Path:
    """A small folder a test may damage."""
    return write_digit_folder(tmp_path, 12, seed=1, data_path=data_dir)


class CountingDataset(ImageTableDataset):
    """Counts file opens through the public hook, to show what construction reads."""

    opens = 0

    def open_image(self, path: str) -> Image.Image:
        type(self).opens += 1
        return super().open_image(path)


def _source_index(path: str) -> int:
    match = re.search(r"mnist_(\d+)\.png$", path)
    assert match is not None, path
    return int(match.group(1))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN (a missing label) equal to NaN."""
    if a.is_floating_point():
        return a.shape == b.shape and bool(torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))
    return torch.equal(a, b)


def _rewrite_csv(csv_path: Path, rows: list[list[str]], blank_before: int | None = None) -> None:
    """Write ``rows`` (header first); optionally a blank line before data row ``blank_before``."""
    lines = [",".join(r) for r in rows]
    if blank_before is not None:
        lines.insert(1 + blank_before, "")
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------- items
def test_items_are_the_source_digits_with_their_labels(digits: Path, data_dir: Path) -> None:
    ds = ImageTableDataset(digits)
    images, labels = load_mnist_digits("idx", data_dir)
    table = pd.read_csv(digits)
    assert len(ds) == N and ds.channels == 1
    assert [(t.name, t.kind, t.num_classes) for t in ds.tasks] == [
        ("digit", TaskKind.MULTICLASS, 10),
        ("is_even", TaskKind.BINARY, None),
    ]
    assert ds.targets["digit"].dtype == torch.int64 and ds.targets["digit"].shape == (N,)
    assert ds.targets["is_even"].dtype == torch.float32
    for i in (0, 7, N - 1):
        x, y = ds[i]
        k = _source_index(ds.paths[i])
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32
        expected = torch.from_numpy(images[k].astype(np.float32) / 255.0)
        assert torch.equal(x[0], expected)  # PNG is lossless: exactly the IDX pixels
        assert set(y) == {"digit", "is_even"}
        digit = table["digit"].iloc[i]
        if math.isnan(digit):
            assert int(y["digit"]) == -1
        else:
            assert int(y["digit"]) == int(labels[k]) == int(digit)
    assert ds[-1][0].shape == (1, 28, 28)
    with pytest.raises(IndexError):
        ds[N]


def test_channels_option_and_upscaled_images(data_dir: Path, tmp_path: Path, digits: Path) -> None:
    rgb = ImageTableDataset(digits, channels=3)
    x, _ = rgb[3]
    assert x.shape == (3, 28, 28)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert torch.equal(x[0], ImageTableDataset(digits)[3][0][0])
    with pytest.raises(DataError, match="channels must be 1"):
        ImageTableDataset(digits, channels=2)
    big = write_digit_folder(tmp_path, 4, seed=2, size=64, data_path=data_dir)
    x64, _ = ImageTableDataset(big, **ONE_TASK)[0]
    assert x64.shape == (1, 64, 64)
    assert float(x64.min()) >= 0.0 and float(x64.max()) <= 1.0


def test_image_dir_and_absolute_paths(digits: Path, tmp_path: Path) -> None:
    table = pd.read_csv(digits, dtype=str, keep_default_na=False)
    folder = digits.parent
    table["path"] = [str(folder / p) for p in table["path"]]  # absolute paths, CSV elsewhere
    moved = tmp_path / "elsewhere" / "index.csv"
    moved.parent.mkdir()
    table.to_csv(moved, index=False)
    ds = ImageTableDataset(moved)
    assert torch.equal(ds[5][0], ImageTableDataset(digits)[5][0])
    relative = tmp_path / "relative.csv"
    pd.read_csv(digits, dtype=str, keep_default_na=False).to_csv(relative, index=False)
    assert len(ImageTableDataset(relative, image_dir=folder)) == N
    with pytest.raises(DataError, match="not found"):
        ImageTableDataset(relative)  # relative paths, but the images are not beside this CSV


# ---------------------------------------------------------------------------------------- laziness
def test_construction_reads_no_pixels(data_dir: Path, tmp_path: Path) -> None:
    small = write_digit_folder(tmp_path / "small", 5, seed=0, data_path=data_dir)
    large = write_digit_folder(tmp_path / "large", 200, seed=0, data_path=data_dir)
    for csv_path in (small, large):
        CountingDataset.opens = 0
        CountingDataset(csv_path, channels=1, **ONE_TASK)
        assert CountingDataset.opens == 0
        CountingDataset(
            csv_path, **ONE_TASK
        )  # channels from the first image's header: one open, any N
        assert CountingDataset.opens == 1
    ds = CountingDataset(large, channels=1)
    CountingDataset.opens = 0
    ds[10]
    ds[11]
    assert CountingDataset.opens == 2


def test_file_deleted_after_construction_is_named_at_load(own_digits: Path) -> None:
    ds = ImageTableDataset(own_digits)
    victim = Path(ds.paths[4])
    victim.unlink()
    with pytest.raises(
        DataError, match=r"image file not found: .*mnist_\d+\.png \(CSV .* line 6\)"
    ):
        ds[4]
    assert ds[3][0].shape == (1, 28, 28)  # the others still load


# ---------------------------------------------------------------------------------------- errors
def test_missing_files_are_listed_with_editor_line_numbers(own_digits: Path) -> None:
    with own_digits.open(newline="") as fh:
        rows = list(csv.reader(fh))
    rows[3][0] = "images/nope.png"  # data row 3
    rows[9][0] = "images/also_gone.png"
    _rewrite_csv(own_digits, rows, blank_before=2)  # a blank line shifts the later lines by one
    with pytest.raises(DataError) as err:
        ImageTableDataset(own_digits)
    msg = str(err.value)
    assert "2 listed image file(s) not found" in msg
    assert "line 5: images/nope.png" in msg and "line 11: images/also_gone.png" in msg
    # many missing files: the first few are named, the rest counted
    for r in rows[1:]:
        r[0] = "images/x_" + r[0].rsplit("/", 1)[-1]
    _rewrite_csv(own_digits, rows)
    with pytest.raises(DataError, match=r"12 listed .*line 2: .*line 6: .*\(and 7 more\)"):
        ImageTableDataset(own_digits)


def test_empty_path_cell_names_its_line(own_digits: Path) -> None:
    with own_digits.open(newline="") as fh:
        rows = list(csv.reader(fh))
    rows[2][0] = ""
    _rewrite_csv(own_digits, rows)
    with pytest.raises(DataError, match=r"line 3: the image path \(column 'path'\) is empty"):
        ImageTableDataset(own_digits)


def test_corrupt_and_truncated_images(own_digits: Path) -> None:
    ds = ImageTableDataset(own_digits, channels=1)
    Path(ds.paths[1]).write_bytes(b"this is not a PNG at all")
    with pytest.raises(DataError, match=r"cannot read image .* \(CSV .* line 3\)"):
        ds[1]
    whole = Path(ds.paths[2]).read_bytes()
    Path(ds.paths[2]).write_bytes(whole[: len(whole) // 2])  # header fine, pixel data cut
    with pytest.raises(DataError, match=r"cannot read image .* line 4\)"):
        ds[2]
    assert ds[0][0].shape == (1, 28, 28)
    Path(ds.paths[0]).write_bytes(b"")
    with pytest.raises(DataError, match="line 2"):
        ImageTableDataset(own_digits)  # channels read from the first image: fails at once


def test_label_errors_name_the_csv_line(own_digits: Path) -> None:
    with own_digits.open(newline="") as fh:
        rows = list(csv.reader(fh))
    rows[4][1] = "seven"
    _rewrite_csv(own_digits, rows)
    with pytest.raises(DataError, match=r"'seven' at row 5 .*CSV line numbers"):
        ImageTableDataset(own_digits, kinds={"digit": "regression"})
    with pytest.raises(DataError, match=r"target column\(s\) \['age'\] not found"):
        ImageTableDataset(own_digits, targets=["age"])
    with pytest.raises(DataError, match="holds the image paths"):
        ImageTableDataset(own_digits, targets=["path", "digit"])
    with pytest.raises(DataError, match="unknown kind"):
        ImageTableDataset(own_digits, targets=["is_even"], kinds={"is_even": "ordinal"})


# ---------------------------------------------------------------------------------------- labels
def test_missing_labels_and_kinds(digits: Path) -> None:
    table = pd.read_csv(digits)
    ds = ImageTableDataset(digits)
    blank_digit = table["digit"].isna().to_numpy().copy()
    blank_even = table["is_even"].isna().to_numpy().copy()
    assert blank_digit.any() and blank_even.any()  # the fixture has missing labels
    assert torch.equal(ds.targets["digit"] == -1, torch.from_numpy(blank_digit))
    assert torch.equal(ds.targets["is_even"].isnan(), torch.from_numpy(blank_even))
    assert ds.label_counts() == {
        "digit": int((~blank_digit).sum()),
        "is_even": int((~blank_even).sum()),
    }
    i = int(np.flatnonzero(blank_even)[0])
    assert math.isnan(float(ds[i][1]["is_even"]))
    reg = ImageTableDataset(digits, targets=["digit"], kinds={"digit": "regression"})
    assert [t.kind for t in reg.tasks] == [TaskKind.REGRESSION]
    assert reg.targets["digit"].dtype == torch.float32
    assert torch.equal(reg.targets["digit"].isnan(), torch.from_numpy(blank_digit))


# ---------------------------------------------------------------------------------------- views
def test_subset_split_and_with_transform(digits: Path) -> None:
    ds = ImageTableDataset(digits)
    train, val, test = ds.split((0.8, 0.1, 0.1), seed=3)
    assert (len(train), len(val), len(test)) == (48, 6, 6)
    rows = torch.cat([train.row_ids, val.row_ids, test.row_ids])
    assert sorted(rows.tolist()) == list(range(N))
    again = ds.split((0.8, 0.1, 0.1), seed=3)[1]
    assert torch.equal(again.row_ids, val.row_ids)
    for view in (train, val, test):
        assert view.tasks is ds.tasks
        for name, y in view.targets.items():
            assert _same(y, ds.targets[name][view.row_ids])
        assert view.lines.tolist() == [r + 2 for r in view.row_ids.tolist()]
    k = 4
    x, y = val[k]
    px, py = ds[int(val.row_ids[k])]
    assert torch.equal(x, px) and all(_same(y[t], py[t]) for t in y)
    nested = train.subset([5, -1])
    assert nested.row_ids.tolist() == [int(train.row_ids[5]), int(train.row_ids[-1])]
    flipped = val.with_transform(lambda img: img.flip(-1))
    assert torch.equal(flipped[0][0], val[0][0].flip(-1)) and val.transform is None
    mask = torch.zeros(N, dtype=torch.bool)
    mask[[2, 9]] = True
    assert ds.subset(mask).row_ids.tolist() == [2, 9]
    with pytest.raises(IndexError):
        ds.subset([N])
    with pytest.raises(DataError, match="fractions"):
        ds.split((0.5, 0.5, 0.5))


# ---------------------------------------------------------------------------------------- transforms
def test_native_transforms_geometry() -> None:
    img = torch.rand(3, 28, 40)
    assert Resize(32)(img).shape == (3, 32, 45)  # shorter side to 32, aspect kept
    assert Resize([16, 20])(img).shape == (3, 16, 20)
    expected = F.interpolate(img[None], size=(14, 20), mode="bilinear", antialias=True)[0]
    assert torch.allclose(Resize([14, 20])(img), expected)
    assert Resize(4)(torch.rand(2, 1, 8, 8)).shape == (2, 1, 4, 4)  # batches too
    x = torch.arange(36.0).reshape(1, 6, 6)
    assert torch.equal(CenterCrop(2)(x), x[:, 2:4, 2:4])
    padded = CenterCrop(8)(x)
    assert padded.shape == (1, 8, 8) and torch.equal(padded[:, 1:7, 1:7], x)
    corners = {
        int(RandomCrop(4, generator=torch.Generator().manual_seed(s))(x)[0, 0, 0])
        for s in range(80)
    }
    assert corners == {6 * top + left for top in range(3) for left in range(3)}  # all 9 offsets
    with pytest.raises(ValueError, match="smaller than the crop"):
        RandomCrop(8)(x)
    assert RandomCrop(6, padding=2)(x).shape == (1, 6, 6)
    assert torch.equal(RandomHorizontalFlip(1.0)(x), x.flip(-1))
    assert torch.equal(RandomHorizontalFlip(0.0)(x), x)
    norm = Normalize([0.5], [0.25])(torch.full((3, 2, 2), 1.0))
    assert torch.allclose(norm, torch.full((3, 2, 2), 2.0))
    with pytest.raises(ValueError, match="channel statistics"):
        Normalize(*[[0.1, 0.2, 0.3]] * 2)(torch.rand(1, 4, 4))
    with pytest.raises(ValueError, match="float image"):
        Resize(2)(torch.zeros(1, 4, 4, dtype=torch.uint8))


def test_build_transforms_train_and_eval() -> None:
    img = torch.rand(1, 28, 28)
    train = build_transforms(TRAIN_SPEC, train=True, backend="native")
    evaluate = build_transforms(TRAIN_SPEC, train=False, backend="native")
    assert isinstance(train, Compose) and isinstance(evaluate, Compose)
    assert [type(t).__name__ for t in train.transforms] == [
        "Resize",
        "RandomCrop",
        "RandomHorizontalFlip",
        "Normalize",
    ]
    assert [type(t).__name__ for t in evaluate.transforms] == ["Resize", "CenterCrop", "Normalize"]
    assert train(img).shape == evaluate(img).shape == (1, 28, 28)
    expected = (CenterCrop(28)(Resize(32)(img)) - 0.1307) / 0.3081
    assert torch.allclose(evaluate(img), expected)
    # a list is applied in its own order; aliases and [mean, std] are accepted
    listed = build_transforms(
        [{"hflip": 1.0}, {"center_crop": 20}, {"normalize": [[0.5], [0.5]]}], train=True
    )
    assert torch.allclose(listed(img), (img.flip(-1)[:, 4:24, 4:24] - 0.5) / 0.5)
    assert len(build_transforms(None, train=True, backend="native")) == 0
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['flp'\]"):
        build_transforms({"flp": True}, train=True)
    with pytest.raises(ValueError, match="unknown normalize preset"):
        build_transforms({"normalize": "cifar"}, train=False)
    with pytest.raises(ValueError, match="backend"):
        build_transforms({}, train=False, backend="kornia")


def test_transforms_are_deterministic_under_a_seeded_generator(digits: Path) -> None:
    ds = ImageTableDataset(digits)

    def augmented(seed: int) -> torch.Tensor:
        t = build_transforms(
            TRAIN_SPEC, train=True, backend="native", generator=torch.Generator().manual_seed(seed)
        )
        return torch.stack([x for x, _ in ds.with_transform(t)])

    a, b, c = augmented(0), augmented(0), augmented(1)
    assert a.shape == (N, 1, 28, 28)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    evaluate = ds.with_transform(build_transforms(TRAIN_SPEC, train=False, backend="native"))
    assert torch.equal(evaluate[3][0], evaluate[3][0])


def test_torchvision_backend_is_explicit() -> None:
    if torchvision_available():
        pipeline = build_transforms(TRAIN_SPEC, train=False, backend="torchvision")
        img = torch.rand(1, 28, 28)
        native = build_transforms(TRAIN_SPEC, train=False, backend="native")
        assert torch.allclose(pipeline(img), native(img), atol=1e-5)
        with pytest.raises(ValueError, match="global RNG"):
            build_transforms(
                TRAIN_SPEC, train=True, backend="torchvision", generator=torch.Generator()
            )
    else:
        with pytest.raises(ImportError, match="backend='native'"):
            build_transforms(TRAIN_SPEC, train=True, backend="torchvision")
        assert isinstance(build_transforms(TRAIN_SPEC, train=True), Compose)  # auto -> native


# ---------------------------------------------------------------------------------------- loaders
def _epoch(
    ds: ImageTableDataset, workers: int, seed: int = 0, shuffle: bool = False
) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    loader = DataLoader(
        ds,
        batch_size=16,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=MultiTaskCollate(ds.tasks),
        generator=torch.Generator().manual_seed(seed),
    )
    return list(loader)


def test_dataloader_with_and_without_workers(digits: Path) -> None:
    ds = ImageTableDataset(digits)
    plain = _epoch(ds, 0)
    assert [x.shape[0] for x, _ in plain] == [16, 16, 16, 12]
    x, y = plain[0]
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x[3], ds[3][0])
    assert set(y) == {"digit", "is_even"}
    assert y["digit"].dtype == torch.int64 and y["is_even"].dtype == torch.float32
    # the batches hold exactly the data set's labels, missing ones kept as -1 / NaN
    for name in ("digit", "is_even"):
        assert _same(torch.cat([b[1][name] for b in plain]), ds.targets[name])
    for workers, shuffle in ((2, False), (0, True), (2, True)):
        other = _epoch(ds, workers, shuffle=shuffle)
        if shuffle:  # the same rows, in another order: the pairs (image, label) stay together
            first = torch.cat([b[0] for b in other])
            labels = torch.cat([b[1]["digit"] for b in other])
            for k in (0, 17, 59):
                row = next(i for i in range(N) if torch.equal(ds[i][0], first[k]))
                assert int(labels[k]) == int(ds.targets["digit"][row])
            continue
        for (xa, ya), (xb, yb) in zip(plain, other, strict=True):
            assert torch.equal(xa, xb)
            assert all(_same(ya[t], yb[t]) for t in ya)


def test_augmentations_in_workers_are_reproducible(digits: Path) -> None:
    # In workers a transform's own generator is replaced by the worker's RNG, which the loader
    # seeds from its generator: the loader's seed alone decides the augmentations.
    fixed = torch.Generator().manual_seed(0)
    train = ImageTableDataset(digits).with_transform(
        build_transforms(TRAIN_SPEC, train=True, backend="native", generator=fixed)
    )
    first = torch.cat([x for x, _ in _epoch(train, 2, seed=5)])
    second = torch.cat([x for x, _ in _epoch(train, 2, seed=5)])
    other = torch.cat([x for x, _ in _epoch(train, 2, seed=6)])
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
