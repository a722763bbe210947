"""Dense scene data in the preprocessed ``.npy`` layout of MTAN and LibMTL, read per item.

The NYUv2 and Cityscapes files that MTAN (Liu et al. 2019) published, and that LibMTL and most
later multi-task papers train on, are one ``.npy`` file per image and per target, numbered from 0::

    <root>/<split>/image/<i>.npy     float [H, W, 3], channels last, values in [0, 1]
    <root>/<split>/<label folder>/<i>.npy   float [H, W], class indices, -1 = unlabelled pixel
    <root>/<split>/depth/<i>.npy     float [H, W, 1] (or [H, W]); 0 (or NaN) = no depth there
    <root>/<split>/normal/<i>.npy    float [H, W, 3] unit vectors; 0 = no normal there

:class:`NpySceneDataset` is one such split folder as a ``torch.utils.data.Dataset``: an item is
``(image [3, H, W], {task: target})`` read from disk when asked for, so the images of a split never
need to be in memory at once (795 NYUv2 training images are 1 GB as float32).

Why everything is checked when the data set is opened, not when a batch first touches a file: a
bad file found in epoch 40 of a 200-epoch GPU run wastes the run. Opening checks that every folder
exists, that the folders hold the same number of files, numbered ``0 .. n-1``, and every file's
shape (the ``.npy`` header only, memory-mapped, so no pixel is read). :meth:`read_targets` then
reads every target file once (the framework keeps every row's targets: label counts, validation,
the single-task baselines' rows) and checks its values with the task's own rules, naming the file.
Images are checked per item (finite values), when read.

The targets are held compactly but exactly: class indices as ``int8`` (at most 127 classes;
these sets have 7-19), depth and normals as ``float32``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from polytask.data.base import DataError, Splits, split_indices
from polytask.data.loader import DatasetData
from polytask.tasks import LabelError, Task

__all__ = ["NpySceneDataset", "NpyTarget", "load_npy_scenes", "resolve_root"]

_NUMBERED = re.compile(r"(\d+)\.npy")


@dataclass(frozen=True)
class NpyTarget:
    """Where one task's targets live in a split folder, and their channels on disk.

    ``channels`` is ``None`` for class maps ``[H, W]``, ``1`` for depth (``[H, W, 1]`` or
    ``[H, W]`` on disk, ``[1, H, W]`` as a target) and ``3`` for normals (``[H, W, 3]`` on disk,
    ``[3, H, W]`` as a target).
    """

    task: Task
    folder: str
    channels: int | None


def resolve_root(path: str | os.PathLike[str] | None, env: str, default_dir: str) -> Path:
    """The data set's root: ``path``, else ``$<env>``, else ``$POLYTASK_DATA/<default_dir>``.

    There is no download: the preprocessed files are distributed by their authors (see
    ``docs/datasets.md``), so a missing root is an error saying where it was looked for.
    """
    if path is not None:
        root, how = Path(path).expanduser(), "the path option"
    elif os.environ.get(env):
        root, how = Path(os.environ[env]).expanduser(), f"${env}"
    elif os.environ.get("POLYTASK_DATA"):
        root, how = Path(os.environ["POLYTASK_DATA"]) / default_dir, "$POLYTASK_DATA"
    else:
        raise DataError(
            f"no {default_dir} folder given: pass the path option (data.options.path), set "
            f"{env}, or put it at $POLYTASK_DATA/{default_dir}"
        )
    if not root.is_dir():
        raise DataError(f"{default_dir}: folder {root} (from {how}) does not exist")
    return root


def _numbered(folder: Path) -> int:
    """How many files ``0.npy .. n-1.npy`` the folder holds; raise naming a gap or a stray."""
    if not folder.is_dir():
        raise DataError(f"folder {folder} does not exist")
    numbers = sorted(
        int(m.group(1)) for f in os.listdir(folder) if (m := _NUMBERED.fullmatch(f)) is not None
    )
    if not numbers:
        raise DataError(f"folder {folder} holds no <i>.npy file")
    for expected, got in enumerate(numbers):
        if expected != got:
            raise DataError(
                f"file {folder / f'{expected}.npy'} is missing (the files are numbered 0 .. "
                f"{numbers[-1]}, one per image)"
            )
    return len(numbers)


def _header_shape(file: Path) -> tuple[int, ...]:
    """The array shape from the ``.npy`` header (memory-mapped: no data is read)."""
    try:
        return tuple(np.load(file, mmap_mode="r", allow_pickle=False).shape)
    except (OSError, ValueError) as err:
        raise DataError(f"file {file} is not a readable .npy array: {err}") from None


class NpySceneDataset(Dataset):
    """One split folder of the MTAN/LibMTL ``.npy`` layout, read per item (see the module doc).

    Args:
        split_dir: ``<root>/<split>``.
        targets: the tasks and their folders.
        size: the expected ``(H, W)`` of every image and target.
        name: used in messages ("nyuv2/train").
    """

    def __init__(
        self, split_dir: str | os.PathLike[str], targets: Sequence[NpyTarget],
        size: tuple[int, int], name: str,
    ) -> None:
        self.split_dir = Path(split_dir)
        self.specs = list(targets)
        self.size = (int(size[0]), int(size[1]))
        self.name = name
        if not self.split_dir.is_dir():
            raise DataError(f"{name}: folder {self.split_dir} does not exist")
        self.length = _numbered(self.split_dir / "image")
        for spec in self.specs:
            n = _numbered(self.split_dir / spec.folder)
            if n != self.length:
                raise DataError(
                    f"{name}: folder {self.split_dir / 'image'} holds {self.length} images but "
                    f"{self.split_dir / spec.folder} holds {n} {spec.task.name} files; every "
                    "image needs one file per task"
                )
        for i in range(self.length):
            self._check_shape(self._file("image", i), 3)
            for spec in self.specs:
                self._check_shape(self._file(spec.folder, i), spec.channels)

    def _file(self, folder: str, i: int) -> Path:
        return self.split_dir / folder / f"{i}.npy"

    def _check_shape(self, file: Path, channels: int | None) -> None:
        shape = _header_shape(file)
        h, w = self.size
        if channels is None:
            allowed = [(h, w)]
        elif channels == 1:
            allowed = [(h, w, 1), (h, w)]
        else:
            allowed = [(h, w, channels)]
        if shape not in allowed:
            raise DataError(
                f"{self.name}: file {file} has shape {list(shape)}, expected "
                f"{' or '.join(str(list(a)) for a in allowed)} (channels last; the size option "
                f"says {h}x{w})"
            )

    def __len__(self) -> int:
        return self.length

    def _read(self, file: Path) -> np.ndarray:
        return np.load(file, allow_pickle=False)

    def _image(self, i: int) -> Tensor:
        file = self._file("image", i)
        array = self._read(file)
        if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
            raise DataError(f"{self.name}: image {file} holds NaN, inf or non-numbers")
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 0), dtype=np.float32))

    def _target(self, spec: NpyTarget, i: int) -> Tensor:
        """Task layout ``[H, W]`` (classes, int64) or ``[C, H, W]`` (float32) of file ``i``."""
        array = self._read(self._file(spec.folder, i))
        if spec.channels is None:
            return torch.from_numpy(np.ascontiguousarray(array))
        if array.ndim == 2:
            array = array[..., None]
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 0), dtype=np.float32))

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        if not 0 <= i < self.length:
            raise IndexError(f"{self.name}: index {i} outside 0 .. {self.length - 1}")
        targets: dict[str, Tensor] = {}
        for spec in self.specs:
            y = self._target(spec, i)
            targets[spec.task.name] = y.long() if spec.channels is None else y
        return self._image(i), targets

    def read_targets(self) -> dict[str, Tensor]:
        """Every row's targets, each file checked by its task's rules (the error names the file).

        A method, not an attribute: the caller hands the result to
        :class:`~polytask.data.loader.DatasetData` and the data set itself keeps no copy, so
        DataLoader workers never carry it.
        """
        h, w = self.size
        out: dict[str, Tensor] = {}
        for spec in self.specs:
            task = spec.task
            if spec.channels is None:
                if (task.num_classes or 0) > 127:
                    raise DataError(f"task {task.name!r}: more than 127 classes cannot be int8")
                store = torch.empty((self.length, h, w), dtype=torch.int8)
            else:
                store = torch.empty((self.length, spec.channels, h, w), dtype=torch.float32)
            for i in range(self.length):
                y = self._target(spec, i)
                file = self._file(spec.folder, i)
                if not y.dtype.is_floating_point and y.dtype not in (
                    torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8
                ):
                    raise DataError(f"{self.name}: file {file} holds {y.dtype}, not numbers")
                try:
                    task.validate_targets(y.unsqueeze(0), f"file {file}")
                except LabelError as err:
                    raise DataError(str(err)) from None
                store[i] = y.to(store.dtype)
            out[task.name] = store
        return out


def load_npy_scenes(
    root: Path,
    targets: Sequence[NpyTarget],
    *,
    name: str,
    size: tuple[int, int],
    seed: int,
    val_fraction: float,
    num_workers: int,
    pin_memory: bool,
    info: dict[str, Any],
) -> Splits:
    """Train / validation / test of a ``<root>/{train,val}`` layout.

    The published ``val`` folder is the test split (it is what papers report); the validation split
    that model selection reads is ``val_fraction`` of ``train``, drawn with ``seed`` by the
    package's one split rule (:func:`~polytask.data.base.split_indices`).
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"{name}: val_fraction must be in (0, 1), got {val_fraction}")
    if len(size) != 2 or any(int(s) < 1 for s in size):
        raise DataError(f"{name}: size must be two positive numbers (H, W), got {size}")
    if num_workers < 0:
        raise DataError(f"{name}: num_workers must be >= 0, got {num_workers}")
    tasks = [spec.task for spec in targets]
    options = {"num_workers": num_workers, "pin_memory": pin_memory,
               "persistent_workers": num_workers > 0}
    train_set = NpySceneDataset(root / "train", targets, size, f"{name}/train")
    test_set = NpySceneDataset(root / "val", targets, size, f"{name}/test")
    train_idx, val_idx, _ = split_indices(
        len(train_set), (1.0 - val_fraction, val_fraction, 0.0), seed
    )
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise DataError(
            f"{name}: val_fraction {val_fraction} of {len(train_set)} training images leaves an "
            "empty training or validation split"
        )
    full = DatasetData(
        train_set, tasks, name=f"{name}/train", targets=train_set.read_targets(), **options
    )
    train, val = full.subset(train_idx), full.subset(val_idx)
    train.name, val.name = f"{name}/train", f"{name}/val"
    test = DatasetData(
        test_set, tasks, name=f"{name}/test", targets=test_set.read_targets(), **options
    )
    return Splits(train, val, test, info={
        "dataset": name, "root": str(root), "seed": seed, "val_fraction": val_fraction,
        "size": list(size), "rows": {"train": len(train), "val": len(val), "test": len(test)},
        "split": f"validation = {val_fraction:g} of train (seed {seed}); test = the published val",
        **info,
    }).validate()
