"""Experiments: compare balancers (over seeds) against single-task baselines trained here.

This is what ``polytask demo``, ``fit`` and ``train`` run. The single-task (STL) baselines use the
same trunk, architecture and training settings with one task each, on the rows labelled for that
task; they are cached under ``$POLYTASK_CACHE/stl`` by a hash of everything that defines them, so
comparing a new balancer never retrains them.
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
from polytask.config import ExperimentConfig
from polytask.data.base import MultiTaskData, Splits
from polytask.models import create_model, create_trunk
from polytask.models.base import MultiTaskModel
from polytask.tasks import Task
from polytask.training import TrainSettings, fit

__all__ = ["ExperimentResult", "build_model", "load_data", "run_experiment", "single_task_splits"]

Metrics = dict[str, dict[str, float]]


def cache_dir() -> Path:
    return Path(os.environ.get("POLYTASK_CACHE", Path.home() / ".cache" / "polytask"))


def load_data(config: ExperimentConfig, seed: int) -> Splits:
    """Load the configured data set; the split seed is the run seed unless fixed in the config."""
    from polytask.data import load_dataset, load_table

    d = config.data
    split_seed = d.split_seed if d.split_seed is not None else seed
    if d.table is not None:
        splits = load_table(
            d.table, targets=d.targets, kinds=d.kinds or None, features=d.features,
            seed=split_seed, **d.options,
        )
    else:
        assert d.dataset is not None
        options = dict(d.options)
        options.setdefault("seed", split_seed)  # every registered loader takes its split seed
        splits = load_dataset(d.dataset, **options)
    return splits


def build_model(config: ExperimentConfig, tasks: list[Task], example: torch.Tensor) -> MultiTaskModel:
    """Trunk and architecture from the config; a trunk's ``in_features`` is read off the data."""
    m = config.model
    trunk_options = dict(m.trunk_options)
    from polytask.models.registry import _TRUNKS

    factory = _TRUNKS[m.trunk][0] if m.trunk in _TRUNKS else None
    if factory is not None and "in_features" in inspect.signature(factory).parameters:
        trunk_options.setdefault("in_features", int(example[0].numel()))
    trunk = create_trunk(m.trunk, **trunk_options)
    return create_model(m.architecture, trunk, tasks, example_input=example, **m.options)


def single_task_splits(splits: Splits, task: Task) -> Splits:
    """The rows labelled for ``task``, with that task only."""

    def keep(data: MultiTaskData) -> MultiTaskData:
        mask = task.label_mask(data.targets[task.name])
        rows = mask.reshape(len(data), -1).any(dim=1).nonzero().flatten()
        sub = data.subset(rows)
        return MultiTaskData(
            inputs=sub.inputs, targets={task.name: sub.targets[task.name]}, tasks=[task],
            name=f"{data.name}[{task.name}]", row_ids=sub.row_ids, info=data.info,
        )

    return Splits(keep(splits.train), keep(splits.val), keep(splits.test), info=splits.info)


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
            row["time_s"] = statistics.fmean(r.time_s for r in runs)
            out.append(row)
        return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return (math.nan, math.nan)
    return (statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0)


def _hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _train_stl(
    config: ExperimentConfig, splits: Splits, task: Task, seed: int, out_dir: Path, log: Callable[[str], None]
) -> RunRecord:
    payload = {
        "data": config.data.model_dump(mode="json"),
        "model": config.model.model_dump(mode="json"),
        "training": config.training.model_dump(mode="json", exclude={"progress", "tensorboard"}),
        "task": task.to_config(),
        "seed": seed,
        "version": 1,
    }
    key = _hash(payload)
    cached = cache_dir() / "stl" / key
    label = f"stl:{task.name}"
    target = out_dir / f"stl-{task.name}-seed{seed}"
    if not (cached / "results.json").exists():
        log(f"training single-task baseline for {task.name!r} (seed {seed})")
        sub = single_task_splits(splits, task)
        torch.manual_seed(seed)
        model = build_model(config, [task], sub.train.inputs[:2])
        balancer = create_balancer("equal", [task.name])
        settings = config.training.settings(seed, balancer="equal", architecture=config.model.architecture)
        tmp = cached.with_name(key + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        fit(model, sub, balancer, settings, tmp)
        (tmp / "stl_key.json").write_text(json.dumps(payload, indent=2, default=str))
        tmp.rename(cached)
    else:
        log(f"single-task baseline for {task.name!r} (seed {seed}) found in cache {cached}")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(cached, target)
    results = json.loads((target / "results.json").read_text())
    return RunRecord(
        label=label, kind="stl", seed=seed, run_dir=target, val=results["val"],
        test=results["test"], delta_m=None, time_s=results["time_s"],
    )


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    splits_override: Splits | None = None,
    communicator: Communicator | None = None,
) -> ExperimentResult:
    """Train every configured balancer for every seed (plus STL baselines) and write a report.

    ``communicator`` (torch.distributed, see :mod:`polytask.training.distributed`) is handed to
    the multi-task runs only; single-task baselines always train single-process (each rank that
    calls this trains or reads the same ones from the cache).
    """
    out = Path(out_dir or Path(config.output_dir) / config.name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(config.to_yaml())
    result: ExperimentResult | None = None
    for seed in config.seeds:
        splits = splits_override if splits_override is not None else load_data(config, seed)
        splits.validate()
        if "preprocessing" in splits.info:
            (out / "preprocessing.json").write_text(json.dumps(splits.info["preprocessing"]))
        tasks = splits.tasks
        if result is None:
            result = ExperimentResult(out_dir=out, tasks=tasks)
        stl_val = stl_test = None
        if config.baselines.stl:
            stl_runs = [_train_stl(config, splits, copy.copy(t), seed, out, log) for t in tasks]
            result.runs.extend(stl_runs)
            stl_val = {t.name: r.val[t.name] for t, r in zip(tasks, stl_runs, strict=True)}
            stl_test = {t.name: r.test[t.name] for t, r in zip(tasks, stl_runs, strict=True)}
        for bc in config.balancers:
            log(f"training {bc.display} (seed {seed})")
            torch.manual_seed(seed)
            model = build_model(config, tasks, splits.train.inputs[:2])
            balancer = create_balancer(
                bc.name, [t.name for t in tasks], task_weights={t.name: t.weight for t in tasks},
                **bc.options,
            )
            settings: TrainSettings = config.training.settings(
                seed, balancer=bc.name, architecture=config.model.architecture
            )
            run_dir = out / f"{bc.display}-seed{seed}"
            (run_dir).mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(config.to_yaml())
            fitted = fit(
                model, splits, balancer, settings, run_dir, stl_val=stl_val, stl_test=stl_test,
                communicator=communicator,
            )
            result.runs.append(
                RunRecord(
                    label=bc.display, kind="mtl", seed=seed, run_dir=run_dir, val=fitted.val,
                    test=fitted.test, delta_m=fitted.delta_m, time_s=fitted.time_s,
                )
            )
    assert result is not None
    _write_summary(config, result)
    return result


def _write_summary(config: ExperimentConfig, result: ExperimentResult) -> None:
    from polytask.training.loop import _jsonable

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
    (result.out_dir / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2))
    from polytask.report import write_report

    write_report(result.out_dir)


def format_table(result: ExperimentResult) -> str:
    """Plain-text table: one row per method, primary metric per task (mean ± std), Δm, time."""
    tasks = result.tasks
    header = ["method", *[f"{t.name} {t.primary}" for t in tasks], "Δm%", "time s"]
    lines = []
    for row in result.rows():
        cells = [row["label"] + (f" (n={row['seeds']})" if row["seeds"] > 1 else "")]
        for t in tasks:
            if t.name not in row:
                cells.append("—")
                continue
            mean, std = row[t.name]
            cells.append(f"{mean:.4f}" + (f" ± {std:.4f}" if row["seeds"] > 1 else ""))
        dm = row["delta_m"]
        cells.append("—" if dm is None else f"{dm[0]:+.2f}" + (f" ± {dm[1]:.2f}" if row["seeds"] > 1 else ""))
        cells.append(f"{row['time_s']:.1f}")
        lines.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*["-" * w for w in widths])] + [fmt.format(*c) for c in lines])
