"""The trainings behind ``polytask advise``: reference runs, task groups, an Optuna search.

Why these pieces: every candidate the advisor compares is a *partition* of the tasks (one shared
model per group, a single-task model per singleton) trained with some hyper-parameters, scored by
its validation Δm% against the single-task baselines of the same seed. The baselines come from
:func:`train_reference` (the project's :func:`~polytask.experiment.run_experiment`: all tasks in
one shared model with equal weights, plus the cached single-task baselines, optionally recording
the task relationship measures); a group is trained by :func:`train_group` (the project's
:func:`~polytask.training.fit` on the group's tasks), whose per-epoch validation Δm an Optuna
pruner reads (:func:`tune`). The test split is never read here.

Δm of a partition: ``Σ_g |g| · Δm_g / T`` (the mean over all tasks of the per-task relative
differences; a singleton is its own baseline and adds 0).
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polytask.auto.budget import Budget
from polytask.balancing import create_balancer
from polytask.config import ExperimentConfig, ModelConfig, RelationsConfig, TrainingConfig
from polytask.data.base import Splits
from polytask.evaluation.metrics import delta_m
from polytask.experiment import build_model, run_experiment
from polytask.tasks import Task
from polytask.training import fit

__all__ = [
    "Baselines",
    "CandidateResult",
    "GroupRun",
    "HyperParams",
    "Problem",
    "TrialRecord",
    "epoch_time",
    "partition_delta_m",
    "partition_epoch_time",
    "train_group",
    "train_reference",
    "tune",
    "width_option",
    "write_grouping_json",
]

Metrics = dict[str, dict[str, float]]
GROUPING_FILE = "grouping.json"


@dataclass
class Problem:
    """What every training of one advice shares: the base config, the data, where to write."""

    config: ExperimentConfig
    splits: Splits
    out_dir: Path
    log: Callable[[str], None] = print

    @property
    def tasks(self) -> list[Task]:
        return list(self.splits.tasks)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.splits.tasks]

    def subset(self, names: Sequence[str]) -> Splits:
        """The splits with only ``names``'s tasks (the rows are kept: the split stays the same)."""
        tasks = [t for t in self.splits.tasks if t.name in set(names)]
        s = self.splits
        return Splits(
            s.train.with_tasks(tasks), s.val.with_tasks(tasks), s.test.with_tasks(tasks),
            info=s.info,
        )


def _width_keys() -> dict[str, tuple[Any, str]]:
    """Trunk name -> (its class, the option that sets its width): the trunks whose width is searched."""
    from polytask.models.resnet import ResNet
    from polytask.models.tabular import TabularTrunk
    from polytask.models.trunks import MLP, SmallCNN

    return {
        "mlp": (MLP, "hidden"), "tabular": (TabularTrunk, "hidden"),
        "small_cnn": (SmallCNN, "channels"), "resnet": (ResNet, "width"),
    }


def width_option(model: ModelConfig) -> tuple[str, Any] | None:
    """The trunk option that sets its width (layer sizes or channels) and its base value.

    ``None`` for other trunks (pretrained, transformer, multi-input): their width is then not
    searched, and the advice says so.
    """
    entry = _width_keys().get(model.trunk)
    if entry is None:
        return None
    cls, key = entry
    value = model.trunk_options.get(key, inspect.signature(cls).parameters[key].default)
    return key, list(value) if isinstance(value, list | tuple) else value


@dataclass(frozen=True)
class HyperParams:
    """One point of the search: balancer, learning rate, weight decay, trunk width multiplier."""

    balancer: str
    lr: float
    weight_decay: float
    width: float = 1.0

    def training(self, base: TrainingConfig) -> TrainingConfig:
        return base.model_copy(update={"lr": self.lr, "weight_decay": self.weight_decay})

    def model(self, base: ModelConfig) -> ModelConfig:
        option = width_option(base)
        if option is None or self.width == 1.0:
            return base
        key, value = option
        scaled = (
            [max(1, round(h * self.width)) for h in value] if isinstance(value, list)
            else max(1, round(value * self.width))
        )
        return base.model_copy(update={"trunk_options": {**base.trunk_options, key: scaled}})

    def to_json(self) -> dict[str, Any]:
        return {"balancer": self.balancer, "lr": self.lr, "weight_decay": self.weight_decay,
                "width": self.width}


def epoch_time(run_dir: Path) -> float:
    """Mean wall time of an epoch (training steps + validation) from ``metrics.csv``."""
    path = Path(run_dir) / "metrics.csv"
    with path.open() as f:
        times = [float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "epoch_time_s"]
    if not times:
        raise ValueError(f"{path} has no epoch_time_s row: the run finished no epoch")
    return statistics.fmean(times)


@dataclass
class Baselines:
    """The single-task baselines of one seed: validation metrics and epoch time per task."""

    seed: int
    val: Metrics
    epoch_time_s: dict[str, float]
    time_s: dict[str, float]
    run_dirs: dict[str, Path]


@dataclass
class GroupRun:
    """One trained group model: its validation metrics and Δm against the baselines."""

    tasks: list[str]
    seed: int
    val: Metrics
    delta_m: float
    per_epoch_delta_m: list[float]
    epoch_time_s: float
    time_s: float
    run_dir: Path


def _relations_settings(problem: Problem) -> RelationsConfig:
    """Record often enough for a few records per epoch, lookahead included, on small data too."""
    steps = max(1, math.ceil(len(problem.splits.train) / problem.config.training.batch_size))
    every = max(1, steps // 4)
    return RelationsConfig(every=every, lookahead=True, lookahead_every=every)


def train_reference(
    problem: Problem, seed: int, *, relations: bool, hp: HyperParams | None = None,
    run_dir: Path | None = None, resume: bool = False, overwrite: bool = True,
    report: bool = False,
) -> tuple[Baselines, GroupRun]:
    """All tasks in one shared model plus the single-task baselines (cached), for ``seed``.

    With ``relations`` the shared model records the relationship measures (``relations.json`` in
    its run directory, what the grouping search reads). Uses ``run_experiment`` on the problem's
    splits, so the baselines are those every other run of the project gets for this data.
    ``run_dir`` (default ``<advice>/search/reference-seed<seed>``), ``resume``, ``overwrite`` and
    ``report`` are ``run_experiment``'s: the quick advice writes its reference where ``polytask
    fit`` writes its runs, with the same guard against overwriting them.
    """
    c = problem.config
    training = (hp.training(c.training) if hp else c.training).model_copy(
        update={"relations": _relations_settings(problem) if relations else None}
    )
    model = hp.model(c.model_list[0]) if hp else c.model_list[0]
    config = c.model_copy(update={
        "training": training, "seeds": [seed], "model": model, "models": None,
        "balancers": [c.balancers[0].model_copy(update={"name": hp.balancer if hp else "equal",
                                                          "label": None, "options": {}})],
    })
    out = run_dir if run_dir is not None else problem.out_dir / "search" / f"reference-seed{seed}"
    result = run_experiment(
        config, out, log=problem.log, splits_override=problem.splits, report=report,
        resume=resume, overwrite=overwrite,
    )
    stl = {r.label.removeprefix("stl:"): r for r in result.runs if r.kind == "stl"}
    baselines = Baselines(
        seed=seed,
        val={name: r.val[name] for name, r in stl.items()},
        epoch_time_s={name: epoch_time(r.run_dir) for name, r in stl.items()},
        time_s={name: r.time_s for name, r in stl.items()},
        run_dirs={name: r.run_dir for name, r in stl.items()},
    )
    mtl = next(r for r in result.runs if r.kind == "mtl")
    shared = GroupRun(
        tasks=problem.names, seed=seed, val=mtl.val,
        delta_m=delta_m(mtl.val, baselines.val, problem.tasks),
        per_epoch_delta_m=_per_epoch_delta_m(mtl.run_dir), epoch_time_s=epoch_time(mtl.run_dir),
        time_s=mtl.time_s, run_dir=mtl.run_dir,
    )
    return baselines, shared


def _per_epoch_delta_m(run_dir: Path) -> list[float]:
    with (Path(run_dir) / "metrics.csv").open() as f:
        return [float(r["value"]) for r in csv.DictReader(f)
                if r["split"] == "val" and r["metric"] == "delta_m"]


def train_group(
    problem: Problem,
    names: Sequence[str],
    seed: int,
    hp: HyperParams,
    baselines: Baselines,
    run_dir: Path,
    on_epoch: Callable[[int, float], None] | None = None,
) -> GroupRun:
    """Train one shared model on the tasks ``names`` and score it on validation.

    ``on_epoch(epoch, validation Δm%)`` is called after every epoch (what a pruner reads; an
    exception it raises stops the training). The epoch kept is chosen on validation Δm.
    """
    c = problem.config
    splits = problem.subset(names)
    tasks = splits.tasks
    model_config = hp.model(c.model_list[0])
    import torch

    torch.manual_seed(seed)
    model = build_model(c, tasks, splits.train.example(), model_config, splits.info)
    balancer = create_balancer(hp.balancer, [t.name for t in tasks])
    settings = hp.training(c.training).settings(
        seed, balancer=hp.balancer, architecture=model_config.architecture
    )
    stl_val = {t.name: baselines.val[t.name] for t in tasks}
    per_epoch: list[float] = []
    times: list[float] = []
    last = [time.perf_counter()]

    def epoch_end(epoch: int, score: float) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now
        per_epoch.append(-score)  # the selection score is -Δm when baselines are given
        if on_epoch is not None:
            on_epoch(epoch, -score)

    fitted = fit(model, splits, balancer, settings, run_dir, stl_val=stl_val, epoch_end=epoch_end)
    return GroupRun(
        tasks=list(names), seed=seed, val=fitted.val,
        delta_m=delta_m(fitted.val, stl_val, tasks), per_epoch_delta_m=per_epoch,
        epoch_time_s=statistics.fmean(times), time_s=fitted.time_s, run_dir=Path(run_dir),
    )


def partition_delta_m(groups: Sequence[Sequence[str]], runs: Mapping[tuple[str, ...], float],
                      n_tasks: int) -> float:
    """``Σ_g |g| Δm_g / T``; ``runs`` maps each multi-task group to its Δm (singletons add 0)."""
    return sum(len(g) * runs[tuple(g)] for g in groups if len(g) > 1) / n_tasks


def partition_epoch_time(
    groups: Sequence[Sequence[str]], runs: Mapping[tuple[str, ...], GroupRun],
    baselines: Baselines,
) -> float:
    """Seconds of one epoch of every model of a partition (a singleton: its baseline's)."""
    return sum(
        runs[tuple(g)].epoch_time_s if len(g) > 1 else baselines.epoch_time_s[g[0]]
        for g in groups
    )


@dataclass
class CandidateResult:
    """A partition and its validation evidence, per seed."""

    groups: list[list[str]]
    score: float | None
    label: str
    delta_m: dict[int, float] = field(default_factory=dict)
    time_per_epoch_s: float | None = None

    def mean_std(self, seeds: Sequence[int] | None = None) -> tuple[float | None, float | None]:
        values = [v for s, v in self.delta_m.items() if seeds is None or s in seeds]
        if not values:
            return None, None
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)

    def to_json(self) -> dict[str, Any]:
        mean, std = self.mean_std()
        return {
            "groups": self.groups, "score": self.score, "label": self.label,
            "val_delta_m": mean, "val_delta_m_std": std,
            "val_delta_m_per_seed": {str(s): v for s, v in sorted(self.delta_m.items())},
            "time_per_epoch_s": self.time_per_epoch_s,
        }


def write_grouping_json(
    run_dir: Path, tasks: Sequence[str], candidates: Sequence[CandidateResult], chosen: int,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """``<run_dir>/grouping.json``: the candidates compared on validation and the chosen one.

    ``val_delta_m_std`` is ``null`` when a candidate was trained on one seed only;
    ``val_delta_m`` is ``null`` for a candidate the budget left untrained.
    """
    payload = {
        "tasks": list(tasks),
        "candidates": [c.to_json() for c in candidates],
        "chosen": chosen,
        **(dict(extra) if extra else {}),
    }
    path = Path(run_dir) / GROUPING_FILE
    path.write_text(json.dumps(payload, indent=1, allow_nan=False))
    return path


# ------------------------------------------------------------------------------- Optuna search
@dataclass
class TrialRecord:
    """One trial of the hyper-parameter search: its point, outcome and cost."""

    number: int
    hp: HyperParams
    state: str
    delta_m: float | None
    time_s: float
    time_per_epoch_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, **self.hp.to_json(), "state": self.state,
                "val_delta_m": self.delta_m, "time_s": self.time_s,
                "time_per_epoch_s": self.time_per_epoch_s}


def run_partition(
    problem: Problem,
    groups: Sequence[Sequence[str]],
    seed: int,
    hp: HyperParams,
    baselines: Baselines,
    run_root: Path,
    report: Callable[[int, float], None] | None = None,
) -> tuple[float, dict[tuple[str, ...], GroupRun]]:
    """Train every multi-task group of a partition; its validation Δm and the group runs.

    ``report(step, partial Δm)`` is called after each epoch of each group, ``step`` counting
    epochs across the groups in order and the partial Δm counting the groups not trained yet at
    the baselines' level (0): the same steps mean the same thing in every trial of a partition.
    """
    t = len(problem.names)
    epochs = problem.config.training.epochs
    done: dict[tuple[str, ...], GroupRun] = {}
    multi = [list(g) for g in groups if len(g) > 1]
    for k, group in enumerate(multi):
        before = sum(len(g) * done[tuple(g)].delta_m for g in multi[:k]) / t

        def on_epoch(epoch: int, dm: float, k: int = k, before: float = before,
                     size: int = len(group)) -> None:
            if report is not None:
                report(k * epochs + epoch, before + size * dm / t)

        done[tuple(group)] = train_group(
            problem, group, seed, hp, baselines, run_root / f"group{k + 1}-seed{seed}", on_epoch
        )
    return partition_delta_m(groups, {g: r.delta_m for g, r in done.items()}, t), done


def tune(
    problem: Problem,
    groups: Sequence[Sequence[str]],
    baselines: Baselines,
    base: HyperParams,
    budget: Budget,
    *,
    trial_cost: float,
    reserve: Callable[[], float],
    max_trials: int = 20,
    seed: int = 0,
) -> list[TrialRecord]:
    """Optuna search of lr, weight decay and width (equal weights) for a partition, on ``seed``.

    TPE sampler seeded with ``seed``, median pruner on the per-epoch partial validation Δm. Each
    sampled point is trained only if its estimated cost plus ``reserve()`` still fits the budget:
    the longest finished trial of the same width, else ``trial_cost`` (the partition at width 1)
    times the width squared (a wider MLP costs up to that much more); the search stops at the
    first point that does not fit. Returns every trial, pruned ones included.
    """
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    epochs = problem.config.training.epochs
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=max(1, epochs // 3)),
    )
    can_widen = width_option(problem.config.model_list[0]) is not None
    records: list[TrialRecord] = []
    observed: dict[float, float] = {}
    root = problem.out_dir / "search" / "tune"

    def estimate(width: float) -> float:
        return observed.get(width, trial_cost * max(1.0, width) ** 2)

    while len(records) < max_trials:
        trial = study.ask()
        hp = HyperParams(
            balancer=base.balancer,
            lr=trial.suggest_float("lr", base.lr / 10, base.lr * 10, log=True),
            weight_decay=trial.suggest_categorical("weight_decay", [0.0, 1e-5, 1e-4, 1e-3, 1e-2]),
            width=trial.suggest_categorical("width", [0.5, 1.0, 2.0]) if can_widen else 1.0,
        )
        if not budget.fits(estimate(hp.width), reserve()):
            study.tell(trial, state=TrialState.FAIL)  # never trained: left out of the sampler
            break
        started = time.perf_counter()

        def report(step: int, value: float, trial: optuna.Trial = trial) -> None:
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()

        try:
            dm, runs = run_partition(
                problem, groups, seed, hp, baselines, root / f"trial{trial.number}", report
            )
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            records.append(TrialRecord(trial.number, hp, "pruned", None,
                                       time.perf_counter() - started))
            continue
        spent = time.perf_counter() - started
        observed[hp.width] = max(observed.get(hp.width, 0.0), spent)
        study.tell(trial, dm)
        per_epoch = partition_epoch_time(groups, runs, baselines)
        records.append(TrialRecord(trial.number, hp, "complete", dm, spent, per_epoch))
    return records
