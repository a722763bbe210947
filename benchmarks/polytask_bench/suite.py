"""The benchmark suite: a matrix of dataset x architecture x balancer x seed, run resumably.

A suite file (YAML) reuses the experiment configuration pieces (:mod:`polytask.config`): a
``base`` model/training section, a list of ``datasets`` (each a :class:`DataConfig` plus optional
model/training overrides, e.g. a CNN trunk for images), ``architectures``, ``balancers`` and
``seeds``. Every combination is one *cell*; two kinds of cells are added automatically because a
comparison without them is not worth publishing:

- ``stl``: the single-task baselines (one model per task, same trunk/architecture/training). They
  define Δm% and are cached across suites by
  :func:`polytask.experiment.train_single_task_baseline`.
- ``equal_tuned``: equal weighting with its learning rate and weight decay chosen from a small
  grid on the *validation* split (the ``equal_grid`` cells). Published comparisons often pit a
  tuned new method against an untuned baseline; this makes the baseline at least as tuned.

What a suite costs, and why it is several times a ``polytask train`` of the same configuration:
``train`` trains the single-task baselines and each balancer once per seed; a suite adds the
tuning grid (by default 3 learning rates x 2 weight decays = 6 more trainings of equal weights per
pair on the first seed), ``equal_tuned`` on every other seed and any LibMTL cells, each a whole
training. That is the point of the added baselines, so it is inherent; the log says the count
before each pair (:func:`training_plan`) and ``tuned_equal: {enabled: false}`` skips the grid.
What is not inherent is avoided: a cell whose training is identical to one already run (the grid
point at the suite's own lr and weight decay *is* the ``equal`` cell) is recorded from that run,
and a data set is loaded once per seed for all its architectures (the cells run seed by seed over
the architectures; once in all when ``data.split_seed`` is fixed). Per training, a cell costs
what ``train`` costs (the same ``fit``; the memory sampler was measured to add nothing beyond the
noise), and ``train`` also renders ``report.html``.

Why one JSON per cell, written atomically (write, then rename): a long benchmark is interrupted
(pre-emption, a laptop lid, a divergent method) and must resume without redoing finished work or
trusting a half-written file. A cell whose recorded ``config_hash`` no longer matches the suite is
stale and is re-run; a cell that raised is written as ``<cell>.failed.json`` and retried next time.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import itertools
import json
import math
import os
import platform
import re
import shutil
import statistics
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from polytask.config import (
    BalancerConfig,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    SummaryMetric,
    TrainingConfig,
    format_validation_error,
    read_yaml,
)

__all__ = [
    "CELLS_DIR",
    "SuiteConfig",
    "SuiteError",
    "SuiteRunSummary",
    "command_line",
    "expected_cells",
    "load_suite",
    "parse_only",
    "parse_suite",
    "report_command",
    "run_command",
    "run_suite",
]

CELLS_DIR = "cells"
RUNS_DIR = "runs"
SCHEMA = 1
RESERVED = ("stl", "equal_tuned", "equal_grid")

Metrics = dict[str, dict[str, float]]


class SuiteError(ValueError):
    """A suite file that cannot be used; the message names every offending key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SuiteBase(_Strict):
    """Model and training settings shared by every cell (overridable per data set)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)


class DatasetEntry(_Strict):
    """One data set of the matrix; ``model`` / ``training`` override only the keys they set."""

    label: str | None = None
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    pareto: tuple[str, str] | None = None
    summary_metrics: list[SummaryMetric] = Field(default_factory=list)

    @field_validator("data")
    @classmethod
    def _registered(cls, data: DataConfig) -> DataConfig:
        from polytask.data import available

        if data.dataset is not None and data.dataset not in available():
            raise ValueError(
                f"unknown data set {data.dataset!r}; available: {', '.join(available())}"
            )
        return data

    @property
    def display(self) -> str:
        return self.label or self.data.dataset or Path(self.data.table or "table").stem


class ArchitectureEntry(_Strict):
    name: str = "hard_sharing"
    label: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        from polytask.models import available_architectures

        if name not in available_architectures():
            raise ValueError(
                f"unknown architecture {name!r}; available: {', '.join(available_architectures())}"
            )
        return name

    @property
    def display(self) -> str:
        return self.label or self.name


class SuiteBalancer(BalancerConfig):
    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        from polytask.balancing import available

        if name not in available():
            raise ValueError(f"unknown balancer {name!r}; available: {', '.join(available())}")
        return name


class TunedEqual(_Strict):
    """The lr x weight-decay grid for the tuned equal-weights baseline.

    ``lr: null`` means the data set's learning rate divided and multiplied by 3. The grid is run
    on ``seeds`` (default: the suite's first seed) and the point with the best validation score
    (lowest validation Δm% against the single-task baselines, or the highest mean primary metric
    when there are none) is then trained on every seed.
    """

    enabled: bool = True
    lr: list[float] | None = Field(None, min_length=1)
    weight_decay: list[float] = Field(default_factory=lambda: [0.0, 1e-4], min_length=1)
    seeds: list[int] | None = Field(None, min_length=1)

    @field_validator("lr", "weight_decay")
    @classmethod
    def _non_negative(cls, values: list[float] | None) -> list[float] | None:
        if values is not None and any(not math.isfinite(v) or v < 0 for v in values):
            raise ValueError(f"grid values must be finite and >= 0, got {values}")
        return values


class LibMTLSide(_Strict):
    """Methods to train a second time through LibMTL 1.1.5, side by side with polytask's.

    Each listed method must also be one of the suite's balancers (same name, the pair of rows the
    report compares); the LibMTL cells run for ``hard_sharing`` pairs only (LibMTL's ``HPS``), with
    LibMTL's default ``weight_args`` for the method. ``rep_grad`` is LibMTL's switch between
    gradients of the shared parameters (false, its default) and of the representation.
    """

    methods: list[str] = Field(min_length=1)
    rep_grad: bool = False

    @field_validator("methods")
    @classmethod
    def _known(cls, methods: list[str]) -> list[str]:
        from polytask_bench.libmtl_side import LIBMTL_METHODS

        unknown = [m for m in methods if m not in LIBMTL_METHODS]
        if unknown:
            raise ValueError(
                f"no LibMTL counterpart for {unknown}; methods both libraries have: "
                f"{', '.join(LIBMTL_METHODS)}"
            )
        if len(set(methods)) != len(methods):
            raise ValueError(f"methods must be unique, got {methods}")
        return methods


class SuiteConfig(_Strict):
    """A benchmark suite: see the module docstring and ``benchmarks/*.yaml``."""

    name: str
    description: str = ""
    base: SuiteBase = Field(default_factory=SuiteBase)
    datasets: list[DatasetEntry] = Field(min_length=1)
    architectures: list[ArchitectureEntry] = Field(
        default_factory=lambda: [ArchitectureEntry()], min_length=1
    )
    balancers: list[SuiteBalancer] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    stl: bool = True
    tuned_equal: TunedEqual = Field(default_factory=TunedEqual)
    libmtl: LibMTLSide | None = None

    @model_validator(mode="after")
    def _unique(self) -> SuiteConfig:
        for what, labels in (
            ("datasets", [d.display for d in self.datasets]),
            ("architectures", [a.display for a in self.architectures]),
            ("balancers", [b.display for b in self.balancers]),
        ):
            if len(set(labels)) != len(labels):
                raise ValueError(f"{what}: labels must be unique, got {labels}; set 'label'")
            for label in labels:
                if not re.fullmatch(r"[A-Za-z0-9_.+-]+", label):
                    raise ValueError(
                        f"{what}: label {label!r} may hold only letters, digits and _ . + -"
                        " (it names files)"
                    )
        reserved = [b.display for b in self.balancers if b.display in RESERVED]
        if reserved:
            raise ValueError(f"balancers: labels {reserved} are reserved for the added baselines")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be unique, got {self.seeds}")
        if self.libmtl is not None:
            names = {b.display: b for b in self.balancers}
            lonely = [m for m in self.libmtl.methods if m not in names]
            if lonely:
                raise ValueError(
                    f"libmtl.methods {lonely} are not among the balancers {sorted(names)}: the "
                    "side-by-side compares each LibMTL cell with polytask's cell of that name"
                )
            renamed = [m for m in self.libmtl.methods if names[m].name != m]
            if renamed:
                raise ValueError(f"libmtl.methods {renamed} name balancers labelled as another method")
            if not any(a.name == "hard_sharing" for a in self.architectures):
                raise ValueError("libmtl needs a hard_sharing architecture (LibMTL's HPS)")
        return self

    def experiment(self, ds: DatasetEntry, arch: ArchitectureEntry) -> ExperimentConfig:
        """The experiment configuration of one (data set, architecture) pair, all balancers."""
        model = {
            **self.base.model.model_dump(mode="json", exclude_unset=True),
            **ds.model.model_dump(mode="json", exclude_unset=True),
            "architecture": arch.name,
            "options": dict(arch.options),
        }
        training = {
            **_SUITE_TRAINING_DEFAULTS,
            **self.base.training.model_dump(mode="json", exclude_unset=True),
            **ds.training.model_dump(mode="json", exclude_unset=True),
        }
        return ExperimentConfig.model_validate(
            {
                "name": f"{self.name}-{ds.display}-{arch.display}",
                "data": ds.data.model_dump(mode="json"),
                "model": model,
                "training": training,
                "balancers": [b.model_dump(mode="json") for b in self.balancers],
                "baselines": {"stl": self.stl},
                "summary_metrics": list(ds.summary_metrics),
                "seeds": self.seeds,
            }
        )


# Progress bars and TensorBoard event files are noise in a matrix of dozens of runs.
_SUITE_TRAINING_DEFAULTS: dict[str, Any] = {"progress": False, "tensorboard": False}


def parse_suite(raw: Any, source: str = "") -> SuiteConfig:
    """Validate a suite mapping; errors name the key path (``datasets.0.training.lr: ...``)."""
    if not isinstance(raw, dict):
        raise SuiteError(f"benchmark suite {source} must be a mapping at the top level")
    try:
        suite = SuiteConfig.model_validate(raw)
    except ValidationError as err:
        raise SuiteError(format_validation_error(err, source, "benchmark suite")) from None
    # The merged per-pair configs are validated too, so a cross-field error (e.g. a table
    # without targets after merging) is reported before hours of training, not in the middle.
    for i, ds in enumerate(suite.datasets):
        for j, arch in enumerate(suite.architectures):
            try:
                suite.experiment(ds, arch)
            except ValidationError as err:
                raise SuiteError(
                    format_validation_error(
                        err,
                        f"{source} (datasets.{i} x architectures.{j}, merged)",
                        "benchmark suite",
                    )
                ) from None
    return suite


def load_suite(path: str | Path) -> SuiteConfig:
    """Read and validate a YAML suite file."""
    return parse_suite(read_yaml(path, "benchmark suite", SuiteError), str(path))


# ---------------------------------------------------------------------------------------------
# Selecting cells: --only KEY=V1,V2

ONLY_KEYS = ("dataset", "architecture", "balancer", "seed")


def parse_only(items: Sequence[str]) -> dict[str, set[str]]:
    """``["dataset=tox21", "seed=0,1"]`` -> ``{"dataset": {"tox21"}, "seed": {"0", "1"}}``.

    ``balancer`` also accepts ``stl`` and ``equal_tuned``; the single-task baselines of a selected
    (data set, architecture, seed) are trained whenever a multi-task cell needs them for Δm.
    """
    out: dict[str, set[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or key not in ONLY_KEYS or not values:
            raise SuiteError(f"--only expects KEY=V1,V2 with KEY in {ONLY_KEYS}, got {item!r}")
        out.setdefault(key, set()).update(v.strip() for v in values.split(",") if v.strip())
    return out


def _selected(only: Mapping[str, set[str]], key: str, value: str) -> bool:
    return key not in only or value in only[key]


# ---------------------------------------------------------------------------------------------
# Measuring one cell


class PeakMemory:
    """Peak memory of the code inside the ``with`` block, in MiB.

    On CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, after resetting the peak). On the
    CPU there is no per-tensor peak counter, so a thread samples the process's resident set size
    (``/proc/self/statm``) every ``interval`` seconds and the result is the peak *increase* over
    the RSS at the start of the block: model, optimizer state, activations and Jacobians, but
    not the data set loaded before it. Caveats said in ``description``: a sampler can miss a peak
    shorter than the interval, and memory the allocator kept from an earlier cell is reused
    without raising the RSS, so CPU figures are lower bounds and comparable only within a run.
    """

    def __init__(self, device: torch.device, interval: float = 0.01) -> None:
        self.device = device
        self.interval = interval
        self.peak_mb: float | None = None
        self.description = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_rss = 0
        self._max_rss = 0

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError, AttributeError):
            return None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = self._rss()
            if rss is not None:
                self._max_rss = max(self._max_rss, rss)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.description = "CUDA: torch.cuda.max_memory_allocated (tensors only)"
            return self
        rss = self._rss()
        if rss is None:
            self.description = "not measured (no /proc/self/statm on this platform)"
            return self
        self._start_rss = self._max_rss = rss
        self.description = (
            "CPU: peak resident-set increase over the cell's start, sampled every "
            f"{self.interval * 1000:.0f} ms from /proc/self/statm (a lower bound; data loaded "
            "before the cell not counted)"
        )
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        rss = self._rss()
        if rss is not None:
            self._max_rss = max(self._max_rss, rss)
        self.peak_mb = (self._max_rss - self._start_rss) / 2**20


def epoch_times(run_dir: Path) -> list[float]:
    """The ``epoch_time_s`` rows of a run's metrics.csv (training steps + validation pass)."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with path.open() as fh:
        return [
            float(r["value"])
            for r in csv.DictReader(fh)
            if r.get("split") == "train" and r.get("metric") == "epoch_time_s"
        ]


def _environment(device: torch.device) -> dict[str, Any]:
    import polytask

    env: dict[str, Any] = {
        "polytask": polytask.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _hash(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _atomic_write_json(path: Path, payload: Any) -> None:
    """Write to a temporary file in the same directory, then rename: readers never see half."""
    from polytask.training.loop import json_safe

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(json_safe(payload), indent=2, allow_nan=True))
    os.replace(tmp, path)


def _safe_delta(metrics: Metrics, baseline: Metrics | None, tasks: Sequence[Any]) -> float | None:
    from polytask.evaluation.metrics import EvaluationError, delta_m

    if baseline is None:
        return None
    try:
        return delta_m(metrics, baseline, tasks)
    except EvaluationError:
        return None


def _tasks_json(tasks: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {"name": t.name, "kind": t.kind.value, "primary_metric": t.primary,
         "higher_is_better": t.primary_higher_is_better}
        for t in tasks
    ]


# ---------------------------------------------------------------------------------------------
# Running


@dataclass
class SuiteRunSummary:
    out_dir: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


@dataclass
class _Context:
    suite: SuiteConfig
    out: Path
    command: str
    suite_file: str | None
    suite_sha256: str | None
    log: Callable[[str], None]
    summary: SuiteRunSummary
    # The data set last loaded, keyed by what defines it (see _Pair._load): shared by the pairs,
    # so the architectures of one data set, and the seeds of a fixed split, load it once.
    data: dict[str, tuple[Any, Any]] = field(default_factory=dict)


def cell_stem(dataset: str, architecture: str, method: str, seed: int) -> str:
    return f"{dataset}__{architecture}__{method}__seed{seed}"


def _grid_method(lr: float, wd: float) -> str:
    return f"equal_grid-lr{lr:g}-wd{wd:g}"


class _Pair:
    """One (data set, architecture) pair: its config, data per seed, STL references."""

    def __init__(self, ctx: _Context, ds: DatasetEntry, arch: ArchitectureEntry) -> None:
        self.ctx, self.ds, self.arch = ctx, ds, arch
        self.config = ctx.suite.experiment(ds, arch)
        self._stl: dict[int, dict[str, Any] | None] = {}
        # finished multi-task cells by what their training computes (_training_identity)
        self._trained: dict[str, dict[str, Any]] = {}

    def _load(self, seed: int) -> tuple[Any, Any]:
        """The splits (and sources) of ``seed``, loaded once while consecutive cells need them.

        Why keyed by the data section and the *split* seed, not by the pair and the run seed:
        ``load_sources`` depends on nothing else, and loading is not free (15 s for the full
        Census file on a loaded 2-core machine), so the architectures of a data set and, with
        ``data.split_seed`` fixed, all its seeds share one load. Only the last data set is kept:
        full-size sets are large.
        """
        from polytask.experiment import load_sources

        d = self.config.data
        split_seed = d.split_seed if d.split_seed is not None else seed
        key = json.dumps([d.model_dump(mode="json"), split_seed], sort_keys=True)
        cache = self.ctx.data
        if key not in cache:
            cache.clear()
            splits, sources = load_sources(self.config, seed)
            splits.validate()
            cache[key] = (splits, sources)
        return cache[key]

    def splits(self, seed: int) -> Any:
        return self._load(seed)[0]

    def sources(self, seed: int) -> Any:
        """The training sources of several data sets (``None`` for one): the loop samples them."""
        return self._load(seed)[1]

    def cell_config(self, balancer: BalancerConfig, seed: int, **training: Any) -> ExperimentConfig:
        cfg = self.config.model_copy(deep=True)
        raw = cfg.model_dump(mode="json")
        raw["balancers"] = [balancer.model_dump(mode="json")]
        raw["seeds"] = [seed]
        raw["training"].update(training)
        return ExperimentConfig.model_validate(raw)

    # -- cells -----------------------------------------------------------------------------

    def _paths(self, method: str, seed: int) -> tuple[Path, Path, Path]:
        stem = cell_stem(self.ds.display, self.arch.display, method, seed)
        cells = self.ctx.out / CELLS_DIR
        return cells / f"{stem}.json", cells / f"{stem}.failed.json", self.ctx.out / RUNS_DIR / stem

    def _cached(self, path: Path, key: str, stem: str) -> dict[str, Any] | None:
        if not path.exists():
            return None
        try:
            cell: dict[str, Any] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            self.ctx.log(f"{stem}: unreadable cell file, running it again")
            return None
        if cell.get("config_hash") != key:
            self.ctx.log(f"{stem}: the suite changed since this cell ran, running it again")
            return None
        return cell

    def _cell(
        self,
        method: str,
        kind: str,
        seed: int,
        key_payload: dict[str, Any],
        body: Callable[[Path, PeakMemory], dict[str, Any]],
        prepare: Callable[[], object] | None = None,
        action: str = "running",
    ) -> dict[str, Any] | None:
        """Load a finished cell or run ``body`` and write it; ``None`` when it failed.

        ``prepare`` runs before the memory measurement starts (loading the data set), so that a
        cell's peak memory is the training's, not the data loader's. ``action`` is what the log
        says the cell does (an alias is recorded, not run).
        """
        path, failed_path, run_dir = self._paths(method, seed)
        stem = path.stem
        key = _hash({"schema": SCHEMA, **key_payload})
        cached = self._cached(path, key, stem)
        if cached is not None:
            self.ctx.summary.skipped.append(stem)
            self.ctx.log(f"{stem}: finished earlier, skipped")
            return cached
        marker = run_dir / "cell_hash.txt"
        if run_dir.exists() and (not marker.exists() or marker.read_text() != key):
            shutil.rmtree(run_dir)  # a run of another configuration: never resume from it
        run_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(key)
        from polytask.training.loop import resolve_device

        device = resolve_device(self.config.training.device)
        self.ctx.log(f"{stem}: {action}")
        started = time.perf_counter()
        try:
            if prepare is not None:
                prepare()
            with PeakMemory(device) as memory:
                record = body(run_dir, memory)
        except Exception as err:  # one divergent method must not end a benchmark of hours
            self.ctx.summary.failed.append(stem)
            self.ctx.log(f"{stem}: FAILED: {type(err).__name__}: {err}")
            _atomic_write_json(
                failed_path,
                {"cell": stem, "status": "failed", "error": f"{type(err).__name__}: {err}",
                 "traceback": traceback.format_exc(), "command": self.ctx.command},
            )
            return None
        if record.get("peak_memory_mb") is None and memory.peak_mb is not None:
            record["peak_memory_mb"] = memory.peak_mb
        record.setdefault("memory_measure", memory.description)
        cell = {
            "schema": SCHEMA,
            "status": "finished",
            "suite": self.ctx.suite.name,
            "cell": stem,
            "dataset": self.ds.display,
            "architecture": self.arch.display,
            "method": method,
            "kind": kind,
            "seed": seed,
            "pareto": list(self.ds.pareto) if self.ds.pareto else None,
            "run_dir": str(run_dir.relative_to(self.ctx.out)),
            **record,
            "wall_time_s": time.perf_counter() - started,
            "config_hash": key,
            "command": self.ctx.command,
            "suite_file": self.ctx.suite_file,
            "suite_sha256": self.ctx.suite_sha256,
            "environment": _environment(device),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _atomic_write_json(path, cell)
        failed_path.unlink(missing_ok=True)
        self.ctx.summary.ran.append(stem)
        return cell

    def stl(self, seed: int) -> dict[str, Any] | None:
        """The single-task baselines of ``seed`` (one cell holding every task's own model)."""
        if not self.ctx.suite.stl:
            return None
        if seed in self._stl:
            return self._stl[seed]
        from polytask.experiment import train_single_task_baseline

        config = self.cell_config(BalancerConfig(name="equal"), seed)

        def body(run_dir: Path, memory: PeakMemory) -> dict[str, Any]:
            splits = self.splits(seed)
            tasks = splits.tasks
            val: Metrics = {}
            test: Metrics = {}
            per_epoch, params = 0.0, 0
            epochs: list[int] = []
            from_cache: list[bool] = []
            for task in tasks:
                said: list[str] = []
                rec = train_single_task_baseline(
                    config, splits, copy.copy(task), seed, run_dir, said.append,
                    self.sources(seed),
                )
                from_cache.append(any("found in cache" in m for m in said))
                val[task.name], test[task.name] = rec.val[task.name], rec.test[task.name]
                results = json.loads((rec.run_dir / "results.json").read_text())
                times = epoch_times(rec.run_dir)
                per_epoch += statistics.fmean(times) if times else math.nan
                params += int(results.get("num_parameters", 0))
                epochs.append(int(results.get("epochs", 0)))
            record: dict[str, Any] = {
                "balancer": "equal",
                "tasks": _tasks_json(tasks),
                "val": val,
                "test": test,
                "delta_m": 0.0,
                "val_delta_m": 0.0,
                "time_per_epoch_s": per_epoch,
                "time_note": "sum over the tasks' single-task models of their mean epoch time",
                "epochs": max(epochs) if epochs else 0,
                "num_parameters": params,
                "parameters_note": "sum over the tasks' single-task models",
                "selection": stl_selection(config.model_dump(mode="json")),
                "stl_from_cache": sum(from_cache),
                "config": config.model_dump(mode="json"),
            }
            if all(from_cache):
                record["peak_memory_mb"] = None
                record["memory_measure"] = "not measured: every baseline came from the cache"
            elif any(from_cache):
                record["memory_measure"] = (
                    memory.description + f"; {sum(from_cache)} of {len(tasks)} from the cache"
                )
            return record

        payload = {"kind": "stl", "config": config.model_dump(mode="json")}
        cell = self._cell("stl", "stl", seed, payload, body, prepare=lambda: self.splits(seed))
        self._stl[seed] = cell
        return cell

    def _baselines(self, label: str, seed: int) -> tuple[dict[str, Any] | None, bool]:
        """The seed's STL cell, and whether a multi-task cell may run (not when STL failed)."""
        stl = self.stl(seed)
        if self.ctx.suite.stl and stl is None:
            self.ctx.log(f"{label} seed {seed}: skipped, its single-task baselines failed")
            return None, False
        return stl, True

    def _start_run(
        self, config: ExperimentConfig, seed: int, run_dir: Path, balancer: str
    ) -> tuple[Any, Any, Any]:
        """The seed's splits, the model built under the seed, the run's settings; config written."""
        from polytask.experiment import build_model

        splits = self.splits(seed)
        torch.manual_seed(seed)
        model = build_model(config, splits.tasks, splits.train.example(), data_info=splits.info)
        settings = config.training.settings(
            seed, balancer=balancer, architecture=config.model.architecture
        )
        (run_dir / "config.yaml").write_text(config.to_yaml())
        return splits, model, settings

    def mtl(
        self,
        method: str,
        kind: str,
        balancer: BalancerConfig,
        seed: int,
        training: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """One multi-task training of ``balancer`` on ``seed`` (``training`` overrides)."""
        config = self.cell_config(balancer, seed, **(training or {}))
        stl, runnable = self._baselines(method, seed)
        if not runnable:
            return None
        stl_val = stl["val"] if stl else None
        stl_test = stl["test"] if stl else None
        payload = {"kind": kind, "config": config.model_dump(mode="json"),
                   "stl": stl.get("config_hash") if stl else None, "extra": extra}
        identity = _training_identity(config, payload["stl"])
        twin = self._trained.get(identity) or self._recorded_twin(method, seed, identity)
        if twin is not None and not self._finished(method, seed, payload):
            return self.alias(twin, method, kind, extra or {}, identity=identity)

        def body(run_dir: Path, memory: PeakMemory) -> dict[str, Any]:
            from polytask.balancing import create_balancer
            from polytask.experiment import compute_summary_metrics, train_source
            from polytask.training import fit

            splits, model, settings = self._start_run(config, seed, run_dir, balancer.name)
            tasks = splits.tasks
            bal = create_balancer(
                balancer.name, [t.name for t in tasks],
                task_weights={t.name: t.weight for t in tasks}, **balancer.options,
            )
            fitted = fit(
                model, splits, bal, settings, run_dir, stl_val=stl_val, stl_test=stl_test,
                resume=True, train_source=train_source(config, self.sources(seed)),
            )
            # fit leaves the selected checkpoint loaded: whole-model metrics of that model
            summary = (
                compute_summary_metrics(config, model, splits) if config.summary_metrics else None
            )
            return {
                **_fit_record(balancer.name, config, tasks, fitted, stl_val, epoch_times(run_dir),
                              sum(p.numel() for p in model.parameters())),
                "warnings": fitted.warnings,
                **({"summary": summary} if summary is not None else {}),
                **(extra or {}),
            }

        cell = self._cell(method, kind, seed, payload, body, prepare=lambda: self.splits(seed))
        if cell is not None and "same_run_as" not in cell:
            self._trained.setdefault(identity, cell)
        return cell

    def _finished(self, method: str, seed: int, key_payload: dict[str, Any]) -> bool:
        """Whether the cell is already finished under ``key_payload`` (checked without logging).

        A results directory written before twins were aliased holds the twin trained in full;
        that cell stays valid and is kept rather than replaced by an alias.
        """
        cell = _read_cell(self._paths(method, seed)[0])
        return cell is not None and cell.get("config_hash") == _hash({"schema": SCHEMA, **key_payload})

    def _recorded_twin(self, method: str, seed: int, identity: str) -> dict[str, Any] | None:
        """The cell an earlier run recorded this one from, if neither has changed since.

        Why: ``--only balancer=equal`` does not run the grid, so the twin is not known in this
        process; without this the ``equal`` cell recorded from a grid run would be trained again.
        Still valid when this cell's training is the one recorded (``training_identity``) and the
        source cell is the very run it was recorded from (its ``config_hash``).
        """
        path = self._paths(method, seed)[0]
        cell = _read_cell(path)
        if cell is None or cell.get("training_identity") != identity or "same_run_as" not in cell:
            return None
        source = _read_cell(path.with_name(f"{cell['same_run_as']}.json"))
        if source is None or source.get("status") != "finished":
            return None
        return source if source.get("config_hash") == cell.get("alias_of") else None

    def libmtl(self, balancer: BalancerConfig, seed: int, side: LibMTLSide) -> dict[str, Any] | None:
        """The same training as ``mtl(balancer)``, driven through LibMTL's classes."""
        from polytask_bench.libmtl_side import LIBMTL_METHODS, libmtl_version

        method = balancer.name
        config = self.cell_config(balancer, seed)
        stl, runnable = self._baselines(f"libmtl-{method}", seed)
        if not runnable:
            return None
        stl_val = stl["val"] if stl else None
        stl_test = stl["test"] if stl else None
        version = libmtl_version()

        def body(run_dir: Path, memory: PeakMemory) -> dict[str, Any]:
            from polytask_bench.libmtl_side import fit_libmtl

            if version is None:
                raise ImportError(
                    "LibMTL is not importable; install it with pip install --no-deps libmtl==1.1.5"
                )
            if self.sources(seed) is not None:
                raise ValueError(
                    "the LibMTL side-by-side trains one data set; this one is several "
                    "(LibMTL's multi_input mode is not driven here)"
                )
            splits, model, settings = self._start_run(config, seed, run_dir, method)
            fitted = fit_libmtl(
                model, splits, method, settings, run_dir, rep_grad=side.rep_grad,
                stl_val=stl_val, stl_test=stl_test,
            )
            return {
                **_fit_record(method, config, splits.tasks, fitted, stl_val, fitted.epoch_times,
                              fitted.num_parameters),
                "library": "LibMTL",
                "libmtl": {"version": version, "weighting": LIBMTL_METHODS[method][0],
                           "weight_args": LIBMTL_METHODS[method][1], "rep_grad": side.rep_grad},
            }

        payload = {"kind": "libmtl", "config": config.model_dump(mode="json"),
                   "stl": stl.get("config_hash") if stl else None, "rep_grad": side.rep_grad,
                   "libmtl": version}
        return self._cell(
            f"libmtl-{method}", "libmtl", seed, payload, body, prepare=lambda: self.splits(seed)
        )

    def alias(
        self,
        source: dict[str, Any],
        method: str,
        kind: str,
        extra: dict[str, Any],
        identity: str | None = None,
    ) -> dict[str, Any] | None:
        """Record ``source`` (a finished cell) again as ``method``: the same training, not rerun.

        The tuned baseline's run on a grid seed *is* the chosen grid point's run, and the grid
        point at the suite's own learning rate and weight decay *is* the ``equal`` cell's run
        (see :meth:`mtl`); training either twice would cost a whole training and, with
        nondeterministic kernels, give two different numbers for one configuration. ``identity``
        (a twin's :func:`_training_identity`) is recorded so that a later run can trust the alias.
        """
        keep = ("balancer", "tasks", "val", "test", "summary", "delta_m", "val_delta_m",
                "time_per_epoch_s",
                "time_note", "epochs", "best_epoch", "num_parameters", "selection", "warnings",
                "config", "peak_memory_mb", "memory_measure", "run_dir")

        def body(run_dir: Path, memory: PeakMemory) -> dict[str, Any]:
            shutil.rmtree(run_dir, ignore_errors=True)
            twin = {"training_identity": identity, "alias_of": source["config_hash"]}
            return {**{k: source[k] for k in keep if k in source},
                    "same_run_as": source.get("same_run_as", source["cell"]),
                    **(twin if identity is not None else {}), **extra}

        payload = {"kind": kind, "alias_of": source["config_hash"], "extra": extra}
        root = source.get("same_run_as", source["cell"])
        return self._cell(
            method, kind, int(source["seed"]), payload, body,
            action=f"the same training as {root}: recorded from it, not trained again",
        )


def _read_cell(path: Path) -> dict[str, Any] | None:
    """A cell file's content, or ``None`` when it is missing or unreadable (checked quietly)."""
    try:
        cell = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return cell if isinstance(cell, dict) else None


def _training_identity(config: ExperimentConfig, stl_hash: str | None) -> str:
    """What a multi-task cell's training computes: its config without balancer labels, its STL.

    Why: two cells of one pair can be the same training under two names (the tuning grid's
    point at the suite's own lr and weight decay and the ``equal`` cell; ``equal_tuned`` on a
    non-grid seed when tuning kept the suite's lr and weight decay, and ``equal`` there). A label
    names a row and changes nothing trained; the single-task baselines choose the checkpoint
    (validation Δm%), so they are part of the identity.
    """
    raw = config.model_dump(mode="json")
    raw["balancers"] = [{k: v for k, v in b.items() if k != "label"} for b in raw["balancers"]]
    return _hash({"config": raw, "stl": stl_hash})


def stl_selection(config: Mapping[str, Any]) -> str:
    """How each single-task baseline chose its checkpoint (its own validation, its own rule)."""
    rule = str(config.get("training", {}).get("selection", "auto"))
    if rule in ("auto", "mean_primary", "delta_m"):  # one task, no baseline: its primary metric
        return "per task: the checkpoint with the best validation primary metric"
    if rule == "val_loss":
        return "per task: the checkpoint with the lowest validation loss"
    return f"per task: val {rule}"


def _fit_record(
    balancer: str,
    config: ExperimentConfig,
    tasks: Sequence[Any],
    fitted: Any,
    stl_val: Metrics | None,
    times: Sequence[float],
    num_parameters: int,
) -> dict[str, Any]:
    """The fields every trained cell records (polytask's ``fit`` or LibMTL's), from its result."""
    return {
        "balancer": balancer,
        "tasks": _tasks_json(tasks),
        "val": fitted.val,
        "test": fitted.test,
        "delta_m": fitted.delta_m,
        "val_delta_m": _safe_delta(fitted.val, stl_val, tasks),
        "time_per_epoch_s": statistics.fmean(times) if times else math.nan,
        "time_note": "mean wall time of an epoch: training steps + validation pass",
        "epochs": fitted.epochs_run,
        "best_epoch": fitted.best_epoch,
        "num_parameters": num_parameters,
        "selection": describe_rule(fitted.selection),
        "config": config.model_dump(mode="json"),
    }


def describe_rule(rule: str) -> str:
    if rule == "val delta_m":
        return "val delta_m: the epoch with the lowest validation Δm% vs the single-task baselines"
    if rule == "val mean_primary":
        return "val mean_primary: the epoch with the best mean validation primary metric"
    if rule == "val val_loss":
        return "val val_loss: the epoch with the lowest validation loss summed over tasks"
    return rule


def _validation_score(cell: Mapping[str, Any]) -> float:
    """Higher is better: −(validation Δm%) when known, else the signed mean primary metric."""
    if cell.get("val_delta_m") is not None:
        return -float(cell["val_delta_m"])
    values = []
    for t in cell["tasks"]:
        v = float(cell["val"][t["name"]][t["primary_metric"]])
        values.append(v if t["higher_is_better"] else -v)
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else -math.inf


def _grid(pair: _Pair, tuned: TunedEqual) -> list[tuple[float, float]]:
    lr = pair.config.training.lr
    lrs = tuned.lr if tuned.lr is not None else [lr / 3, lr, lr * 3]
    return list(itertools.product(lrs, tuned.weight_decay))


def _tune_equal(pair: _Pair, seeds: Sequence[int]) -> dict[str, Any] | None:
    """Run the grid on the grid seeds and return the chosen point (validation only)."""
    tuned = pair.ctx.suite.tuned_equal
    scores: list[dict[str, Any]] = []
    runs: dict[tuple[float, float], list[dict[str, Any]]] = {}
    # Seed by seed, so that consecutive cells share the seed's data (one load per grid seed,
    # not one per grid cell when the grid has several seeds and the split follows the seed).
    by_point: dict[tuple[float, float], list[dict[str, Any] | None]] = {
        point: [] for point in _grid(pair, tuned)
    }
    for seed in seeds:
        for lr, wd in by_point:
            by_point[(lr, wd)].append(
                pair.mtl(_grid_method(lr, wd), "grid", BalancerConfig(name="equal"), seed,
                         training={"lr": lr, "weight_decay": wd})
            )
    for (lr, wd), cells in by_point.items():
        done = [c for c in cells if c is not None]
        if len(done) < len(cells):
            continue
        score = statistics.fmean(_validation_score(c) for c in done)
        scores.append({"lr": lr, "weight_decay": wd, "validation_score": score})
        runs[(lr, wd)] = done
    if not scores:
        return None
    best = max(scores, key=lambda s: s["validation_score"])
    criterion = (
        "lowest validation Δm% vs the single-task baselines"
        if pair.ctx.suite.stl else "highest mean validation primary metric"
    )
    return {
        "lr": best["lr"],
        "weight_decay": best["weight_decay"],
        "chosen_by": f"{criterion}, averaged over seeds {list(seeds)}; the test split is not used",
        "grid": scores,
        "cells": {int(c["seed"]): c for c in runs[(best["lr"], best["weight_decay"])]},
    }


def run_suite(
    suite: SuiteConfig,
    out_dir: str | Path,
    *,
    only: Mapping[str, set[str]] | None = None,
    log: Callable[[str], None] = print,
    command: str = "",
    suite_file: str | Path | None = None,
) -> SuiteRunSummary:
    """Run every selected cell of ``suite`` not already finished in ``out_dir``."""
    only = dict(only or {})
    out = Path(out_dir)
    (out / CELLS_DIR).mkdir(parents=True, exist_ok=True)
    sha = None
    if suite_file is not None and Path(suite_file).is_file():
        sha = hashlib.sha256(Path(suite_file).read_bytes()).hexdigest()
    summary = SuiteRunSummary(out_dir=out)
    ctx = _Context(suite, out, command, str(suite_file) if suite_file else None, sha, log, summary)
    # cells chosen by --only, accumulated over the runs into this directory, so that a report of
    # a deliberately partial run says what was selected instead of listing the rest as missing
    selected = set(expected_cells(suite, only))
    previous = out / "suite.json"
    if previous.exists():
        try:
            before = json.loads(previous.read_text())
        except (OSError, json.JSONDecodeError):
            before = {}
        if before.get("suite") == suite.model_dump(mode="json"):
            selected |= set(before.get("selected_cells", []))
    _atomic_write_json(out / "suite.json", {
        "suite": suite.model_dump(mode="json"), "suite_file": ctx.suite_file,
        "suite_sha256": sha, "expected_cells": expected_cells(suite),
        "selected_cells": sorted(selected),
    })
    seeds = [s for s in suite.seeds if _selected(only, "seed", str(s))]
    for ds in suite.datasets:
        if not _selected(only, "dataset", ds.display):
            continue
        pairs = [_Pair(ctx, ds, arch) for arch in suite.architectures
                 if _selected(only, "architecture", arch.display)]
        # Every architecture's tuning grid (on the grid seeds), then seed by seed every
        # architecture's cells: consecutive cells share a data load, one per (data set, seed)
        # instead of one per (data set, architecture, seed). Each cell seeds its own training,
        # so the order changes no number.
        tuned: dict[str, dict[str, Any] | None] = {}
        for pair in pairs:
            log(training_plan(suite, ds, pair.arch, only))
            tuned[pair.arch.display] = None
            if suite.tuned_equal.enabled and _selected(only, "balancer", "equal_tuned") and seeds:
                grid_seeds = suite.tuned_equal.seeds or [suite.seeds[0]]
                chosen = tuned[pair.arch.display] = _tune_equal(pair, grid_seeds)
                if chosen is not None:
                    log(f"{ds.display}/{pair.arch.display}: tuned equal weights use "
                        f"lr={chosen['lr']:g}, weight_decay={chosen['weight_decay']:g} "
                        f"({chosen['chosen_by']})")
        for seed in seeds:
            for pair in pairs:
                _seed_cells(pair, seed, tuned[pair.arch.display], only)
    return summary


def _seed_cells(
    pair: _Pair, seed: int, tuned: dict[str, Any] | None, only: Mapping[str, set[str]]
) -> None:
    """One pair's cells of one seed: its baselines, each balancer (LibMTL's), tuned equal."""
    suite = pair.ctx.suite
    if _selected(only, "balancer", "stl"):
        pair.stl(seed)
    for bc in suite.balancers:
        if _selected(only, "balancer", bc.display):
            pair.mtl(bc.display, "mtl", bc, seed)
        # right after polytask's cell, so both see the same machine load
        if _libmtl_cell(suite, pair.arch, bc.display) and _selected(
            only, "balancer", f"libmtl-{bc.display}"
        ):
            assert suite.libmtl is not None
            pair.libmtl(bc, seed, suite.libmtl)
    if tuned is None:
        return
    info = {k: v for k, v in tuned.items() if k != "cells"}
    if seed in tuned["cells"]:
        pair.alias(tuned["cells"][seed], "equal_tuned", "tuned", {"tuning": info})
    else:
        pair.mtl(
            "equal_tuned", "tuned", BalancerConfig(name="equal", label="equal_tuned"),
            seed, training={"lr": tuned["lr"], "weight_decay": tuned["weight_decay"]},
            extra={"tuning": info},
        )


def _libmtl_cell(suite: SuiteConfig, arch: ArchitectureEntry, method: str) -> bool:
    return (
        suite.libmtl is not None and arch.name == "hard_sharing" and method in suite.libmtl.methods
    )


def expected_cells(suite: SuiteConfig, only: Mapping[str, set[str]] | None = None) -> list[str]:
    """Every cell stem a run of ``suite`` writes (grid cells included), or of its ``only`` part.

    With ``only``, a selected multi-task cell brings its seed's single-task baselines (Δm needs
    them) and a selected ``equal_tuned`` brings the tuning grid, as :func:`run_suite` runs them.
    """
    only = dict(only or {})
    stems = []
    for ds, arch in itertools.product(suite.datasets, suite.architectures):
        if not (_selected(only, "dataset", ds.display)
                and _selected(only, "architecture", arch.display)):
            continue
        stems += [cell_stem(ds.display, arch.display, m, seed)
                  for m, seed in _pair_cells(suite, ds, arch, only)]
    return stems


def _pair_cells(
    suite: SuiteConfig, ds: DatasetEntry, arch: ArchitectureEntry, only: Mapping[str, set[str]]
) -> list[tuple[str, int]]:
    """The (method, seed) of every cell of one (data set, architecture) pair, as run_suite runs."""
    methods = [b.display for b in suite.balancers]
    methods += [f"libmtl-{b.display}" for b in suite.balancers
                if _libmtl_cell(suite, arch, b.display)]
    if suite.tuned_equal.enabled:
        methods.append("equal_tuned")
    methods = [m for m in methods if _selected(only, "balancer", m)]
    if suite.stl and (methods or _selected(only, "balancer", "stl")):
        methods.insert(0, "stl")
    seeds = [seed for seed in suite.seeds if _selected(only, "seed", str(seed))]
    cells = [(m, seed) for seed in seeds for m in methods]
    if suite.tuned_equal.enabled and "equal_tuned" in methods and seeds:
        lr = suite.experiment(ds, arch).training.lr
        lrs = suite.tuned_equal.lr or [lr / 3, lr, lr * 3]
        for (g_lr, wd), seed in itertools.product(
            itertools.product(lrs, suite.tuned_equal.weight_decay),
            suite.tuned_equal.seeds or [suite.seeds[0]],
        ):
            cells.append((_grid_method(g_lr, wd), seed))
    return cells


def training_plan(
    suite: SuiteConfig,
    ds: DatasetEntry,
    arch: ArchitectureEntry,
    only: Mapping[str, set[str]] | None = None,
) -> str:
    """What one pair trains, in words: why a suite takes several times a ``polytask train``.

    ``polytask train`` of the pair's configuration trains the single-task baselines and each
    balancer once per seed. A suite adds, on purpose, the equal-weights tuning grid (lr x weight
    decay on the grid seeds), ``equal_tuned`` on the other seeds and the LibMTL cells, each a
    whole training. Said in the log before the pair starts, so that nobody takes the added
    baselines for overhead.
    """
    cells = _pair_cells(suite, ds, arch, dict(only or {}))
    seeds = sorted({seed for _, seed in cells})
    grid_seeds = suite.tuned_equal.seeds or [suite.seeds[0]]
    names = {b.display for b in suite.balancers}
    balancers = [(m, s) for m, s in cells if m in names]
    grid = [m for m, _ in cells if m.startswith("equal_grid-")]
    libmtl = [m for m, _ in cells if m.startswith("libmtl-")]
    tuned = [s for m, s in cells if m == "equal_tuned" and s not in grid_seeds]
    # the `equal` cell on a grid seed is the grid point at the suite's own lr and weight decay
    training = suite.experiment(ds, arch).training
    plain = {b.display for b in suite.balancers if b.name == "equal" and not b.options}
    twins = 0
    if _grid_method(training.lr, training.weight_decay) in grid:
        twins = len([1 for m, s in balancers if m in plain and s in grid_seeds])
    trained = len(balancers) + len(grid) + len(tuned) + len(libmtl) - twins
    lrs = suite.tuned_equal.lr or ["lr/3", "lr", "3lr"]
    added = [
        f"{len(grid)} equal-weights tuning-grid runs ({len(lrs)} lr x "
        f"{len(suite.tuned_equal.weight_decay)} weight decay on seed(s) {grid_seeds}; "
        "`tuned_equal: {enabled: false}` skips them)" if grid else "",
        f"equal_tuned on {len(tuned)} non-grid seed(s) (recorded from `equal` there when tuning "
        "keeps the suite's lr and weight decay)" if tuned else "",
        f"{len(libmtl)} LibMTL cell(s)" if libmtl else "",
    ]
    return (
        f"{ds.display}/{arch.display}: {len(cells)} cells on seed(s) {seeds}, "
        f"{'up to ' if tuned else ''}{trained} "
        f"multi-task trainings where `polytask train` of this configuration does "
        f"{len(balancers)}"
        + (f"; added on purpose: {', '.join(a for a in added if a)}" if any(added) else "")
        + ("; single-task baselines come from the cache when trained before"
           if any(m == "stl" for m, _ in cells)
           else "")
        + (f"; {twins} cell(s) `equal` = the grid point at the suite's lr and weight decay, "
           "recorded from that run" if twins else "")
        + "."
    )


def iter_cells(results_dir: str | Path) -> Iterator[dict[str, Any]]:
    """Every finished cell under ``results_dir/cells`` (failed cells are not included)."""
    cells = Path(results_dir) / CELLS_DIR
    for path in sorted(cells.glob("*.json")):
        if path.name.endswith(".failed.json"):
            continue
        cell = json.loads(path.read_text())
        if cell.get("status") == "finished":
            yield cell


# ---------------------------------------------------------------------------------------------
# The two commands, for both entry points: ``polytask bench run|report`` (a checkout's CLI) and
# ``python benchmarks/suite.py run|report``. Each parses its own options and calls these.

#: the program of the reproduction lines when none is given: the CLI's, as documented
DEFAULT_PROGRAM = "polytask bench"


def command_line(program: str, args: Sequence[str]) -> str:
    """``program`` followed by ``args``, shell-quoted (the reproduction line of a table)."""
    import shlex

    return f"{program} {shlex.join(args)}"


def run_command(
    suite_path: Path,
    out: Path | None = None,
    only: Sequence[str] = (),
    *,
    program: str = DEFAULT_PROGRAM,
    log: Callable[[str], None] = print,
) -> SuiteRunSummary:
    """``run SUITE [--out DIR] [--only KEY=V,...]``: validate, then run the unfinished cells.

    Raises :class:`SuiteError` before anything trains when the suite or ``--only`` is wrong. The
    command recorded in every cell is rebuilt from the parsed arguments (with the resolved
    ``--out``), not read from ``sys.argv``, so that it reruns the same cells from any launcher.
    The last line logged counts the cells run, skipped (finished earlier) and failed.
    """
    suite = load_suite(suite_path)
    selection = parse_only(only)
    results = out or Path("bench-results") / suite.name
    args = [str(suite_path), "--out", str(results)]
    args += [part for item in only for part in ("--only", item)]
    started = time.perf_counter()
    summary = run_suite(
        suite, results, only=selection, log=log, command=command_line(program, ["run", *args]),
        suite_file=suite_path,
    )
    log(
        f"{len(summary.ran)} cells run, {len(summary.skipped)} already finished, "
        f"{len(summary.failed)} failed in {time.perf_counter() - started:.1f} s; results: {results}"
    )
    if summary.failed:
        log("failed: " + ", ".join(summary.failed))
    return summary


def report_command(
    results_dirs: Sequence[Path],
    out: Path | None = None,
    preface: Path | None = None,
    *,
    program: str = DEFAULT_PROGRAM,
) -> Path:
    """``report DIR... [--out FILE] [--preface FILE]``: the Markdown page and its PNGs.

    Default ``out``: ``docs/results/<DIR name>.md`` for one directory, ``docs/results.md`` for
    several. Returns the page written; a missing directory or preface raises
    ``FileNotFoundError``, unreadable cells ``ValueError`` / ``KeyError``.
    """
    from polytask_bench.suite_report import write_results

    if not results_dirs:
        raise ValueError("no results directory given")
    if out is None:
        single = len(results_dirs) == 1
        out = Path("docs") / "results" / f"{results_dirs[0].resolve().name}.md" if single else (
            Path("docs") / "results.md"
        )
    args = ["report", *map(str, results_dirs), "--out", str(out)]
    if preface is not None:
        args += ["--preface", str(preface)]
    text = preface.read_text(encoding="utf-8") if preface is not None else None
    return write_results(
        results_dirs, out, report_command=command_line(program, args), preface=text
    )

