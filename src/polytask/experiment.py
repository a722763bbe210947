"""Experiments: compare balancers (over seeds) against single-task baselines trained here.

This is what ``polytask demo``, ``fit`` and ``train`` run. The single-task (STL) baselines use the
same trunk, architecture and training settings with one task each, on the rows labelled for that
task; they are cached under ``$POLYTASK_CACHE/stl`` by a hash of everything that defines them, so
comparing a new balancer never retrains them.

Several data sets (``data.sources`` or a several-datasets loader): the training rows come as
sources and ``training.sampling`` builds the loop's ``train_source``; validation and test stay one
fully-keyed data set. A task's single-task baseline trains on the sources that label it, with the
same sampling strategy. Several architectures (``models``): every model is trained with every
balancer; the baselines use ``baselines.model`` (default: the first model).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
import os
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from polytask.balancing import create_balancer
from polytask.balancing.engine import Communicator
from polytask.config import ConfigError, ExperimentConfig, ModelConfig, SamplingConfig
from polytask.data.base import DataError, MultiTaskData, Splits, TaskData
from polytask.data.batch import Inputs
from polytask.data.multisource import MultiSourceData, MultiSourceSplits
from polytask.data.sampling import MultiSourceBatches
from polytask.evaluation.dense_samples import write_dense_samples
from polytask.evaluation.metrics import SUMMARY_METRICS
from polytask.models import create_model, create_trunk
from polytask.models.base import MultiTaskModel
from polytask.paths import safe_name
from polytask.tasks import Task
from polytask.training import TrainSettings, fit
from polytask.validation import validate_components

__all__ = [
    "ExperimentResult",
    "RunDirectoryError",
    "build_model",
    "check_run_dirs",
    "compute_summary_metrics",
    "load_data",
    "load_sources",
    "run_dir_name",
    "run_experiment",
    "single_task_sources",
    "single_task_splits",
    "train_single_task_baseline",
    "train_source",
]

Metrics = dict[str, dict[str, float]]


def cache_dir() -> Path:
    return Path(os.environ.get("POLYTASK_CACHE", Path.home() / ".cache" / "polytask"))


def load_data(config: ExperimentConfig, seed: int) -> Splits:
    """Load the configured data; several data sets come stacked (see :func:`load_sources`)."""
    return load_sources(config, seed)[0]


def load_sources(config: ExperimentConfig, seed: int) -> tuple[Splits, MultiSourceData | None]:
    """The configured data, and its training sources when it is several data sets.

    The split seed is the run seed unless fixed in the config (``data.split_seed``). For several
    data sets the returned :class:`Splits` holds every source's training rows stacked (missing
    labels filled: what inference and the tasks' scalers see) and the sources' union for
    validation and test; training itself draws from the returned :class:`MultiSourceData`.
    """
    from polytask.data import (
        combine_sources,
        is_multisource,
        load_dataset,
        load_multisource,
        load_table,
    )

    d = config.data
    split_seed = d.split_seed if d.split_seed is not None else seed
    if d.table is not None and d.images is not None:
        from polytask.data.image_table import load_image_table

        return load_image_table(
            d.table, d.images, targets=d.targets, kinds=d.kinds or None, seed=split_seed,
            **d.options,
        ), None
    if d.table is not None:
        splits = load_table(
            d.table, targets=d.targets, kinds=d.kinds or None, features=d.features,
            seed=split_seed, **d.options,
        )
        return splits, None
    multi: MultiSourceSplits
    if d.sources is not None:
        named: dict[str, Splits] = {}
        for i, src in enumerate(d.sources):
            if is_multisource(src.dataset):
                raise ConfigError(
                    f"data.sources.{i}.dataset: {src.dataset!r} is already several data sets; "
                    "give it as data.dataset instead"
                )
            options = dict(src.options)
            options.setdefault("seed", split_seed)
            part = load_dataset(src.dataset, **options)
            if src.tasks is not None:
                part = _keep_tasks(part, src.tasks, f"data.sources.{i}.tasks")
            named[src.display] = part
        multi = combine_sources(named)
    else:
        assert d.dataset is not None
        options = dict(d.options)
        options.setdefault("seed", split_seed)  # every registered loader takes its split seed
        if not is_multisource(d.dataset):
            return load_dataset(d.dataset, **options), None
        multi = load_multisource(d.dataset, **options)
    sources = multi.train
    stacked = Splits(
        train=sources.to_multitask("train"), val=multi.val, test=multi.test,
        info={"sources": dict(zip(sources.names, sources.sizes, strict=True))},
    )
    return stacked, sources


def _keep_tasks(splits: Splits, names: list[str], where: str) -> Splits:
    known = splits.train.task_names
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"{where}: unknown task(s) {unknown}; the data set has {known}")
    tasks = [t for t in splits.tasks if t.name in names]

    return Splits(
        splits.train.with_tasks(tasks), splits.val.with_tasks(tasks),
        splits.test.with_tasks(tasks), info=splits.info,
    )


def train_source(
    config: ExperimentConfig, sources: MultiSourceData | None, subset: bool = False
) -> MultiSourceBatches | None:
    """The loop's batch source for several data sets (``training.sampling``), else ``None``.

    Without ``training.sampling`` the strategy is ``all``: every step sees every source, so every
    task is present in every step, which is what the gradient-balancing methods assume.
    ``subset``: ``sources`` are some of the configured ones (a single-task baseline's), so
    per-source batch sizes are taken for those only.
    """
    sampling = config.training.sampling
    if sources is None:
        if sampling is not None:
            raise ConfigError(
                "training.sampling: the data is a single data set; sampling applies to several "
                "(data.sources or a several-datasets loader such as school_sources)"
            )
        return None
    sampling = sampling or SamplingConfig()
    sizes = sampling.batch_sizes
    if subset and sizes is not None:
        sizes = {n: b for n, b in sizes.items() if n in sources.names}
    try:
        return MultiSourceBatches(
            sources, sampling.strategy, batch_size=sizes,
            **sampling.sampler_options(config.training.epochs),
        )
    except (DataError, TypeError) as err:
        raise ConfigError(f"training.sampling: {err}") from None


def build_model(
    config: ExperimentConfig,
    tasks: list[Task],
    example: Inputs,
    model: ModelConfig | None = None,
    data_info: dict[str, Any] | None = None,
) -> MultiTaskModel:
    """Trunk and architecture (``model``, default the config's first); ``in_features`` from data.

    A trunk whose factory takes ``in_features`` gets the width of one flattened input row (for
    named inputs, :func:`polytask.models.multi_input` trunks take each input's width the same way).
    A trunk whose factory takes ``cardinalities`` (``tabular``) gets ``data_info["cardinalities"]``
    (the splits' ``info``): category counts come from the preprocessing, not from example rows.
    Likewise ``data_info["input_options"]`` gives each named input's encoder (or, under the key
    ``""``, the single trunk) the options the data fixes, such as a tokenizer's ``vocab_size``.
    """
    m = model or config.model_list[0]
    trunk_options = dict(m.trunk_options)
    from polytask.models.registry import _TRUNKS

    factory = _TRUNKS[m.trunk][0] if m.trunk in _TRUNKS else None
    params = inspect.signature(factory).parameters if factory is not None else {}
    if "in_features" in params and isinstance(example, torch.Tensor):
        trunk_options.setdefault("in_features", int(example[0].numel()))
    if "example_input" in params:
        trunk_options.setdefault("example_input", example)
    if "cardinalities" in params and data_info and "cardinalities" in data_info:
        trunk_options.setdefault("cardinalities", list(data_info["cardinalities"]))
    # Per named input, options only the data knows (a tokenizer's vocabulary size, ...):
    # ``data_info["input_options"] = {input name, or "" for one tensor: {option: value}}``.
    input_options = dict((data_info or {}).get("input_options") or {})
    if "input_options" in params:
        trunk_options.setdefault("input_options", input_options)
    for key, value in input_options.get("", {}).items():
        if key in params:
            trunk_options.setdefault(key, value)
    if "in_channels" in params and isinstance(example, torch.Tensor) and example.ndim == 4:
        trunk_options.setdefault("in_channels", int(example.shape[1]))
    trunk = create_trunk(m.trunk, **trunk_options)
    return create_model(m.architecture, trunk, tasks, example_input=example, **m.options)


def single_task_splits(splits: Splits, task: Task) -> Splits:
    """The rows labelled for ``task``, with that task only."""

    def keep(data: TaskData) -> TaskData:
        mask = task.label_mask(data.targets[task.name])
        rows = mask.reshape(len(data), -1).any(dim=1).nonzero().flatten()
        sub = data.subset(rows).with_tasks([task])
        sub.name = f"{data.name}[{task.name}]"
        return sub

    return Splits(keep(splits.train), keep(splits.val), keep(splits.test), info=splits.info)


def single_task_sources(sources: MultiSourceData, task: Task) -> MultiSourceData:
    """The sources that label ``task``, each reduced to that task (its baseline's training data)."""
    parts = {
        name: MultiTaskData(
            inputs=data.inputs, targets={task.name: data.targets[task.name]}, tasks=[task],
            name=name, row_ids=data.row_ids, info=data.info,
        )
        for name, data in sources.sources.items()
        if task.name in sources.labelled_tasks(name)
    }
    return MultiSourceData(parts, tasks=[task], validate=False)


@dataclass
class RunRecord:
    label: str
    kind: str
    seed: int
    run_dir: Path
    val: Metrics
    test: Metrics
    delta_m: float | None
    time_s: float
    summary: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class ExperimentResult:
    out_dir: Path
    tasks: list[Task]
    runs: list[RunRecord] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """One row per label: mean and std over seeds of each task's primary test metric and Δm."""
        out = []
        for label in dict.fromkeys(r.label for r in self.runs):
            runs = [r for r in self.runs if r.label == label]
            row: dict[str, Any] = {"label": label, "kind": runs[0].kind, "seeds": len(runs)}
            for t in self.tasks:
                values = [r.test[t.name][t.primary] for r in runs if t.name in r.test]
                if values:
                    row[t.name] = _mean_std(values)
            dms = [r.delta_m for r in runs if r.delta_m is not None]
            row["delta_m"] = _mean_std(dms) if dms else None
            names = dict.fromkeys(k for r in runs for k in r.summary.get("test", {}))
            row["summary"] = {
                k: _mean_std([r.summary["test"][k] for r in runs if k in r.summary.get("test", {})])
                for k in names
            }
            row["mean_primary"] = self._mean_primary(runs)
            row["time_s"] = statistics.fmean(r.time_s for r in runs)
            out.append(row)
        return out


    def _mean_primary(self, runs: list[RunRecord]) -> tuple[float, float] | None:
        """Mean over tasks of the primary test metric, per seed, then mean ± std over seeds.

        Only when every task has the same primary metric (a mean of AUCs means something, a mean
        of an AUC and an MAE does not) and every task was scored in every seed. Runs of one seed
        are merged first, so the single-task rows (one run per task) get the same figure.
        """
        primaries = {t.primary for t in self.tasks}
        if len(self.tasks) < 2 or len(primaries) != 1:
            return None
        per_seed: dict[int, dict[str, float]] = {}
        for r in runs:
            for t in self.tasks:
                if t.name in r.test:
                    per_seed.setdefault(r.seed, {})[t.name] = r.test[t.name][t.primary]
        means = [
            statistics.fmean(scores.values())
            for scores in per_seed.values()
            if len(scores) == len(self.tasks)
        ]
        return _mean_std(means) if means and len(means) == len(per_seed) else None


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return (math.nan, math.nan)
    return (statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0)


def _hash(payload: dict[str, Any]) -> str:
    """The cache key of a payload: the sha256 of its canonical JSON (sorted keys), shortened."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _hash_value(h: Any, value: Any) -> None:
    """Feed ``value`` (tensors, arrays, dicts, sequences, scalars) into the sha256 ``h``.

    Tensors and arrays contribute their dtype, shape and raw bytes (row order included), so two
    data sets hash alike only when they hold the same numbers; named inputs (a dict of tensors)
    are fed in key order. Anything else contributes its type and ``repr``: an object whose repr
    changes between runs (an address) only makes the cache miss, never reuse a wrong baseline.
    """
    import numpy as np

    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        t = value.detach()
        h.update(f"tensor|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.reshape(-1).contiguous().cpu()
        if flat.numel():
            h.update(memoryview(flat.view(torch.uint8).numpy()))
    elif isinstance(value, dict):
        h.update(f"dict|{len(value)}|".encode())
        for key in sorted(value, key=str):
            h.update(f"key|{key}|".encode())
            _hash_value(h, value[key])
    elif isinstance(value, list | tuple):
        h.update(f"seq|{len(value)}|".encode())
        for item in value:
            _hash_value(h, item)
    else:
        h.update(f"{type(value).__name__}|{value!r}|".encode())


def _data_fingerprint(splits: Splits, task: Task, sources: MultiSourceData | None) -> str:
    """A sha256 of the data a task's single-task baseline is trained and scored on.

    Why: baselines are cached across runs, and a key made of the config alone reused the old
    baseline when the same config ran on other arrays (``run_experiment(..., splits_override=...)``,
    or a data file rewritten in place), scoring it on the old test rows and reporting Δm against it.

    Per split (train, validation, test, and every source that labels the task): its length, its
    inputs (a tensor or a dict of named tensors) and the task's targets, which decide the rows the
    baseline keeps; plus ``splits.info`` (category counts, tokenizer options: what shapes the
    model). A split served through a ``Dataset`` (``DatasetData``) is fingerprinted by its row
    selection, the task's targets and the dataset's own ``fingerprint`` attribute when it has one,
    not by reading its inputs: that would cost a pass over every image per run, and augmented
    inputs differ on every read. Hashing in-memory tensors is a one-off per baseline (~1 GB/s).
    """
    h = hashlib.sha256()
    parts: list[tuple[str, TaskData]] = [
        ("train", splits.train), ("val", splits.val), ("test", splits.test)
    ]
    if sources is not None:
        parts += [
            (f"source:{name}", data)
            for name, data in sorted(sources.sources.items())
            if task.name in sources.labelled_tasks(name)
        ]
    for name, data in parts:
        h.update(f"split|{name}|{type(data).__name__}|{len(data)}|".encode())
        _hash_value(h, data.targets[task.name])
        inputs: Inputs | None = getattr(data, "inputs", None)
        if inputs is not None:
            _hash_value(h, inputs)
            continue
        _hash_value(h, getattr(data, "positions", None))
        dataset = getattr(data, "dataset", None)
        while hasattr(dataset, "indices") and hasattr(dataset, "dataset"):
            rows = dataset.indices  # a torch Subset: its rows, then the data set it wraps
            _hash_value(h, rows if isinstance(rows, torch.Tensor) else torch.tensor(list(rows)))
            dataset = dataset.dataset
        h.update(f"dataset|{type(dataset).__module__}.{type(dataset).__qualname__}|".encode())
        stamp = getattr(dataset, "fingerprint", None)
        _hash_value(h, stamp() if callable(stamp) else stamp)
    _hash_value(h, dict(splits.info))
    return h.hexdigest()


def _custom_parts(task: Task) -> dict[str, Any]:
    """Which custom callables define the task (``to_config`` writes a custom loss as "custom")."""

    def name(fn: Any) -> str | None:
        if fn is None or isinstance(fn, str):
            return fn
        target = getattr(fn, "func", fn)  # functools.partial: the function and its arguments
        qualified = f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', repr(target))}"
        extra = getattr(fn, "args", ()), getattr(fn, "keywords", {})
        return qualified if extra == ((), {}) else f"{qualified}{extra!r}"

    metrics = {k: name(v) for k, v in (task.metrics or {}).items()}
    return {"loss": name(task.loss), "head": name(task.head), "metrics": metrics}


def train_single_task_baseline(
    config: ExperimentConfig,
    splits: Splits,
    task: Task,
    seed: int,
    out_dir: Path,
    log: Callable[[str], None],
    sources: MultiSourceData | None = None,
) -> RunRecord:
    """Train ``task``'s single-task baseline of ``seed`` (or take it from the cache) and copy its
    run to ``out_dir/stl-<task>-seed<seed>``.

    Cached in ``$POLYTASK_CACHE/stl/<key>``, the key a hash of everything that changes the
    baseline (data config and a fingerprint of the data, baseline model, training settings,
    the task, the seed; the sampling of several-datasets runs), so that every experiment and
    benchmark suite comparing against the same baseline trains it once. ``log`` is told whether
    it was trained, found in the cache, or published meanwhile by another process.
    """
    data = config.data.model_dump(mode="json", exclude={"sources"} if config.data.sources is None else None)
    payload = {
        "data": data,
        "model": config.baseline_model.model_dump(mode="json", exclude={"label"}),
        "training": config.training.model_dump(
            mode="json", exclude={"progress", "tensorboard", "sampling", "relations"}
        ),
        "task": task.to_config(),
        "task_callables": _custom_parts(task),
        "seed": seed,
        # 2: the key covers the data itself, not only the config that loaded it
        "version": 2,
        "data_fingerprint": _data_fingerprint(splits, task, sources),
    }
    if sources is not None:  # only several-datasets runs carry it
        sampling = config.training.sampling or SamplingConfig()
        payload["sampling"] = sampling.model_dump(mode="json")
    key = _hash(payload)
    cached = cache_dir() / "stl" / key
    label = f"stl:{task.name}"
    target = out_dir / f"stl-{safe_name(task.name)}-seed{seed}"
    if not (cached / "results.json").exists():
        log(f"training single-task baseline for {task.name!r} (seed {seed})")
        sub = single_task_splits(splits, task)
        source = None
        if sources is not None:
            own = single_task_sources(sources, task)
            sub = Splits(own.to_multitask("train"), sub.val, sub.test, info=sub.info)
            source = train_source(config, own, subset=True)
        torch.manual_seed(seed)
        model = build_model(config, [task], sub.train.example(), config.baseline_model, sub.info)
        balancer = create_balancer("equal", [task.name])
        settings = config.training.settings(
            seed, balancer="equal", architecture=config.baseline_model.architecture
        )
        # One partial directory per process: two processes (two suites, or DDP ranks) may train
        # the same baseline at once; the first to finish publishes it, the other keeps that one.
        tmp = cached.with_name(f"{key}.partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        fit(model, sub, balancer, settings, tmp, train_source=source)
        write_dense_samples(model, [task], sub.val, tmp)
        (tmp / "stl_key.json").write_text(json.dumps(payload, indent=2, default=str))
        try:
            tmp.rename(cached)
        except OSError:
            if not (cached / "results.json").exists():
                raise
            log(f"single-task baseline for {task.name!r} (seed {seed}) was published meanwhile "
                f"by another process; using that one")
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        log(f"single-task baseline for {task.name!r} (seed {seed}) found in cache {cached}")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(cached, target)
    write_preprocessing(splits, target)  # the cache key covers the data, not its preprocessing file
    results = json.loads((target / "results.json").read_text())
    return RunRecord(
        label=label, kind="stl", seed=seed, run_dir=target, val=results["val"],
        test=results["test"], delta_m=None, time_s=results["time_s"],
    )


def write_preprocessing(splits: Splits, directory: Path) -> None:
    """Write a table's fitted preprocessing (columns, training statistics) as ``preprocessing.json``.

    Why per run directory: the statistics come from the training rows, and when the split follows
    the seed every seed has its own; a run must be read back with its own seed's statistics.
    """
    if "preprocessing" in splits.info:
        (directory / "preprocessing.json").write_text(json.dumps(splits.info["preprocessing"]))


def _run_label(config: ExperimentConfig, model: ModelConfig, balancer: str) -> str:
    """A balancer's label alone; with ``models``, the model's label (and the balancer's if several)."""
    if config.models is None:
        return balancer
    return model.display if len(config.balancers) == 1 else f"{model.display}-{balancer}"


def compute_summary_metrics(
    config: ExperimentConfig, model: MultiTaskModel, splits: Splits
) -> dict[str, dict[str, float]]:
    """``summary_metrics`` of the selected model on validation and test (model as left by fit)."""
    device = next(model.parameters()).device
    return {
        split: {
            name: SUMMARY_METRICS[name](
                model, splits.tasks, getattr(splits, split), config.training.eval_batch_size, device
            )
            for name in config.summary_metrics
        }
        for split in ("val", "test")
    }


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    splits_override: Splits | None = None,
    communicator: Communicator | None = None,
    report: bool = True,
    resume: bool = False,
    overwrite: bool = False,
) -> ExperimentResult:
    """Train every configured balancer for every seed (plus STL baselines) and write a report.

    Every component name and option is checked first (:func:`validate_components`), so a typo
    fails before anything trains. A run directory that already holds a run is refused unless
    ``resume`` (finished runs are read back, interrupted ones continue exactly from their
    ``checkpoints/last.pt``) or ``overwrite`` (it is emptied and trained again) is given.

    ``report=False`` writes ``summary.json`` but not ``report.html`` (its plots take seconds, which
    dominates small runs from Python; ``polytask report DIR`` renders it later from the files).

    ``communicator`` (torch.distributed, see :mod:`polytask.training.distributed`) is handed to
    the multi-task runs only; single-task baselines always train single-process (each rank that
    calls this trains or reads the same ones from the cache).
    """
    validate_components(config, check_data=splits_override is None)
    out = Path(out_dir or Path(config.output_dir) / config.name)
    check_run_dirs(config, out, resume=resume, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(config.to_yaml())
    result: ExperimentResult | None = None
    for seed in config.seeds:
        sources = None
        if splits_override is not None:
            splits = splits_override
        else:
            splits, sources = load_sources(config, seed)
        source = train_source(config, sources)
        splits.validate()
        if "preprocessing" in splits.info and seed == config.seeds[0]:
            # the experiment-level copy (the first seed's); each run directory gets its own seed's,
            # which is what `polytask predict RUN` reads first
            write_preprocessing(splits, out)
        tasks = splits.tasks
        if result is None:
            result = ExperimentResult(out_dir=out, tasks=tasks)
        stl_val = stl_test = None
        if config.baselines.stl:
            stl_runs = [
                train_single_task_baseline(config, splits, copy.copy(t), seed, out, log, sources)
                for t in tasks
            ]
            result.runs.extend(stl_runs)
            stl_val = {t.name: r.val[t.name] for t, r in zip(tasks, stl_runs, strict=True)}
            stl_test = {t.name: r.test[t.name] for t, r in zip(tasks, stl_runs, strict=True)}
        for mc in config.model_list:
            for bc in config.balancers:
                label = _run_label(config, mc, bc.display)
                run_dir = out / run_dir_name(label, seed)
                done = _finished_run(config, run_dir, label, seed) if resume else None
                if done is not None:
                    log(f"{label} (seed {seed}) already finished in {run_dir}: read back")
                    result.runs.append(done)
                    continue
                _clear_for_start(run_dir, resume, overwrite, log)
                resuming = resume and (run_dir / "checkpoints" / "last.pt").exists()
                log(f"{'resuming' if resuming else 'training'} {label} (seed {seed})")
                torch.manual_seed(seed)
                model = build_model(config, tasks, splits.train.example(), mc, splits.info)
                balancer = create_balancer(
                    bc.name, [t.name for t in tasks],
                    task_weights={t.name: t.weight for t in tasks}, **bc.options,
                )
                settings: TrainSettings = config.training.settings(
                    seed, balancer=bc.name, architecture=mc.architecture
                )
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "config.yaml").write_text(_run_config(config, mc).to_yaml())
                write_preprocessing(splits, run_dir)
                fitted = fit(
                    model, splits, balancer, settings, run_dir, train_source=source,
                    stl_val=stl_val, stl_test=stl_test, communicator=communicator,
                    resume=resuming,
                )
                if communicator is None or communicator.rank == 0:
                    # the selected model's masks and maps beside the truth, for the report
                    write_dense_samples(model, tasks, splits.val, run_dir)
                summary = compute_summary_metrics(config, model, splits) if config.summary_metrics else {}
                if summary and (run_dir / "results.json").exists():
                    saved = json.loads((run_dir / "results.json").read_text())
                    saved["summary_metrics"] = summary
                    (run_dir / "results.json").write_text(json.dumps(saved, indent=2))
                result.runs.append(
                    RunRecord(
                        label=label, kind="mtl", seed=seed, run_dir=run_dir, val=fitted.val,
                        test=fitted.test, delta_m=fitted.delta_m, time_s=fitted.time_s,
                        summary=summary,
                    )
                )
    assert result is not None
    _write_summary(config, result, report)
    return result


def _run_config(config: ExperimentConfig, model: ModelConfig) -> ExperimentConfig:
    """The config of one run: with ``models``, only that model (so ``load_run`` rebuilds it)."""
    if config.models is None:
        return config
    baselines = config.baselines.model_copy(update={"model": None})
    return config.model_copy(update={"model": model, "models": None, "baselines": baselines})


class RunDirectoryError(ValueError):
    """A run directory that already holds a run, and neither resume nor overwrite was asked."""


# Settings that change what a run shows, never what it computes: a resumed run may differ in them.
_RESUME_IGNORES = ("training.progress", "training.tensorboard")


def run_dir_name(label: str, seed: int) -> str:
    """The folder of one multi-task run; the label may come from data or a config, so made safe."""
    return f"{safe_name(label)}-seed{seed}"


def _holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` has checkpoints or results that starting over would destroy."""
    return (run_dir / "results.json").exists() or any((run_dir / "checkpoints").glob("*.pt"))


def planned_run_dirs(config: ExperimentConfig, out: Path) -> list[tuple[Path, ModelConfig]]:
    """Every multi-task run directory ``run_experiment(config, out)`` writes, with its model."""
    return [
        (out / run_dir_name(_run_label(config, mc, bc.display), seed), mc)
        for seed in config.seeds
        for mc in config.model_list
        for bc in config.balancers
    ]


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def _config_changes(run_dir: Path, config: ExperimentConfig) -> list[str]:
    """Keys whose value differs between the run's saved ``config.yaml`` and ``config``."""
    import yaml

    path = run_dir / "config.yaml"
    if not path.exists():
        return []
    saved = _flat(yaml.safe_load(path.read_text()) or {})
    now = _flat(config.model_dump(mode="json"))
    keys = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    return [k for k in keys if k not in _RESUME_IGNORES]


def check_run_dirs(
    config: ExperimentConfig, out: Path, *, resume: bool = False, overwrite: bool = False
) -> list[Path]:
    """Refuse to start over runs that exist; return the run directories that already hold one.

    Without ``resume`` or ``overwrite``, any run directory of ``config`` under ``out`` holding
    checkpoints or results raises :class:`RunDirectoryError` naming each. With ``resume``, a run
    whose saved configuration differs from ``config`` (display settings aside) is refused too:
    continuing it would mix two experiments in one run.
    """
    if resume and overwrite:
        raise RunDirectoryError("resume and overwrite exclude each other: choose one")
    existing = [(d, mc) for d, mc in planned_run_dirs(config, out) if _holds_run(d)]
    if existing and not (resume or overwrite):
        names = "\n".join(f"  {d}" for d, _ in existing)
        raise RunDirectoryError(
            f"{len(existing)} run director{'y holds' if len(existing) == 1 else 'ies hold'} a "
            f"run already (checkpoints or results):\n{names}\npass --resume to continue "
            "(finished runs are read back, interrupted ones continue from checkpoints/last.pt) or "
            "--overwrite to start over (resume=True / overwrite=True from Python), or choose "
            "another --out"
        )
    if resume:
        changed = [(d, _config_changes(d, _run_config(config, mc))) for d, mc in existing]
        changed = [(d, keys) for d, keys in changed if keys]
        if changed:
            lines = "\n".join(f"  {d}: {', '.join(keys)}" for d, keys in changed)
            raise RunDirectoryError(
                "cannot resume: the configuration differs from the one these runs were started "
                f"with (key paths listed):\n{lines}\nrestore it, or pass --overwrite to start over"
            )
    return [d for d, _ in existing]


def _finished_run(
    config: ExperimentConfig, run_dir: Path, label: str, seed: int
) -> RunRecord | None:
    """The record of a run that already finished in ``run_dir`` (resume), or ``None``.

    A run counts as finished when ``results.json`` is there, with its summary metrics when the
    config asks for them (they are added after training: a kill in between leaves them out, and
    the run is then finished again from its last checkpoint).
    """
    path = run_dir / "results.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    summary = saved.get("summary_metrics", {})
    if config.summary_metrics and not summary:
        return None
    return RunRecord(
        label=label, kind="mtl", seed=seed, run_dir=run_dir, val=saved["val"], test=saved["test"],
        delta_m=saved.get("delta_m"), time_s=float(saved.get("time_s", 0.0)), summary=summary,
    )


def _clear_for_start(run_dir: Path, resume: bool, overwrite: bool, log: Callable[[str], None]) -> None:
    """Empty ``run_dir`` when its run starts over: with ``overwrite``, or resume without last.pt.

    A stale ``best.pt`` left in place would be reloaded as the selected model of the new run if
    no epoch of it ever scored (a NaN selection score), so nothing of the old run may remain.
    """
    if not run_dir.exists():
        return
    if overwrite and _holds_run(run_dir):
        log(f"overwriting the run in {run_dir}")
        shutil.rmtree(run_dir)
    elif resume and not (run_dir / "checkpoints" / "last.pt").exists() and _holds_run(run_dir):
        log(f"{run_dir} has no checkpoints/last.pt to resume from; starting it over")
        shutil.rmtree(run_dir)


def _write_summary(config: ExperimentConfig, result: ExperimentResult, report: bool = True) -> None:
    from polytask.training.loop import json_safe

    summary = {
        "title": config.name,
        "tasks": [
            {"name": t.name, "kind": t.kind.value, "primary_metric": t.primary,
             "higher_is_better": t.primary_higher_is_better}
            for t in result.tasks
        ],
        "rows": [
            {
                "label": r.label if len(config.seeds) == 1 else f"{r.label} (seed {r.seed})",
                "run_dir": str(r.run_dir.relative_to(result.out_dir)),
                "kind": r.kind,
                "test": r.test,
                "delta_m": r.delta_m,
                "time_s": r.time_s,
                **({"summary_metrics": r.summary} if r.summary else {}),
            }
            for r in result.runs
        ],
        "aggregate": result.rows(),
        "notes": [
            "Model selection on the validation split only; test metrics of the selected epoch.",
            "Δm% = 100/T Σ_i (-1)^{h_i} (M_i - B_i)/|B_i| on each task's primary metric against "
            "the single-task baseline of the same seed (lower is better).",
        ],
    }
    (result.out_dir / "summary.json").write_text(json.dumps(json_safe(summary), indent=2))
    if not report:
        return
    from polytask.report import write_report

    write_report(result.out_dir)


def format_table(result: ExperimentResult, max_task_columns: int = 12) -> str:
    """Plain-text table: one row per method, primary metric per task (mean ± std), Δm, time.

    Summary metrics (``summary_metrics``, e.g. School's pooled explained variance) get a column
    each. With more than ``max_task_columns`` tasks (School has 139) the per-task columns collapse
    into the mean of the tasks' primary metrics: the full figures are in ``summary.json``.
    """
    tasks = result.tasks
    rows = result.rows()
    summaries = list(dict.fromkeys(k for row in rows for k in row.get("summary", {})))
    per_task = len(tasks) <= max_task_columns
    primaries = sorted({t.primary for t in tasks})
    with_mean = any(row.get("mean_primary") is not None for row in rows)
    task_header = (
        [f"{t.name} {t.primary}" for t in tasks]
        if per_task else [f"mean {'/'.join(primaries)} ({len(tasks)} tasks)"]
    )
    if per_task and with_mean:
        task_header.append(f"mean {primaries[0]}")
    header = ["method", *task_header, *summaries, "Δm%", "time s"]

    def cell(value: tuple[float, float] | None, seeds: int, fmt: str = "{:.4f}") -> str:
        if value is None:
            return "—"
        mean, std = value
        return fmt.format(mean) + (" ± " + fmt.format(std) if seeds > 1 else "")

    lines = []
    for row in rows:
        n = row["seeds"]
        cells = [row["label"] + (f" (n={n})" if n > 1 else "")]
        if per_task:
            cells += [cell(row.get(t.name), n) for t in tasks]
            if with_mean:
                cells.append(cell(row.get("mean_primary"), n))
        elif row.get("mean_primary") is not None:
            cells.append(cell(row["mean_primary"], n))
        else:
            # mixed primary metrics: the mean over tasks of the seed means, for orientation only
            means = [row[t.name][0] for t in tasks if t.name in row]
            cells.append(f"{statistics.fmean(means):.4f}" if means else "—")
        cells += [cell(row.get("summary", {}).get(k), n, "{:.2f}") for k in summaries]
        dm = row["delta_m"]
        cells.append("—" if dm is None else f"{dm[0]:+.2f}" + (f" ± {dm[1]:.2f}" if n > 1 else ""))
        cells.append(f"{row['time_s']:.1f}")
        lines.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*["-" * w for w in widths])] + [fmt.format(*c) for c in lines])
