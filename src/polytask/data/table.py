"""Any CSV / Parquet table with several target columns, as multi-task :class:`Splits`.

Why a generic table loader: most real multi-task problems arrive as one table with a few label
columns, some of them empty for some rows. This module turns such a table into model-ready tensors
*reproducibly*: every preprocessing decision (which columns are features, their train-split means
and standard deviations, the one-hot categories, how labels were mapped to 0/1 or class indices) is
captured in a :class:`TablePreprocessor` that serialises to plain JSON, so ``polytask predict`` can
apply exactly the same transformation to a new table later.

Rules, chosen so that nothing is guessed silently:

* Empty cells in target columns are missing labels (NaN, or ``-1`` for multiclass).
* NaN or inf in a numeric *feature* column is an error naming the column and row: imputation is a
  modelling decision the caller must make explicitly.
* String features are one-hot encoded with categories learned on the training split only; a value
  unseen in training becomes an all-zero block and is counted in ``info["unseen_categories"]``. A
  missing string cell is its own category, ``"<missing>"``.
* With ``categorical_encoding="embedding"`` they are instead integer *codes* for learned embedding
  tables (:class:`polytask.models.tabular.TabularTrunk`, as recommendation MTL models such as
  MMoE / PLE use): inputs become ``{"numeric": float [N, F], "categorical": long [N, C]}``, the
  training split's categories of each column are coded ``1..k`` in sorted order, and code
  :data:`UNKNOWN_CODE` (``0``) is the *unknown* row, shared by categories unseen in training and
  missing cells (both mean "no known category"; a zero-initialised row that only missing training
  cells train, so an unseen value starts as a neutral vector, like one-hot's all-zero block).
  ``info["cardinalities"]`` gives each column's number of codes ``k + 1`` (its embedding rows).
* Numeric features are standardized with training statistics only (a constant column keeps std 1).
* A target's kind is taken from ``kinds`` or inferred by :func:`infer_kind`.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import lzma
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from polytask.data.base import DataError, MultiTaskData, Splits
from polytask.data.batch import Inputs
from polytask.tasks import Task

__all__ = [
    "CATEGORICAL_ENCODINGS",
    "MAX_CLASSES",
    "MISSING_CATEGORY",
    "UNKNOWN_CODE",
    "LabelEncoding",
    "TablePreprocessor",
    "infer_kind",
    "load_table",
    "read_table",
    "resolve_target_kinds",
    "table_splits",
]

MAX_CLASSES = 20
MISSING_CATEGORY = "<missing>"
UNKNOWN_CODE = 0
CATEGORICAL_ENCODINGS = ("onehot", "embedding")
_KINDS = ("binary", "multiclass", "regression")
_SPLIT_NAMES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


# ---------------------------------------------------------------------------------------- helpers
def _missing(series: pd.Series) -> np.ndarray:
    """Missing cells: NaN / None / NA, and strings that are empty after stripping."""
    miss = series.isna().to_numpy(dtype=bool)
    if not (pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)):
        blank = series.astype(str).str.strip().eq("").to_numpy(dtype=bool, na_value=False)
        miss = miss | blank
    return miss


def _py(value: Any) -> Any:
    """A JSON-friendly Python scalar."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _sorted_unique(values: pd.Series) -> list[Any]:
    uniq = [_py(v) for v in pd.unique(values)]
    uniq = list(dict.fromkeys(uniq))
    try:
        return sorted(uniq)
    except TypeError:
        return sorted(uniq, key=str)


_SOURCE = "polytask_csv"  # DataFrame.attrs key: the CSV file read_table read the frame from


def _row(series: pd.Series, pos: int) -> str:
    """Where row ``pos`` of ``series`` is, said so that a user finds it.

    A frame :func:`read_table` read from a CSV file (its ``attrs`` name the file) gets the file's
    line number as an editor shows it (the header is line 1): a 0-based count of data rows sends
    the user two lines too high. Any other frame (a caller's own, whose index may mean anything:
    :class:`~polytask.data.images.ImageTableDataset` puts line numbers there) gets its index
    label, said to be one.
    """
    label = series.index[pos]
    source = series.attrs.get(_SOURCE)
    if source is not None and isinstance(label, int | np.integer):
        line = _csv_line(source, int(label))
        if line is not None:
            return f"line {line} of {source}"
        return f"data row {label} of {source} (counting from 0, header excluded)"
    shown = int(label) if isinstance(label, int | np.integer) else repr(label)
    return f"row {shown} (index label)"


def _csv_line(path: str, record: int) -> int | None:
    """The line (from 1) on which data row ``record`` (from 0, header excluded) of a CSV starts.

    Counted with the csv module as pandas reads the file (blank lines skipped, a quoted cell may
    span lines); only done for an error message. ``None`` when the file cannot be read that way.
    """
    openers: dict[str, Any] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
    suffix = Path(path).suffix.lower()
    if suffix in (".zip", ".zst", ".tar"):
        return None
    opener = openers.get(suffix, open)
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as fh:
            reader = csv.reader(fh)
            seen, header, done = -1, False, 0
            for fields in reader:
                start, done = done + 1, reader.line_num
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue  # a blank line: pandas skips it too
                if not header:
                    header = True
                    continue
                seen += 1
                if seen == record:
                    return start
    except (OSError, csv.Error, EOFError, lzma.LZMAError):
        return None
    return None


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


def infer_kind(series: pd.Series) -> str:
    """Guess a target column's kind from its non-missing values.

    * floats with a non-integer value -> ``regression``;
    * exactly 2 distinct values -> ``binary`` (mapped to 0/1 by :class:`LabelEncoding`);
    * 3 to ``MAX_CLASSES`` (20) distinct integers or strings -> ``multiclass``;
    * more distinct integers -> ``regression``.

    Raises :class:`DataError` for a column with no label, a single distinct value, infinite values,
    or more than ``MAX_CLASSES`` distinct strings (pass the kind explicitly then).
    """
    name = series.name
    values = series[~_missing(series)]
    if values.empty:
        raise DataError(f"column {name!r} has no non-missing value; cannot infer its kind")
    distinct = values.nunique()
    if _is_numeric(series) and not pd.api.types.is_bool_dtype(series):
        arr = values.to_numpy(dtype=np.float64)
        if not np.isfinite(arr).all():
            pos = int(np.flatnonzero(~np.isfinite(arr))[0])
            raise DataError(f"column {name!r} has an infinite value at {_row(values, pos)}")
        if (arr != np.round(arr)).any():
            return "regression"
    if distinct == 2:
        return "binary"
    if distinct < 2:
        raise DataError(
            f"column {name!r} has a single distinct value ({values.iloc[0]!r}); nothing to learn"
        )
    if distinct <= MAX_CLASSES:
        return "multiclass"
    if _is_numeric(series):
        return "regression"
    raise DataError(
        f"column {name!r} has {distinct} distinct string values (more than {MAX_CLASSES}); "
        f"pass kinds={{{name!r}: 'multiclass'}} if it really is a class label"
    )


# ---------------------------------------------------------------------------------------- labels
@dataclass
class LabelEncoding:
    """How one target column maps to model labels.

    ``classes[k]`` is the original value of label ``k`` (binary: ``[negative, positive]``;
    multiclass: classes in sorted order); ``None`` for regression.
    """

    column: str
    kind: str
    classes: list[Any] | None = None

    @classmethod
    def fit(cls, series: pd.Series, kind: str) -> LabelEncoding:
        column = str(series.name)
        if kind not in _KINDS:
            raise DataError(f"column {column!r}: unknown kind {kind!r}; expected one of {_KINDS}")
        enc = cls(column, kind)
        values = series[~_missing(series)]
        if kind == "regression":
            enc.encode(series)  # raises on non-numeric cells, naming the row
            return enc
        uniq = _sorted_unique(values)
        if kind == "binary":
            if set(uniq) <= {0, 1}:
                uniq = [0, 1] if not pd.api.types.is_bool_dtype(series) else [False, True]
            elif len(uniq) != 2:
                raise DataError(
                    f"binary column {column!r} has {len(uniq)} distinct values "
                    f"{uniq[:10]}; expected exactly 2"
                )
        elif len(uniq) < 2:
            raise DataError(
                f"multiclass column {column!r} has {len(uniq)} distinct value(s) {uniq}; need >= 2"
            )
        enc.classes = uniq
        return enc

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    def encode(self, series: pd.Series) -> np.ndarray:
        """float32 with NaN (binary, regression) or int64 with -1 (multiclass) for missing."""
        miss = _missing(series)
        if self.kind == "regression":
            raw = series.where(~miss)
            values = pd.to_numeric(raw, errors="coerce")
            bad = values.isna().to_numpy() & ~miss
            if bad.any():
                pos = int(np.flatnonzero(bad)[0])
                raise DataError(
                    f"regression target {self.column!r} is not numeric: value "
                    f"{series.iloc[pos]!r} at {_row(series, pos)}"
                )
            arr = values.to_numpy(dtype=np.float64)
            inf = np.isinf(arr)
            if inf.any():
                pos = int(np.flatnonzero(inf)[0])
                raise DataError(
                    f"regression target {self.column!r} is infinite at {_row(series, pos)}"
                )
            return arr.astype(np.float32)
        assert self.classes is not None
        lookup = {c: k for k, c in enumerate(self.classes)}
        codes = np.full(len(series), -1, dtype=np.int64)
        present = series[~miss]
        mapping: dict[Any, int] = {}
        for value in pd.unique(present):
            code = lookup.get(_py(value))
            if code is None:
                pos = int(np.flatnonzero((series == value).to_numpy(dtype=bool, na_value=False))[0])
                raise DataError(
                    f"target {self.column!r}: value {value!r} at {_row(series, pos)} is not "
                    f"one of the known classes {self.classes[:10]}"
                )
            mapping[value] = code
        codes[~miss] = present.map(mapping).to_numpy(dtype=np.int64)
        if self.kind == "multiclass":
            return codes
        out = codes.astype(np.float32)
        out[codes < 0] = np.nan
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "kind": self.kind, "classes": self.classes}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelEncoding:
        classes = d.get("classes")
        return cls(str(d["column"]), str(d["kind"]), None if classes is None else list(classes))

    def task(self) -> Task:
        if self.kind == "multiclass":
            return Task(self.column, "multiclass", num_classes=self.num_classes)
        return Task(self.column, self.kind)


# ---------------------------------------------------------------------------------------- features
class TablePreprocessor:
    """Feature (and label) preprocessing fitted on a training table, serialisable to JSON.

    Args:
        features: feature columns; ``None`` means every column except the targets at fit time.
        categorical: columns to one-hot encode even though they hold numbers (e.g. codes).
        targets: target column -> kind; their encodings are learned by :meth:`fit_targets`.
        categorical_encoding: ``"onehot"`` (one float tensor) or ``"embedding"`` (a dict of
            standardized numeric features and integer codes for embedding tables; see the module
            docstring).

    Numeric columns are standardized with the means / standard deviations of the table given to
    :meth:`fit`; other columns are one-hot encoded (or coded) with the categories seen there. After
    :meth:`transform`, ``unseen_`` counts, per column, the rows whose category was not seen in fit.
    """

    def __init__(
        self,
        features: Sequence[str] | None = None,
        categorical: Sequence[str] | None = None,
        targets: Mapping[str, str] | None = None,
        categorical_encoding: str = "onehot",
    ) -> None:
        if categorical_encoding not in CATEGORICAL_ENCODINGS:
            raise DataError(
                f"categorical_encoding must be one of {CATEGORICAL_ENCODINGS}, got "
                f"{categorical_encoding!r}"
            )
        self.categorical_encoding = categorical_encoding
        self.features: list[str] | None = None if features is None else [str(f) for f in features]
        self.force_categorical: list[str] = [str(c) for c in (categorical or [])]
        self.target_kinds: dict[str, str] = dict(targets or {})
        self.numeric_: list[str] = []
        self.categorical_: list[str] = []
        self.means_: dict[str, float] = {}
        self.stds_: dict[str, float] = {}
        self.categories_: dict[str, list[str]] = {}
        self.labels_: dict[str, LabelEncoding] = {}
        self.unseen_: dict[str, int] = {}
        self.fitted_ = False

    # -------------------------------------------------------------------------- fitting
    def _check_columns(self, df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise DataError(
                f"{what} column(s) {missing} not found; available columns: {list(map(str, df.columns))}"
            )

    def fit(self, df: pd.DataFrame) -> TablePreprocessor:
        """Learn feature types, means / stds and categories from ``df`` (the training split)."""
        if self.features is None:
            self.features = [str(c) for c in df.columns if str(c) not in self.target_kinds]
        self._check_columns(df, self.features, "feature")
        self._check_columns(df, self.force_categorical, "categorical")
        unknown = [c for c in self.force_categorical if c not in self.features]
        if unknown:
            raise DataError(f"categorical column(s) {unknown} are not among the features")
        clash = [c for c in self.features if c in self.target_kinds]
        if clash:
            raise DataError(f"column(s) {clash} are both features and targets")
        if len(df) == 0:
            raise DataError("cannot fit preprocessing on an empty table")
        self.numeric_, self.categorical_ = [], []
        self.means_, self.stds_, self.categories_ = {}, {}, {}
        for col in self.features:
            series = df[col]
            if col not in self.force_categorical and _is_numeric(series):
                arr = self._numeric(series, col)
                self.numeric_.append(col)
                self.means_[col] = float(arr.mean())
                std = float(arr.std())
                self.stds_[col] = std if std > 1e-12 else 1.0
            else:
                if col not in self.force_categorical:
                    self._reject_typo_numbers(series, col)
                self.categorical_.append(col)
                codes, labels = self._string_codes(series)
                cats = {labels[c] for c in np.unique(codes)}
                if self.categorical_encoding == "embedding":
                    cats.discard(MISSING_CATEGORY)  # missing cells take the unknown code
                self.categories_[col] = sorted(cats)
        self.fitted_ = True
        return self

    def fit_targets(self, df: pd.DataFrame) -> TablePreprocessor:
        """Learn label encodings for the target columns (use the whole table: labels, not features)."""
        self._check_columns(df, list(self.target_kinds), "target")
        self.labels_ = {t: LabelEncoding.fit(df[t], k) for t, k in self.target_kinds.items()}
        return self

    @staticmethod
    def _reject_typo_numbers(series: pd.Series, col: str) -> None:
        """A text column whose values are almost all numbers is most likely a typo'd numeric one."""
        values = series[~_missing(series)]
        if values.empty:
            return
        parsed = pd.to_numeric(values, errors="coerce")
        ok = parsed.notna().to_numpy()
        if 0.9 <= ok.mean() < 1.0:
            pos = int(np.flatnonzero(~ok)[0])
            raise DataError(
                f"feature column {col!r} is numeric except for {values.iloc[pos]!r} at "
                f"{_row(values, pos)} ({int((~ok).sum())} such row(s)); fix the value or pass "
                f"categorical=[{col!r}]"
            )

    @staticmethod
    def _numeric(series: pd.Series, col: str) -> np.ndarray:
        values = pd.to_numeric(series, errors="coerce")
        bad_text = values.isna().to_numpy() & series.notna().to_numpy()
        if bad_text.any():
            pos = int(np.flatnonzero(bad_text)[0])
            raise DataError(
                f"numeric feature column {col!r} has the non-numeric value {series.iloc[pos]!r} "
                f"at {_row(series, pos)}"
            )
        arr = values.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(arr)
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"numeric feature column {col!r} has {'NaN' if np.isnan(arr[pos]) else 'inf'} at "
                f"{_row(series, pos)} ({int(bad.sum())} non-finite row(s) in all); impute or "
                f"drop them before loading"
            )
        return arr

    @staticmethod
    def _string_codes(series: pd.Series) -> tuple[np.ndarray, list[str]]:
        """Factorize a column into category labels: ``labels[codes[i]]`` is row ``i``'s label.

        Labels are stripped strings (``1.0`` and ``1`` both give ``"1"``); missing and blank cells
        get :data:`MISSING_CATEGORY` (code ``-1`` indexes the last label, which is that).
        """
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        labels = [str(_py(u)).strip() for u in uniques]
        labels = [lab if lab else MISSING_CATEGORY for lab in labels]
        labels.append(MISSING_CATEGORY)
        return np.asarray(codes, dtype=np.int64), labels

    # -------------------------------------------------------------------------- transforming
    @property
    def feature_names(self) -> list[str]:
        """Output column names: numeric columns, then ``column=category`` one-hot columns.

        With the embedding encoding: the numeric columns (``inputs["numeric"]``), then the
        categorical columns (``inputs["categorical"]``, one code column each).
        """
        names = list(self.numeric_)
        if self.categorical_encoding == "embedding":
            return names + list(self.categorical_)
        for col in self.categorical_:
            names.extend(f"{col}={c}" for c in self.categories_[col])
        return names

    @property
    def cardinalities(self) -> list[int]:
        """Codes per categorical column, the unknown code 0 included (``k + 1``): embedding rows."""
        return [len(self.categories_[col]) + 1 for col in self.categorical_]

    def codes(self, df: pd.DataFrame) -> Tensor:
        """``int64 [len(df), len(categorical_)]``: category ``i`` of the fit's sorted list -> ``i + 1``.

        Unseen and missing cells get :data:`UNKNOWN_CODE`; ``unseen_`` counts the unseen ones
        (missing cells are not counted: they are unknown by design, not a surprise).
        """
        n = len(df)
        out = np.zeros((n, len(self.categorical_)), dtype=np.int64)
        self.unseen_ = {}
        for j, col in enumerate(self.categorical_):
            position = {c: k + 1 for k, c in enumerate(self.categories_[col])}
            row_codes, labels = self._string_codes(df[col])
            lookup = np.array([position.get(lab, UNKNOWN_CODE) for lab in labels], dtype=np.int64)
            out[:, j] = lookup[row_codes]
            is_missing = np.array([lab == MISSING_CATEGORY for lab in labels])[row_codes]
            unseen = int(((out[:, j] == UNKNOWN_CODE) & ~is_missing).sum())
            if unseen:
                self.unseen_[col] = unseen
        return torch.from_numpy(out)

    def _standardized(self, df: pd.DataFrame) -> np.ndarray:
        num = np.empty((len(df), len(self.numeric_)), dtype=np.float64)
        for j, col in enumerate(self.numeric_):
            num[:, j] = (self._numeric(df[col], col) - self.means_[col]) / self.stds_[col]
        return num

    def transform(self, df: pd.DataFrame) -> Inputs:
        """Model inputs for a table with the fitted columns.

        One-hot: ``float32 [len(df), len(feature_names)]``. Embedding: ``{"numeric": float32
        [len(df), len(numeric_)], "categorical": int64 [len(df), len(categorical_)]}`` (both keys
        always present, possibly zero columns wide, so a model sees the same inputs for any table).
        """
        if not self.fitted_:
            raise DataError("TablePreprocessor.transform called before fit")
        self._check_columns(df, self.numeric_ + self.categorical_, "feature")
        n = len(df)
        if self.categorical_encoding == "embedding":
            numeric = torch.from_numpy(self._standardized(df).astype(np.float32))
            return {"numeric": numeric, "categorical": self.codes(df)}
        blocks: list[np.ndarray] = []
        if self.numeric_:
            blocks.append(self._standardized(df))
        self.unseen_ = {}
        for col in self.categorical_:
            cats = self.categories_[col]
            position = {c: k for k, c in enumerate(cats)}
            row_codes, labels = self._string_codes(df[col])
            codes = np.array([position.get(lab, -1) for lab in labels], dtype=np.int64)[row_codes]
            onehot = np.zeros((n, len(cats)), dtype=np.float64)
            seen = codes >= 0
            onehot[np.flatnonzero(seen), codes[seen]] = 1.0
            blocks.append(onehot)
            if (~seen).any():
                self.unseen_[col] = int((~seen).sum())
        out = np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0))
        return torch.from_numpy(out.astype(np.float32))

    def warn_unseen(self, where: str) -> None:
        """Warn, per column, how many rows of the last :meth:`transform` had an unseen category.

        Why: at prediction time an unseen value silently becomes the unknown code (or an all-zero
        one-hot block); the prediction is still made, but the user should know which column
        drifted from the training data and by how many rows.
        """
        fallback = (
            f"the unknown code {UNKNOWN_CODE}"
            if self.categorical_encoding == "embedding"
            else "an all-zero one-hot block"
        )
        for col, count in self.unseen_.items():
            warnings.warn(
                f"{where}: column {col!r} has {count} row(s) with a category not seen in training; "
                f"they were given {fallback}",
                UserWarning,
                stacklevel=2,
            )

    def encode_targets(self, df: pd.DataFrame) -> dict[str, Tensor]:
        """Encoded labels per target: float32 with NaN, or int64 with -1 for multiclass."""
        self._check_columns(df, list(self.labels_), "target")
        return {t: torch.from_numpy(enc.encode(df[t])) for t, enc in self.labels_.items()}

    def tasks(self) -> list[Task]:
        return [enc.task() for enc in self.labels_.values()]

    # -------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "features": self.features,
            "numeric": list(self.numeric_),
            "categorical": list(self.categorical_),
            "force_categorical": list(self.force_categorical),
            "means": dict(self.means_),
            "stds": dict(self.stds_),
            "categories": {k: list(v) for k, v in self.categories_.items()},
            "feature_names": self.feature_names,
            "targets": {t: enc.to_dict() for t, enc in self.labels_.items()},
            "target_kinds": dict(self.target_kinds),
            "categorical_encoding": self.categorical_encoding,
            "cardinalities": self.cardinalities,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TablePreprocessor:
        pre = cls(
            d.get("features"),
            d.get("force_categorical"),
            d.get("target_kinds"),
            # files written before the option existed are one-hot
            categorical_encoding=str(d.get("categorical_encoding", "onehot")),
        )
        pre.numeric_ = list(d["numeric"])
        pre.categorical_ = list(d["categorical"])
        pre.means_ = {k: float(v) for k, v in d["means"].items()}
        pre.stds_ = {k: float(v) for k, v in d["stds"].items()}
        pre.categories_ = {k: [str(c) for c in v] for k, v in d["categories"].items()}
        pre.labels_ = {t: LabelEncoding.from_dict(e) for t, e in d.get("targets", {}).items()}
        pre.fitted_ = True
        return pre


# ---------------------------------------------------------------------------------------- loader
def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a CSV (optionally compressed) or Parquet file; Parquet needs the ``parquet`` extra."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"table not found: {p}")
    suffixes = [s.lower() for s in p.suffixes]
    try:
        if suffixes and suffixes[-1] in (".parquet", ".pq"):
            if importlib.util.find_spec("pyarrow") is None:
                raise ImportError(f"reading {p} needs pyarrow: pip install 'polytask[parquet]'")
            return pd.read_parquet(p, engine="pyarrow")
        frame = pd.read_csv(p)
        frame.attrs[_SOURCE] = str(p)  # lets errors name the file's line (see _row)
        return frame
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read table {p}: {err}") from None


def resolve_target_kinds(
    df: pd.DataFrame,
    targets: Sequence[str],
    kinds: Mapping[str, str] | None = None,
    where: str = "table",
) -> dict[str, str]:
    """Check the target columns and the given kinds, and infer the kinds not given.

    Shared by every loader that reads labels from a table (:func:`load_table`, the image index of
    :class:`polytask.data.images.ImageTableDataset`) so that a column means the same task
    whichever loader reads it. ``where`` prefixes the errors (the file name).
    """
    if not targets:
        raise DataError(f"{where}: no target column given")
    missing = [t for t in targets if t not in df.columns]
    if missing:
        raise DataError(
            f"{where}: target column(s) {missing} not found; available columns: "
            f"{list(map(str, df.columns))}"
        )
    given = dict(kinds or {})
    stray = [k for k in given if k not in targets]
    if stray:
        raise DataError(f"{where}: kinds given for non-target column(s) {stray}")
    for t, k in given.items():
        if k not in _KINDS:
            raise DataError(
                f"{where}: target {t!r} has unknown kind {k!r}; expected one of {_KINDS}"
            )
    return {t: given.get(t) or infer_kind(df[t]) for t in targets}


def _split_positions(
    df: pd.DataFrame,
    split_column: str | None,
    fractions: tuple[float, float, float],
    seed: int,
) -> dict[str, np.ndarray]:
    if split_column is not None:
        if split_column not in df.columns:
            raise DataError(
                f"split column {split_column!r} not found; available columns: "
                f"{list(map(str, df.columns))}"
            )
        raw = df[split_column]
        names = np.array(
            [_SPLIT_NAMES.get(str(v).strip().lower(), "") for v in raw.to_numpy()], dtype=object
        )
        bad = names == ""
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"split column {split_column!r}: value {raw.iloc[pos]!r} at "
                f"{_row(raw, pos)} is not one of {sorted(_SPLIT_NAMES)}"
            )
        parts = {s: np.flatnonzero(names == s) for s in ("train", "val", "test")}
    else:
        if (
            len(fractions) != 3
            or any(f < 0 for f in fractions)
            or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6)
        ):
            raise DataError(
                f"split fractions must be 3 non-negative numbers summing to 1: {fractions}"
            )
        n = len(df)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
        n_train, n_val = round(fractions[0] * n), round(fractions[1] * n)
        parts = {
            "train": perm[:n_train],
            "val": perm[n_train : n_train + n_val],
            "test": perm[n_train + n_val :],
        }
    for s, idx in parts.items():
        if idx.size == 0:
            raise DataError(f"the {s} split of the table is empty ({len(df)} rows)")
    return parts


def load_table(
    path: str | os.PathLike[str],
    targets: list[str],
    kinds: dict[str, str] | None = None,
    features: list[str] | None = None,
    split_column: str | None = None,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    categorical: list[str] | None = None,
    categorical_encoding: str = "onehot",
) -> Splits:
    """Load a table with several target columns as validated :class:`Splits`.

    Args:
        path: ``.csv`` (optionally ``.gz``/``.zip``/...) or ``.parquet`` file.
        targets: the label columns, one task each.
        kinds: target -> ``binary`` / ``multiclass`` / ``regression``; others are inferred
            with :func:`infer_kind`.
        features: feature columns; default every column but the targets and ``split_column``.
        split_column: a column of ``train`` / ``val`` / ``test`` assigning rows to splits;
            otherwise rows are shuffled with ``seed`` and cut by ``fractions``.
        categorical: numeric-looking columns to treat as categories (codes, ids).
        categorical_encoding: ``"onehot"`` (one float tensor of inputs) or ``"embedding"``
            (``{"numeric", "categorical"}`` inputs for the ``tabular`` trunk's embedding tables).

    ``row_ids`` are 0-based data-row numbers of the file. ``info["preprocessing"]`` is the JSON
    form of the fitted :class:`TablePreprocessor` (rebuild it with ``from_dict``); with the
    embedding encoding ``info["cardinalities"]`` holds each categorical column's number of codes.
    """
    p = Path(path)
    return table_splits(
        read_table(p), targets, kinds, features, split_column, fractions, seed, categorical,
        name=p.name, where=str(p), file=str(p), categorical_encoding=categorical_encoding,
    )


def table_splits(
    df: pd.DataFrame,
    targets: list[str],
    kinds: dict[str, str] | None = None,
    features: list[str] | None = None,
    split_column: str | None = None,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    categorical: list[str] | None = None,
    *,
    name: str = "table",
    where: str = "table",
    file: str | None = None,
    categorical_encoding: str = "onehot",
) -> Splits:
    """:func:`load_table` on a DataFrame already in memory (what ``MultiTaskLearner.fit`` uses).

    One code path for files and frames, so that a table trained from Python is preprocessed
    exactly as ``polytask fit`` would (kinds, encodings, train-only statistics). ``df`` is not
    modified; ``where`` prefixes the error messages, ``name`` names the data.
    """
    df = df.rename(columns=str).reset_index(drop=True)
    resolved = resolve_target_kinds(df, targets, kinds, where=where)
    if features is None:
        features = [c for c in df.columns if c not in targets and c != split_column]
    elif split_column is not None and split_column in features:
        raise DataError(f"{where}: split column {split_column!r} cannot also be a feature")
    if not features:
        raise DataError(f"{where}: no feature column left after removing targets {targets}")
    parts = _split_positions(df, split_column, fractions, seed)
    pre = TablePreprocessor(features, categorical, resolved, categorical_encoding)
    pre.fit_targets(df).fit(df.iloc[parts["train"]])
    tasks = pre.tasks()
    data: dict[str, MultiTaskData] = {}
    unseen: dict[str, dict[str, int]] = {}
    for split, idx in parts.items():
        sub = df.iloc[idx]
        data[split] = MultiTaskData(
            inputs=pre.transform(sub),
            targets=pre.encode_targets(sub),
            tasks=tasks,
            name=name,
            row_ids=torch.from_numpy(np.asarray(idx, dtype=np.int64)),
        )
        if split != "train":
            unseen[split] = dict(pre.unseen_)
    splits = Splits(
        train=data["train"],
        val=data["val"],
        test=data["test"],
        info={
            "dataset": name,
            "file": file,
            "split": "column" if split_column else "random",
            "split_column": split_column,
            "seed": seed,
            "fractions": list(fractions),
            "kinds": resolved,
            "preprocessing": pre.to_dict(),
            "unseen_categories": unseen,
            **({"cardinalities": pre.cardinalities} if categorical_encoding == "embedding" else {}),
        },
    )
    return splits.validate().fit_target_scalers()
