"""The quick automatic choice: what ``polytask fit`` does by default.

Why a second, smaller advisor: a user who knows nothing about multi-task learning runs ``polytask
fit`` once and should get a model at least as good as per-task baselines, in about the time ``fit``
always took. ``fit`` already trains one shared model (equal weights) and the single-task (STL)
baselines to report Δm; those two are the candidates "all-shared" and "separate" for free. One more
candidate is trained only when the shared model helped some tasks and hurt others: the tasks it
helped share one model, the others keep their single-task models. The lowest validation Δm wins.

No budget (its cost is fixed: T + 1 trainings, T + 2 at most), one seed, no relationship
recording, no Optuna: the full search is ``polytask fit --auto`` / ``polytask advise``
(:func:`polytask.auto.advise.advise_config`). The test split is never read here.

Run directory layout (``out``): the reference exactly as ``polytask fit --fixed`` writes it
(``equal-seed<s>/``, ``stl-<task>-seed<s>/``, ``summary.json``, ``report.html``), the
helped-tasks model in ``helped/`` when it was trained, and ``advice.json``, ``grouping.json``,
``recommended*.yaml`` (``polytask train FILE`` reproduces each model of the recommendation).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from polytask.auto.advise import (
    ADVICE_FILE,
    Advice,
    _check_validation_labels,
    _normalised,
    subset_config,
)
from polytask.auto.search import (
    CandidateResult,
    HyperParams,
    Problem,
    epoch_time,
    train_reference,
    write_grouping_json,
)
from polytask.config import ExperimentConfig
from polytask.evaluation.metrics import delta_m
from polytask.experiment import load_sources, run_experiment
from polytask.tasks import Task

__all__ = ["HELPED_DIR", "quick_advise", "split_by_help"]

#: Sub-directory of the quick advice holding the model shared by the tasks sharing helped.
HELPED_DIR = "helped"


def split_by_help(
    shared_val: Mapping[str, Mapping[str, float]],
    stl_val: Mapping[str, Mapping[str, float]],
    tasks: Sequence[Task],
) -> tuple[list[str], list[str]]:
    """Tasks whose primary metric the shared model beat (strictly), and the others, in order.

    Per task the sign of its Δm term (the same definition as Δm%, so "helped" and Δm agree). A
    tie counts as not helped: sharing a task that gains nothing only adds risk.
    """
    helped: list[str] = []
    others: list[str] = []
    for task in tasks:
        gain = delta_m(shared_val, stl_val, [task])  # < 0: better than its baseline
        (helped if gain < 0 else others).append(task.name)
    return helped, others


def quick_advise(
    config: ExperimentConfig,
    *,
    seed: int = 0,
    out: Path,
    log: Callable[[str], None] = print,
    started: float | None = None,
    resume: bool = False,
    overwrite: bool = False,
    report: bool = True,
) -> Advice:
    """Shared, separate, or "helped tasks share", decided on validation Δm% of one seed.

    ``resume`` / ``overwrite`` mean what they mean for ``polytask fit --fixed``: the trainings of
    this advice (the reference and the helped-tasks model) are refused when they exist already,
    read back (``resume``: finished ones; interrupted ones continue from ``checkpoints/last.pt``)
    or trained again (``overwrite``). ``started``: a ``time.perf_counter()`` reading, the start of
    the reported time (the command line passes its own start).
    """
    started = time.perf_counter() if started is None else started
    data = config.data
    if data.split_seed is None:  # the split fit --fixed draws for this seed, written down
        config = config.model_copy(update={"data": data.model_copy(update={"split_seed": seed})})
    config = _normalised(config)
    config = config.model_copy(update={"seeds": [seed]})
    out = Path(out)
    from polytask.validation import validate_components

    validate_components(config)
    splits, _ = load_sources(config, seed)
    splits.validate()
    out.mkdir(parents=True, exist_ok=True)
    problem = Problem(config, splits, out, log)
    names = problem.names
    base = HyperParams("equal", config.training.lr, config.training.weight_decay, 1.0)
    notes: list[str] = []
    warnings: list[str] = []
    for old in out.glob("recommended*.yaml"):  # a previous advice's configs would mislead
        old.unlink()
    if len(names) == 1:
        return _single(problem, base, started, resume, overwrite, report)
    _check_validation_labels(problem)

    log(f"fit: {len(names)} tasks; one shared model (equal weights) and {len(names)} single-task "
        "baselines, then the choice on validation")
    baselines, shared = train_reference(
        problem, seed, relations=False, run_dir=out, resume=resume, overwrite=overwrite,
        report=report,
    )
    all_shared = CandidateResult([list(names)], None, "all-shared", {seed: shared.delta_m},
                                 time_per_epoch_s=shared.epoch_time_s)
    separate = CandidateResult([[n] for n in names], None, "separate", {seed: 0.0},
                               time_per_epoch_s=sum(baselines.epoch_time_s.values()))
    pool = [all_shared, separate]
    run_dirs: dict[tuple[str, ...], Path] = {tuple(names): shared.run_dir}
    run_dirs.update({(n,): d for n, d in baselines.run_dirs.items()})

    helped, others = split_by_help(shared.val, baselines.val, problem.tasks)
    notes.append(
        "the shared model against the single-task baselines on validation: "
        f"better on {_listed(helped)}; not better on {_listed(others)}"
    )
    helped_dir = out / HELPED_DIR
    if len(helped) >= 2 and others:
        log(f"fit: sharing helped {len(helped)} of {len(names)} tasks on validation; training "
            f"one shared model on them ({', '.join(helped)})")
        run_dir, val, seconds = _train_helped(problem, helped, base, seed, helped_dir, resume,
                                              overwrite)
        tasks = [t for t in problem.tasks if t.name in set(helped)]
        group_dm = delta_m(val, {n: baselines.val[n] for n in helped}, tasks)
        pool.append(CandidateResult(
            [list(helped)] + [[n] for n in others], None, "helped tasks share",
            {seed: len(helped) * group_dm / len(names)},
            time_per_epoch_s=seconds + sum(baselines.epoch_time_s[n] for n in others),
        ))
        run_dirs[tuple(helped)] = run_dir
    else:
        notes.append(
            "the \"helped tasks share\" candidate was not trained: it needs at least 2 tasks the "
            f"shared model helped and 1 it did not (here {len(helped)} and {len(others)})"
        )
        if helped_dir.exists() and not resume:
            log(f"removing {helped_dir}: a previous advice's model, not a candidate now")
            shutil.rmtree(helped_dir)

    # lowest validation Δm; a tie goes to fewer models (all-shared, then helped, then separate)
    best = min(pool, key=lambda c: (c.delta_m[seed], len(c.groups)))
    chosen = pool.index(best)
    notes.append("chosen: the lowest validation Δm% (one seed); a tie goes to fewer models")
    structure = ("all-shared" if best is all_shared else "separate" if best is separate
                 else "grouped")
    configs: list[Path] = []
    finals = []
    for k, group in enumerate(best.groups, start=1):
        path = out / ("recommended.yaml" if len(best.groups) == 1
                      else f"recommended-model{k}.yaml")
        path.write_text(subset_config(problem, group, base, stl=len(group) > 1).to_yaml())
        configs.append(path)
        finals.append({"config": str(path), "run_dir": str(run_dirs[tuple(group)]),
                       "test_delta_m": None, "reused": True})
    notes.append("every model of the recommendation was trained while deciding: its runs are the "
                 "final models (not trained again)")
    write_grouping_json(out, names, pool, chosen, extra={"mode": "quick", "seed": seed})
    advice = Advice(
        out_dir=out, tasks=names, structure=structure, groups=best.groups, hp=base,
        val_delta_m=dict(best.delta_m), time_per_epoch_s=best.time_per_epoch_s, candidates=pool,
        chosen=chosen, trials=[], balancers=[], configs=configs, final=finals, budget_s=None,
        elapsed_s=time.perf_counter() - started, notes=notes, warnings=warnings,
    )
    (out / ADVICE_FILE).write_text(json.dumps({**advice.to_json(), "mode": "quick"}, indent=1))
    return advice


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "no task"


def _train_helped(
    problem: Problem, helped: list[str], hp: HyperParams, seed: int, out: Path, resume: bool,
    overwrite: bool,
) -> tuple[Path, dict[str, dict[str, float]], float]:
    """One shared model on ``helped``, from the config the recommendation would write.

    Trained by ``run_experiment`` on the problem's own rows (the same split as the baselines), so
    its run directory is a complete run (``polytask predict`` / ``evaluate`` read it). Returns the
    run directory, its validation metrics and its mean epoch time.
    """
    config = subset_config(problem, helped, hp, stl=False)
    result = run_experiment(
        config.model_copy(update={"seeds": [seed]}), out, log=problem.log,
        splits_override=problem.subset(helped), report=False, resume=resume, overwrite=overwrite,
    )
    run = next(r for r in result.runs if r.kind == "mtl")
    return run.run_dir, run.val, epoch_time(run.run_dir)


def _single(
    problem: Problem, hp: HyperParams, started: float, resume: bool, overwrite: bool,
    report: bool,
) -> Advice:
    """One target: nothing to share; its single model is trained once (no baseline twin)."""
    name = problem.names[0]
    problem.log(f"fit: a single task ({name}): nothing to share; training its model")
    config = problem.config.model_copy(
        update={"baselines": problem.config.baselines.model_copy(update={"stl": False})}
    )
    result = run_experiment(config, problem.out_dir, log=problem.log,
                            splits_override=problem.splits, report=report, resume=resume,
                            overwrite=overwrite)
    path = problem.out_dir / "recommended.yaml"
    path.write_text(subset_config(problem, [name], hp, stl=False).to_yaml())
    advice = Advice(
        out_dir=problem.out_dir, tasks=[name], structure="single-task", groups=[[name]], hp=hp,
        val_delta_m={}, time_per_epoch_s=epoch_time(result.runs[0].run_dir), candidates=[],
        chosen=None, trials=[], balancers=[], configs=[path],
        final=[{"config": str(path), "run_dir": str(result.runs[0].run_dir),
                "test_delta_m": None, "reused": True}],
        budget_s=None, elapsed_s=time.perf_counter() - started,
        notes=[f"a single task ({name}): nothing to share; trained as configured"],
    )
    (problem.out_dir / ADVICE_FILE).write_text(
        json.dumps({**advice.to_json(), "mode": "quick"}, indent=1)
    )
    return advice
