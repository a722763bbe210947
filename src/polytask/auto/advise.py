"""``polytask advise`` and ``polytask fit --auto``: one shared model, groups, or separate models?

Why: the benchmarks (docs/results.md) show a tuned equal-weights model is best or tied almost
everywhere, and that sharing hurts on some data sets (QM8, QM9, MultiMNIST). A user who knows none
of this should get, within a time budget, the better of sharing, grouping and separate models for
*their* data, decided on the validation split only, with the evidence printed.

The procedure (every step launched only when its cost, estimated from the trainings already
timed, plus the reserve kept for the final training fits the budget):

1. a quick timing (one epoch of the shared model); a budget too small for the smallest advice
   (one shared model, the single-task baselines and the final training) is refused with the
   measured minimum;
2. the reference on seed 0: one shared model with equal weights recording the task relationship
   measures, plus the single-task (STL) baselines (cached): candidates "all-shared" and
   "separate";
3. the grouping search (:mod:`polytask.analysis.grouping`) on the recorded TAG affinities; the
   best few partitions are trained (one model per group);
4. a second seed of the reference and of the best partitions (validation Δm as mean ± std);
5. for a structure with shared models: Optuna over lr, weight decay and width with equal weights
   (TPE seeded, median pruner on per-epoch validation Δm), then the best point with a few cheap
   balancers (uncertainty, DWA): tuned equal weights are always among the candidates;
6. the recommendation is written as config YAML(s) (one per model) and trained once with
   ``run_experiment``, exactly what ``polytask train`` does with them.

Outputs in the advice directory: ``grouping.json`` (the partitions compared), ``advice.json``
(everything tried, the evidence, the budget accounting), ``recommended*.yaml``, ``final/``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polytask.analysis.grouping import GroupingError, partition_score, search_groupings
from polytask.analysis.relations import RelationsError, read_relations
from polytask.auto.budget import Budget, BudgetError, format_seconds
from polytask.auto.search import (
    Baselines,
    CandidateResult,
    HyperParams,
    Problem,
    TrialRecord,
    epoch_time,
    partition_epoch_time,
    run_partition,
    train_reference,
    tune,
    width_option,
    write_grouping_json,
)
from polytask.config import ExperimentConfig, load_config, parse_config
from polytask.data import is_multisource
from polytask.experiment import load_sources, run_experiment
from polytask.training import fit

__all__ = [
    "CHEAP_BALANCERS",
    "Advice",
    "AdviceError",
    "advise",
    "advise_config",
    "subset_config",
    "table_config",
]

#: Balancers tried at the tuned point besides equal weights: loss-based, no per-task gradients.
CHEAP_BALANCERS = ("uncertainty", "dwa")
ADVICE_FILE = "advice.json"


class AdviceError(ValueError):
    """Input the advisor cannot decide on (named: the task, the file, the setting)."""


@dataclass
class Advice:
    """The recommendation, its validation evidence and what was tried to get there."""

    out_dir: Path
    tasks: list[str]
    structure: str  # all-shared | grouped | separate | single-task
    groups: list[list[str]]
    hp: HyperParams
    val_delta_m: dict[int, float]
    time_per_epoch_s: float | None
    candidates: list[CandidateResult]
    chosen: int | None
    trials: list[TrialRecord]
    balancers: list[dict[str, Any]]
    configs: list[Path]
    final: list[dict[str, Any]]
    budget_s: float | None  # None: the quick choice (polytask fit's default) has no budget
    elapsed_s: float
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def evidence(self) -> tuple[float | None, float | None]:
        values = list(self.val_delta_m.values())
        if not values:
            return None, None
        mean = sum(values) / len(values)
        std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
               if len(values) > 1 else None)
        return mean, std

    def to_json(self) -> dict[str, Any]:
        mean, std = self.evidence()
        return {
            "tasks": self.tasks, "structure": self.structure, "groups": self.groups,
            "hyper_parameters": self.hp.to_json(),
            "val_delta_m": mean, "val_delta_m_std": std,
            "val_delta_m_per_seed": {str(k): v for k, v in sorted(self.val_delta_m.items())},
            "time_per_epoch_s": self.time_per_epoch_s,
            "candidates": [c.to_json() for c in self.candidates], "chosen": self.chosen,
            "trials": [t.to_json() for t in self.trials], "balancers": self.balancers,
            "configs": [str(p) for p in self.configs], "final": self.final,
            "budget_s": self.budget_s, "elapsed_s": self.elapsed_s,
            "notes": self.notes, "warnings": self.warnings,
        }

    def format(self) -> str:
        """What the command prints: the recommendation first, then its evidence."""
        mean, std = self.evidence()
        groups = "  ".join("{" + ", ".join(g) + "}" for g in self.groups)
        dm = "—" if mean is None else (
            f"{mean:+.2f}%" + (f" ± {std:.2f}" if std is not None else "")
            + f" (seeds {sorted(self.val_delta_m)})"
        )
        lines = [
            f"recommendation: {self.structure} — {len(self.groups)} model(s): {groups}",
            f"  balancer {self.hp.balancer}, lr {self.hp.lr:.3g}, weight decay "
            f"{self.hp.weight_decay:g}, width x{self.hp.width:g}",
            f"  validation Δm vs single-task baselines: {dm} (lower is better)",
        ]
        if self.time_per_epoch_s is not None:
            lines.append(f"  time per epoch (all its models): {self.time_per_epoch_s:.2f}s")
        if self.candidates:
            lines.append("structures compared (validation Δm%, mean ± std over seeds):")
            for k, c in enumerate(self.candidates):
                m, s = c.mean_std()
                shown = "not trained (budget)" if m is None else (
                    f"{m:+.2f}" + (f" ± {s:.2f}" if s is not None else "") + f" on {len(c.delta_m)} seed(s)"
                )
                mark = "*" if k == self.chosen else " "
                score = "" if c.score is None else f", affinity score {c.score:+.3g}"
                gs = " ".join("{" + ",".join(g) + "}" for g in c.groups)
                lines.append(f" {mark} {c.label}: {shown}{score}; {gs}")
        if self.trials:
            done = [t for t in self.trials if t.state == "complete"]
            lines.append(
                f"hyper-parameter trials (Optuna, equal weights, seed 0): {len(self.trials)} "
                f"({len(done)} complete, {len(self.trials) - len(done)} pruned)"
            )
        for b in self.balancers:
            value = "—" if b["val_delta_m"] is None else f"{b['val_delta_m']:+.2f}"
            lines.append(f"  balancer {b['balancer']}: validation Δm {value} (seed 0)")
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append("config(s) reproducing it (polytask train FILE):")
        lines += [f"  {p}" for p in self.configs]
        for f in self.final:
            how = "trained during the search" if f.get("reused") else "trained from it"
            lines.append(f"final model of {Path(f['config']).name} ({how}): {f['run_dir']}")
        if self.budget_s is None:
            lines.append(f"time: {format_seconds(self.elapsed_s)} (the quick choice: no budget); "
                         f"details: {self.out_dir / ADVICE_FILE}")
        else:
            used = 100 * self.elapsed_s / self.budget_s
            lines.append(
                f"time: {format_seconds(self.elapsed_s)} of a {format_seconds(self.budget_s)} "
                f"budget ({used:.0f}%); details: {self.out_dir / ADVICE_FILE}"
            )
        return "\n".join(lines)


# ------------------------------------------------------------------------------- entry points
def table_config(
    table: Path, targets: Sequence[str], kinds: dict[str, str] | None = None,
    epochs: int = 30, hidden: Sequence[int] = (256, 128),
) -> ExperimentConfig:
    """The config ``polytask fit`` would train for a table (MLP trunk, equal weights)."""
    if not targets:
        raise AdviceError(f"{table}: a table needs its target columns (--target, repeatable)")
    return parse_config({
        "name": Path(table).stem,
        "data": {"table": str(table), "targets": list(targets), "kinds": dict(kinds or {})},
        "model": {"trunk": "mlp", "trunk_options": {"hidden": list(hidden)}},
        "training": {"epochs": epochs, "progress": False},
    })


def advise(
    target: str | Path,
    budget_s: float,
    *,
    targets: Sequence[str] | None = None,
    kinds: dict[str, str] | None = None,
    epochs: int | None = None,
    out: Path | None = None,
    log: Callable[[str], None] = print,
    started: float | None = None,
    **options: Any,
) -> Advice:
    """Advise on a YAML config or a table (CSV / Parquet with ``targets``) within ``budget_s``.

    ``started``: the ``time.perf_counter()`` reading the budget counts from (the command line
    passes its own start, so that imports and data loading are paid from the budget too).
    """
    started = time.perf_counter() if started is None else started
    path = Path(target)
    if not path.is_file():
        raise AdviceError(f"{path} does not exist (expected a YAML config or a CSV/Parquet table)")
    if path.suffix in (".yaml", ".yml"):
        if targets:
            raise AdviceError("--target applies to a table; a config names its data itself")
        config = load_config(path)
    else:
        config = table_config(path, targets or [], kinds)
    if epochs is not None:
        config = config.model_copy(
            update={"training": config.training.model_copy(update={"epochs": epochs})}
        )
    return advise_config(config, budget_s, out=out, log=log, started=started, **options)


def _normalised(config: ExperimentConfig) -> ExperimentConfig:
    """The base of every training: the first model, equal weights, a fixed split, quiet."""
    if config.data.sources is not None or (
        config.data.dataset is not None and is_multisource(config.data.dataset)
    ):
        raise AdviceError(
            "advise works on one data set or one table; this config trains several data sets "
            f"({'data.sources' if config.data.sources is not None else config.data.dataset}), "
            "whose grouping would change which sources feed each model"
        )
    data = config.data.model_copy(
        update={"split_seed": config.data.split_seed if config.data.split_seed is not None else 0}
    )
    training = config.training.model_copy(
        update={"progress": False, "tensorboard": False, "relations": None, "sampling": None}
    )
    return config.model_copy(update={
        "data": data, "training": training, "model": config.model_list[0], "models": None,
        "balancers": [config.balancers[0].model_copy(
            update={"name": "equal", "options": {}, "label": None})],
        "baselines": config.baselines.model_copy(update={"stl": True, "model": None}),
        "seeds": [0], "summary_metrics": [],
    })


def _check_validation_labels(problem: Problem) -> None:
    val = problem.splits.val
    empty = [
        t.name for t in problem.tasks if not bool(t.label_mask(val.targets[t.name]).any())
    ]
    if empty:
        raise AdviceError(
            f"task(s) {empty} have no labelled row in the validation split ({len(val)} rows): "
            "the advice is decided on validation only; label some of their rows, or leave these "
            "targets out"
        )


def subset_config(
    problem: Problem, group: Sequence[str], hp: HyperParams, stl: bool
) -> ExperimentConfig:
    """The config of one model of the recommendation: its tasks only, the chosen settings."""
    c = problem.config
    data = c.data
    if len(group) < len(problem.names):
        if data.images is not None:  # the inputs are the images: only the labels change
            data = data.model_copy(update={
                "targets": list(group), "kinds": {k: v for k, v in data.kinds.items() if k in group},
            })
        elif data.table is not None:
            features = data.features or problem.splits.info.get("preprocessing", {}).get("features")
            if features is None:
                raise AdviceError(
                    f"{data.table}: cannot tell its feature columns apart from the other targets; "
                    "give data.features"
                )
            data = data.model_copy(update={
                "targets": list(group), "features": list(features),
                "kinds": {k: v for k, v in data.kinds.items() if k in group},
            })
        else:
            data = data.model_validate({
                "sources": [{"dataset": data.dataset, "options": data.options,
                             "tasks": list(group)}],
                "split_seed": data.split_seed,
            })
    name = c.name if len(group) == len(problem.names) else f"{c.name}-{'+'.join(group)}"[:80]
    return c.model_copy(update={
        "name": name, "data": data, "training": hp.training(c.training),
        "model": hp.model(c.model_list[0]),
        "balancers": [c.balancers[0].model_copy(update={"name": hp.balancer})],
        "baselines": c.baselines.model_copy(update={"stl": stl}),
    })


def _quick_timing(problem: Problem) -> float:
    """Seconds of one epoch (training + validation) of the shared model, measured here."""
    from polytask.balancing import create_balancer
    from polytask.experiment import build_model

    c = problem.config
    run_dir = problem.out_dir / "search" / "timing"
    shutil.rmtree(run_dir, ignore_errors=True)
    model = build_model(c, problem.tasks, problem.splits.train.example(), c.model_list[0],
                        problem.splits.info)
    settings = c.training.model_copy(update={"epochs": 1}).settings(0)
    fit(model, problem.splits, create_balancer("equal", problem.names), settings, run_dir)
    return epoch_time(run_dir)


def advise_config(
    config: ExperimentConfig,
    budget_s: float,
    *,
    out: Path | None = None,
    log: Callable[[str], None] = print,
    seeds: Sequence[int] = (0, 1),
    candidates: int = 3,
    max_trials: int = 20,
    final: bool = True,
    started: float | None = None,
) -> Advice:
    """Decide between one shared model, groups and separate models for ``config``'s data.

    ``seeds``: the seeds of the validation evidence (the first is also the search seed).
    ``candidates``: partitions from the grouping search that are trained. ``final``: train the
    written config(s) once at the end (counted in the budget). ``started``: when the budget
    began (default: now).
    """
    budget = Budget(budget_s, time.perf_counter() if started is None else started)
    config = _normalised(config)
    out_dir = Path(out or Path(config.output_dir) / f"{config.name}-advice")
    out_dir.mkdir(parents=True, exist_ok=True)
    from polytask.validation import validate_components

    validate_components(config)
    splits, _ = load_sources(config, 0)
    splits.validate()
    problem = Problem(config, splits, out_dir, log)
    notes: list[str] = []
    warnings: list[str] = []
    if len(problem.names) == 1:
        return _single_task(problem, budget, final)
    _check_validation_labels(problem)
    names, t_count = problem.names, len(problem.names)
    epochs = config.training.epochs
    base = HyperParams("equal", config.training.lr, config.training.weight_decay, 1.0)

    # 1. quick timing, and the smallest advice that fits
    t1 = _quick_timing(problem)
    rows = len(splits.train)
    fractions = {
        t.name: max(0.05, float(t.label_mask(splits.train.targets[t.name])
                                .reshape(rows, -1).any(dim=1).float().mean()))
        for t in problem.tasks
    }
    shared_est = epochs * t1
    stl_est = sum(epochs * t1 * f for f in fractions.values())
    # the reference (shared + baselines); either of them, chosen, is already the final model
    minimum = budget.elapsed() + shared_est + stl_est
    if minimum > budget.seconds:
        raise BudgetError(
            f"a budget of {format_seconds(budget.seconds)} is too small: the smallest advice (one "
            f"shared model and {t_count} single-task baselines, {epochs} epochs each) needs "
            f"about {format_seconds(minimum)} here (one epoch of the shared "
            f"model measured at {t1:.2f}s); give --budget {math.ceil(minimum * 1.2)}s or more, or "
            "fewer --epochs"
        )
    log(f"advise: {t_count} tasks, budget {format_seconds(budget.seconds)}; one epoch of the "
        f"shared model takes {t1:.2f}s here")

    # 2. the reference: all-shared (recording relations) + single-task baselines, seed 0
    s0 = seeds[0]
    phase = time.perf_counter()
    baselines: dict[int, Baselines] = {}
    baselines[s0], shared0 = train_reference(problem, s0, relations=True)
    # a cached baseline costs nothing now but would on another seed: count its training time
    reference_cost = max(time.perf_counter() - phase,
                         shared0.time_s + sum(baselines[s0].time_s.values()))
    model_cost = shared0.time_s  # one shared model, E epochs: the unit of the estimates
    stl_total = sum(baselines[s0].time_s.values())
    all_shared = CandidateResult(
        [list(names)], None, "all-shared", {s0: shared0.delta_m},
        time_per_epoch_s=shared0.epoch_time_s,
    )
    separate = CandidateResult(
        [[n] for n in names], None, "separate", {s0: 0.0},
        time_per_epoch_s=sum(baselines[s0].epoch_time_s.values()),
    )
    pool = [all_shared, separate]

    # 3. grouping search on the recorded affinities
    try:
        relations = read_relations(shared0.run_dir)
        measure = "lookahead_affinity" if "lookahead_affinity" in relations.measures else "grad_cosine"
        order, affinity = relations.affinity(measure)
        if order != names:
            raise GroupingError(f"relations.json lists tasks {order}, the data has {names}")
        all_shared.score = partition_score(names, affinity, [list(names)])
        separate.score = 0.0
        found = search_groupings(names, affinity, k=candidates + 2)
        for p in found:
            if 1 < len(p.groups) < t_count and len(pool) < candidates + 2:
                pool.append(CandidateResult(p.groups, p.score, f"grouped #{len(pool) - 1}"))
        notes.append(f"grouping search on {measure} (mean over {len(relations.epochs)} epochs)")
    except (GroupingError, RelationsError) as err:
        warnings.append(f"no grouping search: {err}; compared all-shared and separate only")

    def models_cost(c: CandidateResult) -> float:
        multi = [g for g in c.groups if len(g) > 1]
        return model_cost * len(multi)

    def final_reserve(tuned: bool) -> float:
        """The final training of the costliest structure still in play.

        One model per group; the baselines come from the cache only for the all-shared model at
        the base settings: a group's config names other data (its targets), and tuned settings
        change the baselines' key, so their single-task models are trained again.
        """
        if not final:
            return 0.0
        return max(
            (model_cost + stl_total if tuned else 0.0) if len(c.groups) == 1
            else 0.0 if c is separate  # its models are the baselines already trained
            else models_cost(c) + stl_total
            for c in pool
        )

    for k, c in enumerate(pool[2:], start=2):
        if not budget.fits(models_cost(c), final_reserve(False)):
            warnings.append(f"{c.label} not trained: the budget would not cover it")
            continue
        dm, done = run_partition(problem, c.groups, s0, base, baselines[s0],
                                 out_dir / "search" / f"candidate{k}")
        c.delta_m[s0] = dm
        c.time_per_epoch_s = partition_epoch_time(c.groups, done, baselines[s0])

    # 4. a second seed for the spread
    for s in seeds[1:]:
        if not budget.fits(reference_cost, final_reserve(False)):
            notes.append(f"seed {s} not run: the budget would not cover it (std needs 2 seeds)")
            break
        baselines[s], shared = train_reference(problem, s, relations=False)
        all_shared.delta_m[s] = shared.delta_m
        separate.delta_m[s] = 0.0
        trained = sorted((c for c in pool[2:] if c.delta_m), key=lambda c: c.delta_m[s0])
        for c in trained:
            if not budget.fits(models_cost(c), final_reserve(False)):
                break
            c.delta_m[s], _ = run_partition(problem, c.groups, s, base, baselines[s],
                                            out_dir / "search" / f"candidate{pool.index(c)}")

    # the structure: lowest mean validation Δm on the seeds every trained candidate has
    trained = [c for c in pool if c.delta_m]
    common = sorted(set.intersection(*(set(c.delta_m) for c in trained)))
    best = min(trained, key=lambda c: (c.mean_std(common)[0], len(c.groups)))
    chosen = pool.index(best)
    hp, evidence = base, dict(best.delta_m)
    trials: list[TrialRecord] = []
    balancers: list[dict[str, Any]] = []
    multi = [g for g in best.groups if len(g) > 1]

    # 5. hyper-parameters and balancer for the shared model(s): of the chosen structure, or,
    # when separate models won at the base settings, of the best structure that shares, which
    # replaces them only if, tuned, it beats them on validation
    contender = best if best is not separate else min(
        (c for c in trained if c is not separate), key=lambda c: c.mean_std(common)[0],
        default=None,
    )  # fmt: skip
    if contender is not None:
        if width_option(config.model_list[0]) is None:
            notes.append(f"trunk {config.model_list[0].trunk!r}: its width is not searched")
        trials = tune(
            problem, contender.groups, baselines[s0], base, budget,
            trial_cost=models_cost(contender), reserve=lambda: final_reserve(True),
            max_trials=max_trials, seed=s0,
        )
        point, point_dm, point_time = base, contender.delta_m[s0], contender.time_per_epoch_s
        for trial in trials:  # the base point stays unless a trial beats it on validation
            if trial.delta_m is not None and trial.delta_m < point_dm:
                point, point_dm, point_time = trial.hp, trial.delta_m, trial.time_per_epoch_s
        balancers.append({"balancer": "equal", **point.to_json(), "val_delta_m": point_dm,
                          "time_per_epoch_s": point_time})
        for name in CHEAP_BALANCERS:
            candidate = HyperParams(name, point.lr, point.weight_decay, point.width)
            if not budget.fits(models_cost(contender), final_reserve(True)):
                balancers.append({**candidate.to_json(), "val_delta_m": None,
                                  "skipped": "budget"})
                continue
            dm, runs = run_partition(problem, contender.groups, s0, candidate, baselines[s0],
                                     out_dir / "search" / f"balancer-{name}")
            balancers.append({**candidate.to_json(), "val_delta_m": dm, "time_per_epoch_s":
                              partition_epoch_time(contender.groups, runs, baselines[s0])})
        tried = [b for b in balancers if b["val_delta_m"] is not None]
        winner = min(tried, key=lambda b: b["val_delta_m"])
        tuned = HyperParams(
            winner["balancer"], winner["lr"], winner["weight_decay"], winner["width"]
        )
        tuned_evidence = dict(contender.delta_m)
        if tuned != base:
            tuned_evidence = {s0: winner["val_delta_m"]}
            for s in seeds[1:]:
                if s in baselines and budget.fits(models_cost(contender), final_reserve(True)):
                    tuned_evidence[s], _ = run_partition(
                        problem, contender.groups, s, tuned, baselines[s],
                        out_dir / "search" / f"tuned-seed{s}",
                    )
        tuned_mean = sum(tuned_evidence.values()) / len(tuned_evidence)
        tuned_candidate = CandidateResult(
            contender.groups, contender.score,
            f"{contender.label}, tuned ({tuned.balancer}, lr {tuned.lr:.3g}, wd "
            f"{tuned.weight_decay:g}, width x{tuned.width:g})",
            dict(tuned_evidence), time_per_epoch_s=winner["time_per_epoch_s"],
        )
        if tuned != base:
            pool.append(tuned_candidate)
        if best is not separate:
            hp, evidence = tuned, tuned_evidence
            if tuned != base:
                best, chosen = tuned_candidate, len(pool) - 1
        elif tuned_mean < 0.0:  # separate models have Δm 0 on every seed by definition
            notes.append(
                f"separate models won at the base settings; {contender.label} tuned "
                f"({tuned.balancer}, lr {tuned.lr:.3g}) beat them on validation "
                f"({tuned_mean:+.2f}% over seeds {sorted(tuned_evidence)}) and replaces them"
            )
            hp, evidence = tuned, tuned_evidence
            best = tuned_candidate if tuned != base else contender
            chosen = pool.index(best)
            multi = [g for g in best.groups if len(g) > 1]
        elif len(tried) == 1 and not any(t.state == "complete" for t in trials):
            notes.append(
                f"separate models won; the budget did not cover tuning the best sharing "
                f"structure ({contender.label}: {tuned_mean:+.2f}% at the base settings)"
            )
        else:
            notes.append(
                f"separate models won; the best sharing structure ({contender.label}), tuned, "
                f"stayed behind them on validation ({tuned_mean:+.2f}% over seeds "
                f"{sorted(tuned_evidence)})"
            )
    else:
        notes.append("separate models won and no sharing structure was trained: nothing to tune "
                     "(the single-task models keep the config's settings)")

    # 6. configs and the final training
    groups = best.groups
    structure = ("all-shared" if len(groups) == 1 else
                 "separate" if not multi else "grouped")
    configs = []
    for k, g in enumerate(groups, start=1):
        sub = subset_config(problem, g, hp, stl=len(g) > 1)
        path = out_dir / ("recommended.yaml" if len(groups) == 1 else f"recommended-model{k}.yaml")
        path.write_text(sub.to_yaml())
        configs.append(path)
    write_grouping_json(out_dir, names, pool, chosen, extra={"measure_notes": notes})
    finals = []
    if hp == base and structure in ("all-shared", "separate"):
        # the reference runs are this configuration (recording relations leaves the parameters
        # unchanged): they are the final models, and the config(s) reproduce them
        dirs = ([shared0.run_dir] if structure == "all-shared"
                else [baselines[s0].run_dirs[g[0]] for g in groups])
        finals = [{"config": str(p), "run_dir": str(d), "test_delta_m": None, "reused": True}
                  for p, d in zip(configs, dirs, strict=True)]
        notes.append("the recommendation is the reference configuration trained during the "
                     "search: its runs are the final models (not trained again)")
    elif final:
        for path in configs:
            result = run_experiment(load_config(path), out_dir / "final" / path.stem, log=log,
                                    report=False, overwrite=True)
            mtl = [r for r in result.runs if r.kind == "mtl"]
            finals.append({"config": str(path), "run_dir": str(mtl[0].run_dir),
                           "test_delta_m": mtl[0].delta_m})
    advice = Advice(
        out_dir=out_dir, tasks=names, structure=structure, groups=groups, hp=hp,
        val_delta_m=evidence, time_per_epoch_s=best.time_per_epoch_s, candidates=pool,
        chosen=chosen, trials=trials, balancers=balancers, configs=configs, final=finals,
        budget_s=budget.seconds, elapsed_s=budget.elapsed(), notes=notes, warnings=warnings,
    )
    (out_dir / ADVICE_FILE).write_text(json.dumps(advice.to_json(), indent=1))
    return advice


def _single_task(problem: Problem, budget: Budget, final: bool) -> Advice:
    """One task: nothing to group or balance; its single model is trained as configured."""
    name = problem.names[0]
    problem.log(f"advise: a single task ({name}): nothing to group; training its single-task model")
    hp = HyperParams("equal", problem.config.training.lr, problem.config.training.weight_decay)
    path = problem.out_dir / "recommended.yaml"
    path.write_text(subset_config(problem, [name], hp, stl=False).to_yaml())
    finals = []
    if final:
        result = run_experiment(load_config(path), problem.out_dir / "final" / path.stem,
                                log=problem.log, report=False, overwrite=True)
        finals.append({"config": str(path), "run_dir": str(result.runs[0].run_dir),
                       "test_delta_m": None})
    advice = Advice(
        out_dir=problem.out_dir, tasks=[name], structure="single-task", groups=[[name]], hp=hp,
        val_delta_m={}, time_per_epoch_s=None, candidates=[], chosen=None, trials=[],
        balancers=[], configs=[path], final=finals, budget_s=budget.seconds,
        elapsed_s=budget.elapsed(),
        notes=[f"a single task ({name}): nothing to group or to balance; trained as configured"],
    )
    (problem.out_dir / ADVICE_FILE).write_text(json.dumps(advice.to_json(), indent=1))
    return advice
