"""Reading a run or experiment directory into plain data for the report (no HTML, no figures).

Why the report reads files rather than live objects: the files are the record of a run. A report
can be built for runs made on another machine, for a run killed half-way (it gets a report of what
exists, marked incomplete) and weeks later. Everything the report shows comes through this module,
so the rules about files live in one place:

- ``metrics.csv`` / ``weights.csv`` are what training always writes; a run without them is noted.
- ``results.json`` marks a finished run; ``summary.json`` an experiment (a comparison of runs).
- ``config.yaml`` (an experiment's run), ``stl_key.json`` (a cached single-task baseline: its cache
  key is its configuration), ``experts.csv``, ``dense_samples.npz``, ``relations.json``,
  ``analysis.json`` and ``grouping.json`` are optional: their section appears when they exist.
- A required file that is present but malformed (a column missing) is an error naming the file and
  the column. An optional file that cannot be read becomes a note in its own section, naming the
  file and the key, so that the rest of the report (the record of hours of training) still renders.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "ANALYSIS_FILE",
    "CONFIG_FILE",
    "EXPERIMENT_FILE",
    "EXPERTS_COLUMNS",
    "GROUPING_FILE",
    "METRICS_COLUMNS",
    "RELATIONS_FILE",
    "RESULTS_FILE",
    "STL_KEY_FILE",
    "WEIGHTS_COLUMNS",
    "ExperimentData",
    "Grouping",
    "OptionalFile",
    "Relations",
    "RunData",
    "finite",
    "load_experiment",
    "load_run",
    "read_experts",
    "read_metrics",
    "read_weights",
]

RESULTS_FILE = "results.json"
EXPERIMENT_FILE = "summary.json"
METRICS_FILE = "metrics.csv"
WEIGHTS_FILE = "weights.csv"
EXPERTS_FILE = "experts.csv"
CONFIG_FILE = "config.yaml"
STL_KEY_FILE = "stl_key.json"
RELATIONS_FILE = "relations.json"
ANALYSIS_FILE = "analysis.json"
GROUPING_FILE = "grouping.json"
DENSE_SAMPLES_FILE = "dense_samples.npz"
"""Written by :mod:`polytask.evaluation.dense_samples` (the test suite checks the two names agree).

Named here too so that reporting a run without dense tasks never imports that module (torch):
``polytask report`` starts without paying for torch."""

METRICS_COLUMNS = ("epoch", "split", "task", "metric", "value")
WEIGHTS_COLUMNS = ("step", "epoch", "task", "weight")
EXPERTS_COLUMNS = ("epoch", "task", "expert", "weight")


def finite(value: object) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class OptionalFile:
    """An optional file's content, or why it could not be read (``error`` names file and key)."""

    path: Path
    value: Any = None
    error: str | None = None


# --------------------------------------------------------------------------------- relations
@dataclass(frozen=True)
class Relations:
    """``relations.json``: per measure a task x task matrix averaged over the recorded epochs.

    ``matrices`` holds only the measures present in the file (absent or empty ones are listed in
    ``absent``); ``loss_ratio`` is ``{task: [value per epoch]}``.
    """

    tasks: list[str]
    matrices: dict[str, np.ndarray]
    descriptions: dict[str, str]
    epochs: dict[str, int]
    absent: list[str]
    loss_ratio: dict[str, list[float]]
    counts: dict[str, Any]


KNOWN_MEASURES = (
    "grad_cosine",
    "conflict_frequency",
    "lookahead_affinity",
    "lookahead_affinity_first_order",
)


def _parse_relations(path: Path, data: Mapping[str, Any]) -> Relations:
    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise ValueError(f"{path}: key 'tasks' must be a list of task names")
    n = len(tasks)
    measures = data.get("measures") or {}
    if not isinstance(measures, Mapping):
        raise ValueError(f"{path}: key 'measures' must be an object of measure -> per_epoch")
    matrices: dict[str, np.ndarray] = {}
    descriptions: dict[str, str] = {}
    epochs: dict[str, int] = {}
    for name, measure in measures.items():
        per_epoch = (measure or {}).get("per_epoch") if isinstance(measure, Mapping) else None
        if not per_epoch:
            continue
        stacked = np.asarray(
            [[[np.nan if v is None else v for v in row] for row in m] for m in per_epoch],
            dtype=float,
        )
        if stacked.ndim != 3 or stacked.shape[1:] != (n, n):
            raise ValueError(
                f"{path}: measures.{name}.per_epoch must be a list of {n}x{n} matrices "
                f"(one row and column per task), found shape {list(stacked.shape)}"
            )
        recorded = ~np.isnan(stacked).all(axis=(1, 2))
        if not recorded.any():
            continue
        with np.errstate(all="ignore"):
            matrices[str(name)] = np.nanmean(stacked[recorded], axis=0)
        descriptions[str(name)] = str(measure.get("description", ""))
        epochs[str(name)] = int(recorded.sum())
    absent = [m for m in KNOWN_MEASURES if m not in matrices]
    loss_ratio: dict[str, list[float]] = {}
    per_epoch_ratio = (data.get("loss_ratio") or {}).get("per_epoch") or []
    for epoch in per_epoch_ratio:
        for task in tasks:
            value = finite((epoch or {}).get(task))
            loss_ratio.setdefault(task, []).append(math.nan if value is None else value)
    counts = data.get("counts") or {}
    return Relations(
        tasks, matrices, descriptions, epochs, absent, loss_ratio,
        dict(counts) if isinstance(counts, Mapping) else {},
    )


# ---------------------------------------------------------------------------------- grouping
@dataclass(frozen=True)
class Candidate:
    groups: list[list[str]]
    score: float | None
    val_delta_m: float | None
    val_delta_m_std: float | None
    time_per_epoch_s: float | None


@dataclass(frozen=True)
class Grouping:
    """``grouping.json``: the task partitions compared, and the index of the chosen one."""

    tasks: list[str]
    candidates: list[Candidate]
    chosen: int | None


def _parse_grouping(path: Path, data: Mapping[str, Any]) -> Grouping:
    candidates = data.get("candidates")
    if not isinstance(candidates, list):
        raise ValueError(f"{path}: key 'candidates' must be a list")
    parsed = []
    for i, candidate in enumerate(candidates):
        groups = candidate.get("groups") if isinstance(candidate, Mapping) else None
        if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
            raise ValueError(f"{path}: candidates[{i}].groups must be a list of lists of tasks")
        parsed.append(
            Candidate(
                [[str(t) for t in g] for g in groups],
                finite(candidate.get("score")),
                finite(candidate.get("val_delta_m")),
                finite(candidate.get("val_delta_m_std")),
                finite(candidate.get("time_per_epoch_s")),
            )
        )
    chosen = data.get("chosen")
    if chosen is not None and (
        not isinstance(chosen, int) or isinstance(chosen, bool) or not 0 <= chosen < len(parsed)
    ):
        raise ValueError(
            f"{path}: key 'chosen' must index candidates (0..{len(parsed) - 1}), found {chosen!r}"
        )
    return Grouping([str(t) for t in data.get("tasks") or []], parsed, chosen)


def _optional_json(path: Path, parse: Any = None) -> OptionalFile | None:
    """``None`` when the file is absent; else its parsed content or the reason it is unreadable."""
    if not path.is_file():
        return None
    try:
        data = read_json(path)
        return OptionalFile(path, parse(path, data) if parse else data)
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        return OptionalFile(path, error=str(err) if str(path) in str(err) else f"{path}: {err}")


# --------------------------------------------------------------------------------------- runs
@dataclass
class RunData:
    """What a run directory holds; ``None`` for a file that is not there."""

    directory: Path
    results: dict[str, Any] | None
    metrics: pd.DataFrame | None
    weights: pd.DataFrame | None
    experts: pd.DataFrame | None
    config: str | None
    config_file: str | None
    missing: list[str] = field(default_factory=list)
    dense: OptionalFile | None = None
    relations: OptionalFile | None = None
    analysis: OptionalFile | None = None
    grouping: OptionalFile | None = None

    @property
    def name(self) -> str:
        if self.config_file == STL_KEY_FILE:  # trained in the cache under a temporary name
            return self.directory.name
        if self.results and self.results.get("name"):
            return str(self.results["name"])
        return self.directory.name

    @property
    def complete(self) -> bool:
        return self.results is not None

    @property
    def best_epoch(self) -> int | None:
        best = (self.results or {}).get("best_epoch")
        return int(best) if isinstance(best, int | float) and math.isfinite(best) else None

    def task_names(self) -> list[str]:
        """Tasks in ``results.json`` order, then any others seen in the CSV files."""
        names = [str(t["name"]) for t in (self.results or {}).get("tasks", []) if "name" in t]
        for frame in (self.metrics, self.weights, self.experts):
            if frame is not None:
                names.extend(t for t in frame["task"].unique() if t)
        return list(dict.fromkeys(names))

    def task_info(self) -> dict[str, dict[str, Any]]:
        return {str(t["name"]): t for t in (self.results or {}).get("tasks", []) if "name" in t}


def _read_dense(path: Path) -> OptionalFile | None:
    if not path.exists():
        return None
    from polytask.evaluation.dense_samples import read_dense_samples

    try:
        return OptionalFile(path, read_dense_samples(path))
    except (OSError, ValueError, KeyError) as err:
        return OptionalFile(path, error=f"{path}: {err}")


def _read_config(directory: Path) -> tuple[str | None, str | None]:
    """The run's configuration text and the file it came from.

    ``config.yaml`` is written by experiments for the runs they train; a single-task baseline is
    trained once, cached and copied, and its configuration is its cache key, ``stl_key.json``.
    A run trained by calling ``polytask.training.fit`` directly has neither: not a defect.
    """
    for name in (CONFIG_FILE, STL_KEY_FILE):
        path = directory / name
        if path.is_file():
            return path.read_text(encoding="utf-8", errors="replace"), name
    return None, None


def load_run(directory: Path) -> RunData:
    """Read a run directory's files; an absent expected file is listed in ``missing``."""
    results_path = directory / RESULTS_FILE
    results = read_json(results_path) if results_path.is_file() else None
    missing: list[str] = [] if results is not None else [RESULTS_FILE]

    def expected_csv(name: str, reader: Any) -> pd.DataFrame | None:
        path = directory / name
        if path.is_file():
            frame: pd.DataFrame = reader(path)
            return frame
        missing.append(name)
        return None

    metrics = expected_csv(METRICS_FILE, read_metrics)
    weights = expected_csv(WEIGHTS_FILE, read_weights)
    experts_path = directory / EXPERTS_FILE
    experts = read_experts(experts_path) if experts_path.is_file() else None
    config, config_file = _read_config(directory)
    return RunData(
        directory, results, metrics, weights, experts, config, config_file, missing,
        dense=_read_dense(directory / DENSE_SAMPLES_FILE),
        relations=_optional_json(directory / RELATIONS_FILE, _parse_relations),
        analysis=_optional_json(directory / ANALYSIS_FILE),
        grouping=_optional_json(directory / GROUPING_FILE, _parse_grouping),
    )


def is_run_directory(directory: Path) -> bool:
    return (directory / RESULTS_FILE).is_file() or (directory / METRICS_FILE).is_file()


# -------------------------------------------------------------------------------- experiments
@dataclass
class ExperimentData:
    """``summary.json`` of an experiment, its runs (``None`` where a run directory is gone)."""

    directory: Path
    title: str
    tasks: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    labels: list[str]
    notes: list[str]
    aggregate: list[dict[str, Any]] | None
    runs: list[RunData | None]
    grouping: OptionalFile | None = None
    relations: OptionalFile | None = None
    analysis: OptionalFile | None = None


def load_experiment(directory: Path) -> ExperimentData:
    path = directory / EXPERIMENT_FILE
    summary = read_json(path)
    rows = summary.get("rows")
    if not isinstance(rows, list):
        raise ValueError(f"{path}: missing required key 'rows' (a list of compared runs)")
    tasks = [t for t in summary.get("tasks", []) if isinstance(t, dict) and "name" in t]
    labels = [str(row.get("label", f"run {i + 1}")) for i, row in enumerate(rows)]
    runs: list[RunData | None] = []
    for row in rows:
        run_dir = row.get("run_dir")
        run_path = directory / str(run_dir) if run_dir else None
        runs.append(load_run(run_path) if run_path and is_run_directory(run_path) else None)
    aggregate = summary.get("aggregate")
    return ExperimentData(
        directory=directory,
        title=str(summary.get("title") or directory.name),
        tasks=tasks,
        rows=rows,
        labels=labels,
        notes=[str(n) for n in summary.get("notes", [])],
        aggregate=[a for a in aggregate if isinstance(a, dict)]
        if isinstance(aggregate, list)
        else None,
        runs=runs,
        grouping=_optional_json(directory / GROUPING_FILE, _parse_grouping),
        relations=_optional_json(directory / RELATIONS_FILE, _parse_relations),
        analysis=_optional_json(directory / ANALYSIS_FILE),
    )


# -------------------------------------------------------------------------------------- files
def read_metrics(path: Path) -> pd.DataFrame:
    """``metrics.csv`` as a frame with int ``epoch``, str ``split/task/metric``, float ``value``."""
    frame = _read_csv(path, METRICS_COLUMNS, numeric=("epoch", "value"))
    frame = frame.dropna(subset=["epoch"])
    frame["epoch"] = frame["epoch"].astype(int)
    return frame


def read_weights(path: Path) -> pd.DataFrame:
    """``weights.csv`` with int ``step``/``epoch``, str ``task`` and float ``weight``."""
    frame = _read_csv(path, WEIGHTS_COLUMNS, numeric=("step", "epoch", "weight"))
    frame = frame.dropna(subset=["step", "epoch", "weight"])
    frame[["step", "epoch"]] = frame[["step", "epoch"]].astype(int)
    return frame.sort_values("step", kind="stable")


def read_experts(path: Path) -> pd.DataFrame:
    """``experts.csv`` with int ``epoch``, str ``task``/``expert`` and float ``weight``."""
    frame = _read_csv(path, EXPERTS_COLUMNS, numeric=("epoch", "weight"))
    frame = frame.dropna(subset=["epoch", "weight"])
    frame["epoch"] = frame["epoch"].astype(int)
    return frame


def _read_csv(path: Path, columns: Sequence[str], *, numeric: Sequence[str]) -> pd.DataFrame:
    """Read every column as text (an empty ``task`` stays ``""``), check the header, coerce numbers.

    A zero-byte file (a run killed before its first row) reads as an empty frame. A row cut short
    by a kill gets ``NaN`` where fields are missing; callers drop rows without their key numbers.
    """
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        return pd.DataFrame({c: pd.Series(dtype=float if c in numeric else str) for c in columns})
    except pd.errors.ParserError as err:
        raise ValueError(f"{path}: cannot be parsed as CSV: {err}") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    for column in columns:
        if column not in frame.columns:
            raise ValueError(
                f"{path}: missing required column {column!r} (expected header "
                f"{','.join(columns)}; found {','.join(frame.columns)})"
            )
    frame = frame[list(columns)].copy()
    for column in columns:
        if column in numeric:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
        else:
            frame[column] = frame[column].fillna("").astype(str).str.strip()
    return frame


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; anything else is an error naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data
