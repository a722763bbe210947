"""``polytask analyze``: which tasks belong together, from the measures recorded while training.

Given a run directory with ``relations.json`` (see :mod:`polytask.analysis.relations`) it reads
the measures; given an experiment directory it analyses each of its runs that recorded them; given
a YAML config it first trains it with ``training.relations`` on (the config's first model,
balancer and seed, no single-task baselines: a relationship run, not a comparison), then analyses
that run. Each analysed run gets ``<run_dir>/analysis.json`` (version 1; the report reads it)::

    {
      "version": 1,
      "run_dir": "...", "tasks": [...], "epochs": [...], "threshold": 0.0,
      "measures": {
        "<measure>": {
          "description": "...", "space": "parameters" | "representation", "directed": bool,
          "affinity": [[v or null] * T] * T,      # mean over epochs (Relations.affinity)
          "symmetric": [[v or null] * T] * T,     # (A + Aᵀ) / 2, what the clustering reads
          "records": n,                            # recorded steps behind it
          "clustering": {"order": [...], "clusters": [[...], ...], "threshold": t,
                         "merges": [{"left": [...], "right": [...], "mean_affinity": v}],
                         "linkage": [[...]], "distance_offset": c}
                        | {"error": "why there is none"}   # absent for conflict_frequency
        }, ...
      },
      "pairs": [{"tasks": [a, b],
                 "<measure>": {"mean": v, "std": v, "epochs": n,   # of the symmetric value
                               "a_to_b": v, "b_to_a": v}}, ...],   # directed measures only
      "loss_ratio": {"per_epoch": [{task: v}], "final": {task: v}},
      "counts": {...},                             # relations.json's counts
      "warnings": ["..."]                          # e.g. pairs without evidence
    }

Mean ± std are over epochs (each epoch's mean over its records). The flat clusters are the groups
whose average pairwise (symmetrised) affinity is at least ``threshold`` (:mod:`.cluster`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from polytask.analysis.cluster import cluster_tasks, symmetrize
from polytask.analysis.relations import FILE_NAME, Relations, read_relations

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "ANALYSIS_FILE",
    "AnalyzeError",
    "RelationsTraining",
    "RunAnalysis",
    "analyze",
    "analyze_config",
    "analyze_directory",
    "analyze_run",
    "format_analysis",
]

ANALYSIS_FILE = "analysis.json"
FORMAT_VERSION = 1
_HOW_TO_RECORD = (
    "record them by adding `relations: {every: 10}` under `training:` in the config and running "
    "`polytask train CONFIG.yaml`, or run `polytask analyze CONFIG.yaml`, which trains the config "
    "with them on"
)


class AnalyzeError(ValueError):
    """Nothing to analyse, or a target that is neither a run, an experiment nor a config."""


@dataclass(frozen=True)
class RunAnalysis:
    """One analysed run: its directory and the content written to its ``analysis.json``."""

    run_dir: Path
    payload: dict[str, Any]

    @property
    def path(self) -> Path:
        return self.run_dir / ANALYSIS_FILE


class RelationsTraining(TypedDict, total=False):
    """How :func:`analyze_config` trains a config first; a run or experiment directory uses none.

    One declaration of these options for :func:`analyze` and :func:`analyze_config` alike:
    ``out`` the run directory (default ``<output_dir>/<name>-relations``), ``epochs`` shortens
    training, ``overwrite`` starts a run directory that holds runs over, ``log`` takes progress.
    """

    out: Path | None
    epochs: int | None
    overwrite: bool
    log: Callable[[str], None]


def analyze(
    target: str | Path, *, threshold: float = 0.0, **options: Unpack[RelationsTraining]
) -> list[RunAnalysis]:
    """Analyse a run directory, an experiment directory, or a config (trained first)."""
    path = Path(target)
    if path.is_dir():
        return analyze_directory(path, threshold=threshold)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return analyze_config(path, threshold=threshold, **options)
    raise AnalyzeError(
        f"{path} is neither a run directory, an experiment directory nor a YAML config"
        + ("" if path.exists() else " (it does not exist)")
    )


def analyze_directory(directory: Path, *, threshold: float = 0.0) -> list[RunAnalysis]:
    """The run itself when it holds ``relations.json``, else each run below it that does."""
    if (directory / FILE_NAME).exists() or (directory / "tasks.json").exists():
        return [analyze_run(directory, threshold=threshold)]
    runs = sorted(p.parent for p in directory.glob(f"*/{FILE_NAME}"))
    if runs:
        return [analyze_run(r, threshold=threshold) for r in runs]
    raise AnalyzeError(
        f"{directory} holds no run with recorded relationship measures ({FILE_NAME}); "
        + _HOW_TO_RECORD
    )


def analyze_run(run_dir: str | Path, *, threshold: float = 0.0) -> RunAnalysis:
    """Read ``run_dir``'s ``relations.json``, cluster every measure, write ``analysis.json``."""
    run_dir = Path(run_dir)
    tasks_file = run_dir / "tasks.json"
    if tasks_file.exists():
        names = [t["name"] for t in json.loads(tasks_file.read_text())]
        if len(names) < 2:
            raise AnalyzeError(
                f"run {run_dir} has a single task ({', '.join(names)}): there is nothing to relate"
            )
    if not (run_dir / FILE_NAME).exists():
        raise AnalyzeError(
            f"run {run_dir} has no {FILE_NAME}: relationship measures were not recorded; "
            + _HOW_TO_RECORD
        )
    relations = read_relations(run_dir)
    if len(relations.tasks) < 2:
        raise AnalyzeError(f"run {run_dir} has a single task: there is nothing to relate")
    if not relations.epochs:
        raise AnalyzeError(f"{relations.path} holds no finished epoch yet")
    payload = _analysis(relations, threshold)
    payload["run_dir"] = str(run_dir)
    result = RunAnalysis(run_dir, payload)
    result.path.write_text(json.dumps(_json(payload), indent=1, allow_nan=False))
    return result


def analyze_config(
    config_path: str | Path, *, threshold: float = 0.0, **options: Unpack[RelationsTraining]
) -> list[RunAnalysis]:
    """Train ``config_path`` with relations recorded, then analyse the run.

    Honors the config's data, model, training settings and ``training.relations`` (defaults when
    unset); trains its first model with its first balancer on its first seed, without single-task
    baselines. ``options`` (:class:`RelationsTraining`): ``epochs`` shortens training. A config
    with one task is refused before training.
    """
    from polytask.config import RelationsConfig, load_config
    from polytask.experiment import load_sources, planned_run_dirs, run_experiment

    out, epochs = options.get("out"), options.get("epochs")
    overwrite, log = options.get("overwrite", False), options.get("log", print)
    config = load_config(config_path)
    training = config.training.model_copy(
        update={
            "relations": config.training.relations or RelationsConfig(),
            **({"epochs": epochs} if epochs is not None else {}),
        }
    )
    update: dict[str, Any] = {
        "training": training,
        "seeds": config.seeds[:1],
        "balancers": config.balancers[:1],
        "baselines": config.baselines.model_copy(update={"stl": False, "model": None}),
    }
    if config.models is not None:
        update.update(model=config.models[0], models=None)
    short = config.model_copy(update=update)
    if config.data.table is not None and len(config.data.targets) < 2:
        raise AnalyzeError(
            f"{config_path} has a single task ({config.data.targets[0]}): there is nothing to relate"
        )
    splits, sources = load_sources(short, short.seeds[0])
    if len(splits.tasks) < 2:
        raise AnalyzeError(
            f"{config_path} has a single task ({splits.tasks[0].name}): there is nothing to relate"
        )
    target = out or Path(config.output_dir) / f"{config.name}-relations"
    log(
        f"training {short.model_list[0].display} with {short.balancers[0].display} (seed "
        f"{short.seeds[0]}, {training.epochs} epochs) with relationship measures into {target}"
    )
    run_experiment(
        short, target, log=log, report=False, overwrite=overwrite,
        splits_override=splits if sources is None else None,
    )  # fmt: skip
    return [analyze_run(d, threshold=threshold) for d, _ in planned_run_dirs(short, target)]


# ---------------------------------------------------------------------------------- the content
#: The measures that are similarities (higher = belong together), hence clustered.
_SIMILARITIES = ("grad_cosine", "lookahead_affinity", "lookahead_affinity_first_order")


def _analysis(relations: Relations, threshold: float) -> dict[str, Any]:
    tasks = relations.tasks
    measures: dict[str, Any] = {}
    warnings: list[str] = []
    for name, m in relations.measures.items():
        _, mean = relations.affinity(name)
        sym = symmetrize(mean)
        entry: dict[str, Any] = {
            "description": m.description, "space": m.space, "directed": m.directed,
            "affinity": mean, "symmetric": sym, "records": int(sum(m.records)),
        }
        if name not in _SIMILARITIES:
            measures[name] = entry  # a frequency of conflicts: read beside the cosine, not clustered
            continue
        try:
            entry["clustering"] = cluster_tasks(tasks, mean, threshold).to_json()
        except ValueError as err:
            entry["clustering"] = {"error": str(err)}
            warnings.append(f"{name}: no clustering: {err}")
        measures[name] = entry
    pairs = []
    for i in range(len(tasks)):
        for j in range(i + 1, len(tasks)):
            pair: dict[str, Any] = {"tasks": [tasks[i], tasks[j]]}
            for name, m in relations.measures.items():
                per_epoch = (m.per_epoch[:, i, j] + m.per_epoch[:, j, i]) / 2
                finite = per_epoch[np.isfinite(per_epoch)]
                stats: dict[str, Any] = {
                    "mean": float(finite.mean()) if finite.size else None,
                    "std": float(finite.std(ddof=1)) if finite.size > 1 else (
                        0.0 if finite.size else None),
                    "epochs": int(finite.size),
                }
                if m.directed:
                    stats["a_to_b"] = measures[name]["affinity"][i, j]
                    stats["b_to_a"] = measures[name]["affinity"][j, i]
                pair[name] = stats
            pairs.append(pair)
    final = relations.loss_ratio[-1] if relations.loss_ratio else {}
    return {
        "version": FORMAT_VERSION,
        "tasks": tasks,
        "epochs": relations.epochs,
        "threshold": threshold,
        "measures": measures,
        "pairs": pairs,
        "loss_ratio": {"per_epoch": relations.loss_ratio, "final": final},
        "counts": relations.counts,
        "warnings": warnings,
    }


def _json(value: Any) -> Any:
    """NumPy arrays and non-finite floats as JSON (``null`` where there is no evidence)."""
    if isinstance(value, np.ndarray):
        return _json(value.tolist())
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value


# ---------------------------------------------------------------------------------- the table
_COLUMNS = {
    "grad_cosine": ("cosine", "{:+.3f}"),
    "conflict_frequency": ("conflict", "{:.0%}"),
    "lookahead_affinity": ("TAG exact", "{:+.2e}"),
    "lookahead_affinity_first_order": ("TAG 1st-order", "{:+.2e}"),
}


def format_analysis(analysis: RunAnalysis, max_pairs: int = 12) -> str:
    """A compact table: one row per task pair (the strongest and weakest when there are many),
    mean ± std over epochs of each measure, then the clusters of each measure."""
    p = analysis.payload
    names = [m for m in _COLUMNS if m in p["measures"]]
    key = "lookahead_affinity" if "lookahead_affinity" in names else names[0]
    counts = p["counts"]
    lines = [
        f"run {analysis.run_dir}: {len(p['tasks'])} tasks, {len(p['epochs'])} epochs, "
        f"{counts.get('steps_recorded', 0)} recorded steps ({counts.get('lookahead_steps', 0)} "
        f"with lookahead); pairs sorted by {key} (mean ± std over epochs)"
    ]

    def cell(stats: dict[str, Any], fmt: str) -> str:
        if stats["mean"] is None:
            return "—"
        std = stats["std"] if "%" not in fmt else None
        return fmt.format(stats["mean"]) + ("" if std is None else " ± " + fmt.format(std).lstrip("+"))

    pairs = sorted(
        p["pairs"],
        key=lambda r: -math.inf if r[key]["mean"] is None else r[key]["mean"],
        reverse=True,
    )
    shown: list[dict[str, Any] | None] = list(pairs)
    if len(pairs) > max_pairs:
        half = max_pairs // 2
        shown = [*pairs[:half], None, *pairs[-half:]]
    header = ["pair", *[_COLUMNS[m][0] for m in names]]
    rows = [
        ["...", *["" for _ in names]] if r is None
        else [f"{r['tasks'][0]} ~ {r['tasks'][1]}", *[cell(r[m], _COLUMNS[m][1]) for m in names]]
        for r in shown
    ]
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines += [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*r) for r in rows]
    lines.append(f"clusters (average linkage; groups with mean affinity >= {p['threshold']:g}):")
    for m in names:
        if "clustering" not in p["measures"][m]:
            continue
        c = p["measures"][m]["clustering"]
        text = c["error"] if "error" in c else "  ".join("{" + ", ".join(g) + "}" for g in c["clusters"])
        lines.append(f"  {_COLUMNS[m][0]}: {text}")
    final = {t: v for t, v in p["loss_ratio"]["final"].items() if v is not None}
    if final:
        lines.append(
            "loss ratio L(last epoch)/L(0): "
            + ", ".join(f"{t} {v:.2f}" for t, v in sorted(final.items(), key=lambda kv: kv[1]))
        )
    lines += [f"warning: {w}" for w in p["warnings"]]
    lines.append(f"written: {analysis.path}")
    return "\n".join(lines)

