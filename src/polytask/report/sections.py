"""The report's sections: from a run's or an experiment's data to headings, tables and figure specs.

Why here and not in the templates: what to show (which curves, which summaries over many tasks,
which cell is best) is the report's logic and is tested as data; the templates only lay it out.
Figures are :mod:`polytask.report.figures` specs, drawn later as plotly or PNG.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from polytask.report import figures as fig
from polytask.report.data import (
    CONFIG_FILE,
    EXPERIMENT_FILE,
    METRICS_FILE,
    RESULTS_FILE,
    STL_KEY_FILE,
    WEIGHTS_FILE,
    ExperimentData,
    Grouping,
    OptionalFile,
    Relations,
    RunData,
    finite,
)
from polytask.report.page import (
    Cell,
    Details,
    Facts,
    Image,
    Page,
    Preformatted,
    Table,
    Text,
    slug,
)

__all__ = [
    "MANY_TASKS",
    "experiment_page",
    "format_delta_m",
    "format_seconds",
    "format_value",
    "run_page",
]

MANY_TASKS = 12
"""Above this many tasks the report summarises over tasks instead of drawing each task.

Why: one panel, line, bar or column per task is readable for a handful of tasks, but with 139
(School) the figures take minutes to draw and cannot be read anyway. Past this count the figures
show the mean, median and spread over tasks, the few best and worst tasks, and a histogram of the
per-task values, and the page says so; the per-task numbers stay in the tables (collapsed).
"""
_EXTREME_TASKS = 3  # how many best and worst tasks get their own panel when summarising
_RAW_POINTS_PER_TASK = 4000
_WARNING_PREFIX = "warning/"
_NOT_CURVES = ("labelled",)  # label counts per split: in the tables, not worth a panel

_MEASURE_TITLES = {
    "grad_cosine": "Gradient cosine similarity",
    "conflict_frequency": "Gradient conflict frequency (cos < 0)",
    "lookahead_affinity": "Lookahead affinity (exact)",
    "lookahead_affinity_first_order": "Lookahead affinity (first-order approximation)",
}
_CENTERED_MEASURES = {"grad_cosine", "lookahead_affinity", "lookahead_affinity_first_order"}


# ---------------------------------------------------------------------------------- formatting
def format_value(value: object) -> str:
    """A metric value: 4 decimals in the usual range, 4 significant digits outside it."""
    number = finite(value)
    if number is None:
        return "—"
    if number == 0:
        return "0"
    if 1e-3 <= abs(number) < 1e4:
        return f"{number:.4f}"
    return f"{number:.4g}"


def format_delta_m(value: object) -> str:
    """Δm in percent with its sign, e.g. ``+3.14%`` (worse than single-task) or ``-1.20%``."""
    number = finite(value)
    return "—" if number is None else f"{number:+.2f}%"


def format_seconds(value: object) -> str:
    number = finite(value)
    if number is None:
        return "—"
    if number < 120:
        return f"{number:.1f} s"
    if number < 7200:
        return f"{number / 60:.1f} min"
    return f"{number / 3600:.2f} h"


def _mean_std(value: object) -> tuple[float | None, float | None]:
    """``[mean, std]`` as written in ``summary.json``'s aggregate; a bare number has no std."""
    if isinstance(value, list | tuple) and len(value) == 2:
        return finite(value[0]), finite(value[1])
    return finite(value), None


def _format_mean_std(value: object, fmt: Any = format_value) -> str:
    mean, std = _mean_std(value)
    if mean is None:
        return "—"
    return fmt(mean) if std is None else f"{fmt(mean)} ± {format_value(std)}"


def _direction(higher_is_better: object) -> str:
    if higher_is_better is True:
        return " ↑"
    if higher_is_better is False:
        return " ↓"
    return ""


def _num(value: float | None, text: str, *, best: bool = False) -> Cell:
    return Cell(text, numeric=True, best=best, sort=value)


def _best_rows(values: Sequence[float | None], higher_is_better: bool | None) -> set[int]:
    """Indices of the best finite values (all of them on a tie); none when direction is unknown."""
    if higher_is_better is None:
        return set()
    found = [(i, v) for i, v in enumerate(values) if v is not None]
    if not found:
        return set()
    best = max(v for _, v in found) if higher_is_better else min(v for _, v in found)
    return {i for i, v in found if v == best}


# -------------------------------------------------------------------------------- experiments
def experiment_page(experiment: ExperimentData) -> Page:
    """The page of an experiment: the comparison, results over seeds, then each run's sections."""
    page = Page()
    rows, labels, tasks = experiment.rows, experiment.labels, experiment.tasks
    # run headings are "run-<i>-<label>", their sections "r<i>-<section>": never the same id
    anchors = [slug(f"run-{i + 1}-{label}") for i, label in enumerate(labels)]

    page.heading(2, "Comparison", "comparison")
    if experiment.notes:
        page.add(Facts([("note", n) for n in experiment.notes]))
    many = len(tasks) > MANY_TASKS
    if many:
        page.note(
            f"{len(tasks)} tasks (more than {MANY_TASKS}): the comparison table and chart summarise "
            "the tasks' primary test metrics (mean and median over tasks, a histogram per run) "
            "instead of showing each task; each run's section below has its per-task table."
        )
    if rows:
        page.add(_comparison_table(rows, labels, anchors, tasks, summarise=many))
        page.muted(
            "Test metrics of the selected model of each run. Bold: best in the column "
            "(↑ higher is better, ↓ lower is better). Δm: mean relative change of the primary "
            "metrics against single-task baselines, in %, lower is better. Click a column header "
            "to sort."
        )
    else:
        page.note(f"{experiment.directory / EXPERIMENT_FILE} lists no runs.")

    if experiment.aggregate:
        page.heading(2, "Results over seeds", "over-seeds")
        page.add(_aggregate_table(experiment.aggregate, tasks, summarise=many))
        page.muted(
            "Per method: the primary test metric of each task and Δm, mean ± std over seeds "
            "(std 0 with a single seed). Click a column header to sort."
        )

    page.heading(2, "Primary test metric per task", "primary-metric-chart")
    if many:
        _primary_histograms(page, rows, labels, tasks)
    else:
        _primary_bars(page, rows, labels, tasks)

    _validation_by_run(page, experiment)
    _grouping_section(page, experiment.grouping, level=2, prefix="")
    _relations_section(page, experiment.relations, experiment.analysis, level=2, prefix="")

    page.heading(2, "Runs", "runs")
    for i, (label, row, run) in enumerate(zip(labels, rows, experiment.runs, strict=True)):
        page.heading(3, label, anchors[i])
        run_dir = row.get("run_dir")
        if not run_dir:
            page.note(f"Row {label!r} of {EXPERIMENT_FILE} names no run_dir.")
            continue
        if run is None:
            page.note(
                f"Run directory {run_dir} not found or empty (no {RESULTS_FILE} or {METRICS_FILE})."
            )
            continue
        page.muted(f"Run directory: {run_dir}")
        _run_sections(page, run, level=4, prefix=f"r{i + 1}-")
    return page


def _task_panel(task: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """A task's name, primary metric, panel title and y label, for one panel per task.

    One home for the title and label, so that a task's panels read alike in every figure.
    """
    name, metric = str(task["name"]), str(task.get("primary_metric", ""))
    title = f"{name} ({metric})" if metric else name
    return name, metric, title, metric + _direction(task.get("higher_is_better"))


def _validation_by_run(page: Page, experiment: ExperimentData) -> None:
    """Each task's primary validation metric per epoch, one line per run (few tasks only)."""
    tasks = experiment.tasks
    if not tasks or len(tasks) > MANY_TASKS:
        return
    panels: dict[str, dict[str, fig.Series]] = {}
    ylabels: dict[str, str] = {}
    for task in tasks:
        name, metric, title, ylabel = _task_panel(task)
        ylabels[title] = ylabel
        panels[title] = {}
        for label, run in zip(experiment.labels, experiment.runs, strict=True):
            if run is None or run.metrics is None:
                continue
            m = run.metrics
            rows = m[(m["split"] == "val") & (m["task"] == name) & (m["metric"] == metric)]
            rows = rows.dropna(subset=["value"])
            if not rows.empty:
                panels[title][label] = _curve(rows)
    if not any(panels.values()):
        return
    page.heading(2, "Validation curves by run", "validation-by-run")
    page.figure(
        fig.Lines("Primary validation metric per epoch", "epoch", panels, ylabels),
        "primary validation metric per epoch, one line per run",
        "One panel per task, one line per run (the single-task baselines included): how each "
        "method got to its selected epoch.",
    )


def _primary_bars(
    page: Page,
    rows: Sequence[Mapping[str, Any]],
    labels: Sequence[str],
    tasks: Sequence[Mapping[str, Any]],
) -> None:
    """One bar panel per task, one bar per run (few tasks)."""
    panels: dict[str, dict[str, float]] = {}
    ylabels: dict[str, str] = {}
    for task in tasks:
        name, metric, panel_name, ylabel = _task_panel(task)
        ylabels[panel_name] = ylabel
        panels[panel_name] = {}
        for label, row in zip(labels, rows, strict=True):
            value = finite(row.get("test", {}).get(name, {}).get(metric))
            if value is not None:
                panels[panel_name][label] = value
    if any(panels.values()):
        page.figure(
            fig.Bars("Primary test metric per task", panels, ylabels),
            "bar chart of the primary test metric per task and method",
        )
    else:
        page.muted("No test metrics to compare.")


def _primary_metric_groups(tasks: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Primary metric -> the tasks scored by it: only values of one metric are summarised together."""
    groups: dict[str, list[str]] = {}
    for task in tasks:
        groups.setdefault(str(task.get("primary_metric", "")), []).append(str(task["name"]))
    return groups


def _primary_histograms(
    page: Page,
    rows: Sequence[Mapping[str, Any]],
    labels: Sequence[str],
    tasks: Sequence[Mapping[str, Any]],
) -> None:
    """Per primary metric, a histogram over tasks of each run's test value (many tasks)."""
    drawn = False
    for metric, names in _primary_metric_groups(tasks).items():
        values: dict[str, list[float]] = {}
        for label, row in zip(labels, rows, strict=True):
            test = row.get("test", {})
            found = [finite(test.get(n, {}).get(metric)) for n in names]
            values[label] = [v for v in found if v is not None]
        if not any(values.values()):
            continue
        page.figure(
            fig.Histogram(
                f"Test {metric} over {len(names)} tasks, per run", metric or "value", values
            ),
            f"histogram over tasks of the test {metric} of each run",
            f"Summarised: one outline per run counts the tasks by their test {metric}.",
        )
        drawn = True
    if not drawn:
        page.muted("No test metrics to compare.")


def _comparison_table(
    rows: Sequence[Mapping[str, Any]],
    labels: Sequence[str],
    anchors: Sequence[str],
    tasks: Sequence[Mapping[str, Any]],
    *,
    summarise: bool = False,
) -> Table:
    """One row per run; a column per task, or (``summarise``) mean and median over tasks."""
    columns: list[tuple[str, list[float | None], bool | None, str]] = []
    if summarise:
        direction_of = {str(t["name"]): t.get("higher_is_better") for t in tasks}
        for metric, names in _primary_metric_groups(tasks).items():
            hibs = {direction_of[n] for n in names}
            hib = hibs.pop() if len(hibs) == 1 else None
            direction = hib if isinstance(hib, bool) else None
            per_row = [
                [
                    v
                    for n in names
                    if (v := finite(row.get("test", {}).get(n, {}).get(metric))) is not None
                ]
                for row in rows
            ]
            for stat, fn in (("mean", statistics.fmean), ("median", statistics.median)):
                values = [fn(v) if v else None for v in per_row]
                title = f"{stat} {metric} over {len(names)} tasks{_direction(direction)}"
                columns.append((title, values, direction, "metric"))
        summaries = list(
            dict.fromkeys(
                k for row in rows for k in (row.get("summary_metrics") or {}).get("test", {})
            )
        )
        for key in summaries:
            values = [
                finite((row.get("summary_metrics") or {}).get("test", {}).get(key)) for row in rows
            ]
            columns.append((f"{key} (test)", values, None, "metric"))
    for task in tasks if not summarise else ():
        name, metric = str(task["name"]), str(task.get("primary_metric", ""))
        hib = task.get("higher_is_better")
        direction = hib if isinstance(hib, bool) else None
        values = [finite(row.get("test", {}).get(name, {}).get(metric)) for row in rows]
        columns.append((f"{name} {metric}{_direction(direction)}", values, direction, "metric"))
    columns.append(("Δm" + _direction(False), [finite(r.get("delta_m")) for r in rows], False, "dm"))
    columns.append(("time" + _direction(False), [finite(r.get("time_s")) for r in rows], False, "t"))
    best = [_best_rows(values, direction) for _, values, direction, _ in columns]
    formatter = {"metric": format_value, "dm": format_delta_m, "t": format_seconds}

    body = []
    for i, (label, row) in enumerate(zip(labels, rows, strict=True)):
        cells = [Cell(label, href=f"#{anchors[i]}", sort=label), Cell(str(row.get("kind", "")))]
        for (_, values, _, kind), winners in zip(columns, best, strict=True):
            cells.append(_num(values[i], formatter[kind](values[i]), best=i in winners))
        body.append(cells)
    return Table(["method", "kind", *(c[0] for c in columns)], body, sortable=True)


def _aggregate_table(
    aggregate: Sequence[Mapping[str, Any]],
    tasks: Sequence[Mapping[str, Any]],
    *,
    summarise: bool,
) -> Table:
    """``summary.json``'s aggregate: per method, mean ± std over seeds; best mean in bold."""
    columns: list[tuple[str, list[Any], bool | None, Any]] = []
    if summarise:
        columns.append(
            ("mean primary over tasks", [a.get("mean_primary") for a in aggregate], None,
             format_value)
        )
    else:
        for task in tasks:
            name, metric = str(task["name"]), str(task.get("primary_metric", ""))
            hib = task.get("higher_is_better")
            columns.append(
                (f"{name} {metric}{_direction(hib)}", [a.get(name) for a in aggregate],
                 hib if isinstance(hib, bool) else None, format_value)
            )
    summaries = list(dict.fromkeys(k for a in aggregate for k in (a.get("summary") or {})))
    for key in summaries:
        columns.append(
            (f"{key} (test)", [(a.get("summary") or {}).get(key) for a in aggregate], None,
             format_value)
        )
    columns.append(("Δm" + _direction(False), [a.get("delta_m") for a in aggregate], False,
                    format_delta_m))
    columns.append(("time" + _direction(False), [a.get("time_s") for a in aggregate], False,
                    format_seconds))
    best = [_best_rows([_mean_std(v)[0] for v in values], d) for _, values, d, _ in columns]
    body = []
    for i, row in enumerate(aggregate):
        seeds = finite(row.get("seeds"))
        cells = [
            Cell(str(row.get("label", f"method {i + 1}")), sort=str(row.get("label", ""))),
            Cell(str(row.get("kind", ""))),
            _num(seeds, str(int(seeds)) if seeds is not None else "—"),
        ]
        for (_, values, _, fmt), winners in zip(columns, best, strict=True):
            cells.append(
                _num(_mean_std(values[i])[0], _format_mean_std(values[i], fmt), best=i in winners)
            )
        body.append(cells)
    return Table(["method", "kind", "seeds", *(c[0] for c in columns)], body, sortable=True)


# ---------------------------------------------------------------------------------------- runs
def run_page(run: RunData) -> Page:
    page = Page()
    _run_sections(page, run, level=2, prefix="")
    return page


def _run_sections(page: Page, run: RunData, *, level: int, prefix: str) -> None:
    """The sections of one run, headings at ``level``, anchors prefixed with ``prefix``."""
    metrics = run.metrics
    page.heading(level, "Overview", f"{prefix}overview")
    if not run.complete:
        last = int(metrics["epoch"].max()) if metrics is not None and len(metrics) else None
        upto = f" up to epoch {last}" if last is not None else ""
        page.note(
            f"Incomplete run: {RESULTS_FILE} not found in {run.directory}. This report shows what "
            f"{METRICS_FILE} recorded{upto}; there is no model selection and no test result yet."
        )
    expected = [m for m in run.missing if m != RESULTS_FILE]
    if expected:
        page.note(f"Missing from {run.directory}: {', '.join(expected)}.")
    names = run.task_names()
    many = len(names) > MANY_TASKS
    if many:
        page.note(
            f"{len(names)} tasks (more than {MANY_TASKS}): the figures summarise over "
            "tasks (mean, median and spread per epoch, the "
            f"{_EXTREME_TASKS} best and worst tasks by their validation primary metric, a "
            "histogram of the per-task values) instead of drawing every task; the per-task numbers "
            "are in the collapsed tables."
        )
    _overview(page, run, collapse=many)

    page.heading(level, "Final results" if run.complete else "Latest validation", f"{prefix}final")
    final = _final_table(run)
    if many:
        _histogram_of_primary(page, run)
        if isinstance(final, Table):
            final = Details(f"Per-task table ({len(names)} tasks)", [final])
    page.add(final)

    if metrics is not None:
        _loss_section(page, run, metrics, level, prefix)
        _val_section(page, run, metrics, level, prefix)
        _schedule_section(page, metrics, level, prefix)
    _dense_section(page, run, level, prefix)
    _weights_section(page, run, level, prefix)
    if run.experts is not None:
        _experts_section(page, run, run.experts, level, prefix)
    _relations_section(page, run.relations, run.analysis, level, prefix)
    _grouping_section(page, run.grouping, level, prefix)
    _warnings_section(page, run, level, prefix)

    page.heading(level, "Configuration", f"{prefix}config")
    if run.config is None:
        page.muted(
            f"No configuration recorded ({CONFIG_FILE} or {STL_KEY_FILE}): the run was trained "
            "by calling polytask.training.fit directly."
        )
    else:
        what = "(resolved)" if run.config_file == CONFIG_FILE else "(the single-task baseline's cache key)"
        page.add(Details(f"{run.config_file} {what}", [Preformatted(run.config)]))


def _overview(page: Page, run: RunData, *, collapse: bool = False) -> None:
    results = run.results or {}
    facts: list[tuple[str, str]] = [("name", run.name)]
    for key in ("balancer", "architecture"):
        if results.get(key) is not None:
            facts.append((key, str(results[key])))
    if run.complete:
        facts.append(("best epoch", str(run.best_epoch) if run.best_epoch is not None else "—"))
        facts.append(("selection", str(results.get("selection", "—"))))
        if len(run.task_names()) > 1 or results.get("delta_m") is not None:
            facts.append(("test Δm (vs single-task)", format_delta_m(results.get("delta_m"))))
        epochs = results.get("epochs")
        facts.append(("epochs", str(epochs) if epochs is not None else "—"))
        facts.append(("time", format_seconds(results.get("time_s"))))
        params = results.get("num_parameters")
        if isinstance(params, int):
            facts.append(("parameters", f"{params:,}"))
    page.add(Facts(facts))
    info = run.task_info()
    if info:
        body = [
            [
                Cell(name),
                Cell(str(t.get("kind", ""))),
                Cell(str(t.get("primary_metric", "")) + _direction(t.get("higher_is_better"))),
            ]
            for name, t in info.items()
        ]
        table = Table(["task", "kind", "primary metric"], body)
        page.add(Details(f"Tasks ({len(body)})", [table]) if collapse else table)


def _final_primary(run: RunData, split: str) -> dict[str, float]:
    """Each task's primary metric on ``split`` at the selected epoch (results.json); else latest val."""
    info = run.task_info()
    if run.complete:
        values = (run.results or {}).get(split) or {}
        found = {
            t: finite(values.get(t, {}).get(info.get(t, {}).get("primary_metric")))
            for t in run.task_names()
        }
        return {t: v for t, v in found.items() if v is not None}
    metrics = run.metrics
    if split != "val" or metrics is None:
        return {}
    val = metrics[(metrics["split"] == "val") & (metrics["task"] != "")].dropna(subset=["value"])
    if val.empty:
        return {}
    latest = val[val["epoch"] == val["epoch"].max()]
    out: dict[str, float] = {}
    for t in run.task_names():
        rows = latest[
            (latest["task"] == t) & (latest["metric"] == info.get(t, {}).get("primary_metric"))
        ]
        if not rows.empty:
            out[t] = float(rows["value"].mean())
    return out


def _extreme_tasks(run: RunData) -> list[tuple[str, str]]:
    """``(label, task)`` for the best and worst tasks by validation primary metric."""
    values = _final_primary(run, "val")
    info = run.task_info()
    if not values:
        return []
    metrics = {str(info.get(t, {}).get("primary_metric")) for t in values}
    if len(metrics) != 1:  # different metrics cannot be ranked against each other
        return []
    hib = info.get(next(iter(values)), {}).get("higher_is_better")
    ranked = sorted(values, key=values.__getitem__, reverse=hib is not False)
    k = min(_EXTREME_TASKS, len(ranked) // 2)
    return [("best", t) for t in ranked[:k]] + [("worst", t) for t in ranked[len(ranked) - k :]]


def _histogram_of_primary(page: Page, run: RunData) -> None:
    """The per-task primary metric at the selected epoch, val and test, as a histogram."""
    info = run.task_info()
    metrics = {str(info.get(t, {}).get("primary_metric", "")) for t in run.task_names()}
    if len(metrics) != 1:
        return
    metric = metrics.pop()
    values = {split: list(_final_primary(run, split).values()) for split in ("val", "test")}
    values = {k: v for k, v in values.items() if v}
    if not values:
        return
    page.figure(
        fig.Histogram(f"{metric} per task ({len(run.task_names())} tasks)", metric, values),
        f"histogram of the per-task {metric}",
        f"Summarised: the tasks counted by their {metric} at the selected epoch.",
    )


def _ordered_metrics(names: Iterable[str], primary: str | None) -> list[str]:
    unique = sorted(set(names))
    if primary in unique:
        unique.remove(primary)
        unique.insert(0, primary)
    return unique


def _final_table(run: RunData) -> Table | Text:
    info = run.task_info()
    if run.complete:
        results = run.results or {}
        val = results.get("val") or {}
        test = results.get("test") or {}
        stl = results.get("stl_reference") or {}
        header = ["task", "metric", f"val (epoch {run.best_epoch})", "test"]
        if stl:
            header.append("single-task reference")
        body = []
        for task in run.task_names():
            primary = info.get(task, {}).get("primary_metric")
            names = [*val.get(task, {}), *test.get(task, {}), *stl.get(task, {})]
            for metric in _ordered_metrics(names, primary):
                label = f"{metric} (primary)" if metric == primary else metric
                cells = [Cell(task), Cell(label)]
                for source in (val, test, *((stl,) if stl else ())):
                    value = finite(source.get(task, {}).get(metric))
                    cells.append(_num(value, format_value(value)))
                body.append(cells)
        return Table(header, body) if body else Text("No metrics in results.json.")

    metrics = run.metrics
    if metrics is None:
        return Text(f"No {METRICS_FILE}, nothing recorded.")
    val = metrics[(metrics["split"] == "val") & (metrics["task"] != "")].dropna(subset=["value"])
    if val.empty:
        return Text("No validation metrics recorded yet.")
    last = int(val["epoch"].max())
    latest = val[val["epoch"] == last]
    body = []
    for task in run.task_names():
        rows = latest[latest["task"] == task]
        values = dict(zip(rows["metric"], rows["value"], strict=True))
        for metric in _ordered_metrics(values, info.get(task, {}).get("primary_metric")):
            body.append(
                [Cell(task), Cell(metric), _num(values[metric], format_value(values[metric]))]
            )
    return Table(["task", "metric", f"val (epoch {last}, last recorded)"], body)


def _curve(frame: pd.DataFrame) -> fig.Series:
    """Mean value per epoch (one row per epoch is expected; duplicates are averaged)."""
    per_epoch = frame.groupby("epoch")["value"].mean().sort_index()
    return ([float(x) for x in per_epoch.index], [float(y) for y in per_epoch.to_numpy()])


def _stat_curve(frame: pd.DataFrame, stat: str) -> fig.Series:
    """Per epoch, ``stat`` (mean, median, min, max, or a quantile "q10") over the tasks' values."""
    grouped = frame.groupby("epoch")["value"]
    quantile = stat.startswith("q")
    per_epoch = grouped.quantile(int(stat[1:]) / 100) if quantile else grouped.agg(stat)
    per_epoch = per_epoch.sort_index()
    return ([float(x) for x in per_epoch.index], [float(y) for y in per_epoch.to_numpy()])


def _split_curves(frame: pd.DataFrame) -> dict[str, fig.Series]:
    """One curve per split (``train``, ``val``) of ``frame``'s rows, in the order they appear."""
    return {str(split): _curve(g) for split, g in frame.groupby("split", sort=False)}


def _epoch_figure(
    page: Page,
    run: RunData,
    title: str,
    panels: Mapping[str, Mapping[str, fig.Series]],
    alt: str,
    caption: str,
    ylabels: Mapping[str, str] | None = None,
) -> None:
    """Per-epoch small multiples with the selected (best) epoch marked, when there is one.

    One home for the marker so that the loss and validation figures always mark the same epoch.
    """
    best = run.best_epoch
    page.figure(
        fig.Lines(title, "epoch", panels, ylabels or {}, vline=best,
                  vline_label=f"best epoch {best}" if best is not None else None),
        alt,
        caption,
    )


def _loss_section(
    page: Page, run: RunData, metrics: pd.DataFrame, level: int, prefix: str
) -> None:
    losses = metrics[(metrics["metric"] == "loss") & (metrics["split"] != "test")]
    losses = losses.dropna(subset=["value"])
    page.heading(level, "Losses", f"{prefix}losses")
    if losses.empty:
        page.muted("No losses recorded.")
        return
    panels: dict[str, dict[str, fig.Series]] = {}
    total = losses[losses["task"] == ""]
    names = run.task_names()
    if not total.empty and len(names) != 1:  # one task: its loss is the total
        panels["total"] = _split_curves(total)
    if len(names) > MANY_TASKS:
        per_task = losses[losses["task"].isin(names)]
        per_task = per_task.groupby(["split", "task", "epoch"])["value"].mean().reset_index()
        for stat in ("mean", "median"):
            panels[f"{stat} over {len(names)} tasks"] = {
                str(split): _stat_curve(g, stat)
                for split, g in per_task.groupby("split", sort=False)
            }
        shown = _extreme_tasks(run)
        best_names = ", ".join(t for tag, t in shown if tag == "best") or "—"
        worst_names = ", ".join(t for tag, t in shown if tag == "worst") or "—"
        caption = (
            f"Summarised over {len(names)} tasks: mean and median task loss per epoch, then the "
            f"best ({best_names}) and worst ({worst_names}) tasks by validation primary metric."
        )
    else:
        shown = [("", t) for t in names]
        caption = "Train and validation loss per task and epoch."
    for tag, task in shown:
        rows = losses[losses["task"] == task]
        if not rows.empty:
            title = f"{task} ({tag})" if tag else task
            panels[title] = _split_curves(rows)
    if not panels and not total.empty:
        panels["total"] = _split_curves(total)
    _epoch_figure(page, run, "Loss per task", panels, "loss curves per task", caption)


def _val_section(
    page: Page, run: RunData, metrics: pd.DataFrame, level: int, prefix: str
) -> None:
    val = metrics[(metrics["split"] == "val") & (metrics["metric"] != "loss")]
    val = val.dropna(subset=["value"])
    val = val[~val["metric"].str.startswith(_WARNING_PREFIX) & ~val["metric"].isin(_NOT_CURVES)]
    per_task = val[val["task"] != ""]
    run_level = val[val["task"] == ""]  # delta_m, the selection score
    page.heading(level, "Validation metrics", f"{prefix}validation")
    if val.empty:
        page.muted("No validation metrics recorded.")
        return
    panels: dict[str, dict[str, fig.Series]] = {}
    ylabels: dict[str, str] = {}
    order = run.task_names()
    many = len(order) > MANY_TASKS
    for metric in sorted(per_task["metric"].unique()):
        rows = per_task[per_task["metric"] == metric]
        if many:
            rows = rows[rows["task"].isin(order)]
            rows = rows.groupby(["task", "epoch"])["value"].mean().reset_index()
            panels[metric] = {
                label: _stat_curve(rows, stat)
                for label, stat in (
                    ("mean", "mean"),
                    ("median", "median"),
                    ("10th percentile", "q10"),
                    ("90th percentile", "q90"),
                )
            }
        else:
            groups = dict(tuple(rows.groupby("task", sort=False)))
            panels[metric] = {t: _curve(groups[t]) for t in order if t in groups}
        ylabels[metric] = metric
    for metric, rows in run_level.groupby("metric", sort=True):
        if metric == "delta_m":
            panels["Δm % vs single-task"] = {"val Δm": _curve(rows)}
            ylabels["Δm % vs single-task"] = "Δm % (lower is better)"
        else:
            panels[f"{metric} (run)"] = {"val": _curve(rows)}
            ylabels[f"{metric} (run)"] = str(metric)
    caption = (
        f"Summarised over {len(order)} tasks: one panel per metric, with the mean, median, 10th "
        "and 90th percentile over tasks per epoch; run-level values (Δm, selection score) last."
        if many
        else "One panel per metric, one line per task; run-level values (Δm, selection score) last."
    )
    _epoch_figure(
        page, run, "Validation metrics", panels, "validation metrics per epoch", caption, ylabels
    )


def _schedule_section(page: Page, metrics: pd.DataFrame, level: int, prefix: str) -> None:
    run_level = metrics[(metrics["task"] == "") & ~metrics["split"].isin(("val", "test"))]
    run_level = run_level.dropna(subset=["value"])
    run_level = run_level[
        (run_level["metric"] != "loss") & ~run_level["metric"].str.startswith(_WARNING_PREFIX)
    ]
    if run_level.empty:
        return
    page.heading(level, "Learning rate and timing", f"{prefix}schedule")
    panels = {
        str(metric): _split_curves(rows)
        for metric, rows in run_level.groupby("metric", sort=False)
    }
    page.figure(
        fig.Lines("Run-level values per epoch", "epoch", panels, dict.fromkeys(panels, "")),
        "learning rate and epoch time per epoch",
    )


def _weights_section(page: Page, run: RunData, level: int, prefix: str) -> None:
    names = run.task_names()
    weights = run.weights
    page.heading(level, "Task weights", f"{prefix}weights")
    if weights is None:
        page.muted(f"{WEIGHTS_FILE} not found.")
        return
    if weights.empty:
        page.muted("No task weights recorded.")
        return
    steps_per_epoch = weights.groupby("epoch")["step"].nunique()
    window = max(1, int(steps_per_epoch.median()))
    if len(names) > MANY_TASKS:
        _weights_summary(page, weights, names, window)
        return
    last = int(weights["epoch"].max())
    final = weights[weights["epoch"] == last].groupby("task")["weight"].mean()
    table = Table(
        ["task", f"mean weight in epoch {last}"],
        [
            [Cell(t), _num(float(final[t]), format_value(float(final[t])))]
            for t in names
            if t in final.index
        ],
    )
    constant = weights.groupby("task")["weight"].nunique()
    if (constant <= 1).all():  # equal weights, a single task: a flat line says nothing
        page.muted("Every task's weight is the same at every step (the balancer does not change it).")
        page.add(table)
        return
    smooth: dict[str, fig.Series] = {}
    raw: dict[str, fig.Series] = {}
    for task in names:
        rows = weights[weights["task"] == task]
        if rows.empty:
            continue
        per_step = rows.groupby("step")["weight"].mean()
        rolled = per_step.rolling(window, min_periods=1, center=True).mean()
        stride = max(1, len(per_step) // _RAW_POINTS_PER_TASK)
        xs = [float(x) for x in per_step.index]
        raw[task] = (xs[::stride], [float(y) for y in per_step.to_numpy()[::stride]])
        smooth[task] = (xs[::stride], [float(y) for y in rolled.to_numpy()[::stride]])
    if not smooth:
        page.muted("No task weights recorded for the run's tasks.")
        return
    page.figure(
        fig.Lines(
            "Task weights applied by the balancer", "step", {"": smooth}, {"": "weight"},
            raw={"": raw},
        ),
        "task weights over training steps",
        f"Thick: rolling mean over {window} step(s) (about one epoch); thin: the weight at each "
        "step.",
    )
    page.add(table)


def _weights_summary(page: Page, weights: pd.DataFrame, names: Sequence[str], window: int) -> None:
    """Many tasks: the mean, min and max weight over tasks per step, and a collapsed table."""
    rows = weights[weights["task"].isin(names)]
    if rows.empty:
        page.muted("No task weights recorded for the run's tasks.")
        return
    per_step = rows.groupby(["step", "task"])["weight"].mean().unstack("task")
    stride = max(1, len(per_step) // _RAW_POINTS_PER_TASK)
    xs = [float(x) for x in per_step.index][::stride]
    smooth: dict[str, fig.Series] = {}
    for label, series in (
        ("mean", per_step.mean(axis=1)),
        ("min", per_step.min(axis=1)),
        ("max", per_step.max(axis=1)),
    ):
        rolled = series.rolling(window, min_periods=1, center=True).mean()
        smooth[label] = (xs, [float(y) for y in rolled.to_numpy()[::stride]])
    page.figure(
        fig.Lines(f"Task weights over {len(names)} tasks", "step", {"": smooth}, {"": "weight"}),
        "mean, min and max task weight over training steps",
        f"Summarised over {len(names)} tasks: mean, smallest and largest weight at each step, "
        f"rolling mean over {window} step(s) (about one epoch).",
    )
    last = int(weights["epoch"].max())
    final = weights[weights["epoch"] == last].groupby("task")["weight"].mean()
    body = [
        [Cell(t), _num(float(final[t]), format_value(float(final[t])))]
        for t in names
        if t in final.index
    ]
    table = Table(["task", f"mean weight in epoch {last}"], body)
    page.add(Details(f"Per-task weights ({len(body)} tasks)", [table]))


def _expert_order(experts: Iterable[str]) -> list[str]:
    def key(name: str) -> tuple[int, int, str]:
        return (0, int(name), name) if name.isdigit() else (1, 0, name)

    return sorted(set(experts), key=key)


def _experts_section(
    page: Page, run: RunData, experts: pd.DataFrame, level: int, prefix: str
) -> None:
    if experts.empty:
        return  # models without experts (hard sharing) write a header-only experts.csv
    page.heading(level, "Expert usage", f"{prefix}experts")
    last = int(experts["epoch"].max())
    expert_names = _expert_order(experts["expert"])
    tasks = [t for t in run.task_names() if t in set(experts["task"])]
    final = experts[experts["epoch"] == last].groupby(["task", "expert"])["weight"].mean()
    matrix = [[float(final.get((t, e), math.nan)) for e in expert_names] for t in tasks]
    page.figure(
        fig.Heatmap(
            f"Mean gate weight per expert, epoch {last}", matrix, tasks, expert_names,
            xlabel="expert", ylabel="task", colorbar_label="gate weight",
        ),
        f"expert gate weights per task at epoch {last}",
    )
    if len(run.task_names()) > MANY_TASKS:
        mean = experts[experts["task"].isin(tasks)].groupby(["expert", "epoch"])["weight"].mean()
        series = {
            e: ([float(x) for x in mean.loc[e].index], [float(y) for y in mean.loc[e].to_numpy()])
            for e in expert_names
            if e in mean.index.get_level_values("expert")
        }
        page.figure(
            fig.Lines(
                f"Gate weight per expert, mean over {len(tasks)} tasks", "epoch", {"": series},
                {"": "weight"},
            ),
            "mean expert gate weights over epochs",
            f"Summarised: one line per expert, its gate weight averaged over {len(tasks)} tasks.",
        )
        return
    per_epoch = experts.groupby(["task", "expert", "epoch"])["weight"].mean()
    panels: dict[str, dict[str, fig.Series]] = {}
    for task in tasks:
        panels[task] = {}
        for expert in expert_names:
            if (task, expert) in per_epoch.index.droplevel("epoch"):
                series_e = per_epoch.loc[(task, expert)].sort_index()
                panels[task][f"expert {expert}"] = (
                    [float(x) for x in series_e.index],
                    [float(y) for y in series_e.to_numpy()],
                )
    page.figure(
        fig.Lines("Gate weight per expert over epochs", "epoch", panels,
                  dict.fromkeys(panels, "weight")),
        "expert gate weights over epochs",
        "One panel per task, one line per expert.",
    )


def _dense_section(page: Page, run: RunData, level: int, prefix: str) -> None:
    """Predicted masks and maps beside the truth, when the run saved dense validation samples."""
    from polytask.report import plots

    if run.dense is None:
        return
    page.heading(level, "Dense predictions", f"{prefix}dense")
    if run.dense.error is not None:
        page.note(f"Dense samples could not be read: {run.dense.error}")
        return
    samples = run.dense.value
    png, skipped = plots.dense_samples(samples["input"], samples["tasks"], "first validation samples")
    page.add(
        Image(
            png,
            alt="input, truth and prediction of each dense task",
            caption="The first validation samples, predicted by the selected model: each dense task's "
            "truth beside its prediction (grey: unlabelled pixels; classes keep one colour; a "
            "depth map's truth and prediction share one colour scale, and its prediction is shown "
            "where the truth is labelled; boxes: truth and predicted boxes with their scores).",
        )
    )
    for name, why in skipped.items():
        page.note(f"Dense samples of task {name!r} are not drawn: {why}.")


def _relations_section(
    page: Page,
    relations: OptionalFile | None,
    analysis: OptionalFile | None,
    level: int,
    prefix: str,
) -> None:
    """Task affinity heatmaps (relations.json) and the clustering (analysis.json), if recorded."""
    if relations is None and analysis is None:
        return
    page.heading(level, "Task relationships", f"{prefix}relations")
    clusterings: dict[str, dict[str, Any]] = {}
    if analysis is not None and analysis.error is not None:
        page.note(f"The task analysis could not be read: {analysis.error}")
    elif analysis is not None:
        clusterings = _clusterings(page, analysis.path, analysis.value)
    if relations is not None and relations.error is not None:
        page.note(f"Task relationships could not be read: {relations.error}")
    elif relations is not None:
        _affinity_figures(page, relations.value, clusterings)
    if analysis is not None and analysis.error is None:
        warnings = analysis.value.get("warnings") or []
        for warning in warnings if isinstance(warnings, list) else [warnings]:
            page.note(f"{analysis.path.name}: {warning}")


def _clusterings(page: Page, path: Path, analysis: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``analysis.json``'s clustering per measure as a table; returns the clusterings found.

    The format is :mod:`polytask.analysis.analyze`'s: ``measures.<name>.clustering`` holds
    ``order`` (the dendrogram's leaf order), ``clusters`` (flat groups) and ``threshold``, or an
    ``error`` saying why there is none.
    """
    measures = analysis.get("measures")
    if not isinstance(measures, Mapping):
        page.note(f"{path}: key 'measures' is missing or not an object; no clustering shown.")
        return {}
    found: dict[str, dict[str, Any]] = {}
    rows: list[list[Cell]] = []
    for measure, entry in measures.items():
        clustering = entry.get("clustering") if isinstance(entry, Mapping) else None
        if not isinstance(clustering, Mapping):
            continue
        title = _MEASURE_TITLES.get(str(measure), str(measure))
        if "error" in clustering:
            rows.append([Cell(title), Cell("—"), Cell(f"no clustering: {clustering['error']}")])
            continue
        clusters = clustering.get("clusters")
        if not isinstance(clusters, list):
            page.note(f"{path}: measures.{measure}.clustering has no 'clusters' list.")
            continue
        found[str(measure)] = dict(clustering)
        groups = "  ".join("{" + ", ".join(str(t) for t in g) + "}" for g in clusters)
        threshold = finite(clustering.get("threshold"))
        rows.append(
            [Cell(title), _num(float(len(clusters)), str(len(clusters))),
             Cell(groups + (f"  (mean affinity ≥ {threshold:g})" if threshold is not None else ""))]
        )
    if rows:
        page.add(Table(["measure", "clusters", "groups (average linkage)"], rows))
    return found


def _affinity_figures(
    page: Page, relations: Relations, clusterings: Mapping[str, Mapping[str, Any]]
) -> None:
    tasks = relations.tasks
    if not relations.matrices:
        page.muted(f"{len(tasks)} task(s); no relationship measure was recorded.")
    for measure, matrix in relations.matrices.items():
        title = _MEASURE_TITLES.get(measure, measure)
        order = list((clusterings.get(measure) or {}).get("order") or [])
        ordered = sorted(order) == sorted(tasks) and order != tasks
        index = [tasks.index(t) for t in order] if ordered else list(range(len(tasks)))
        names = [tasks[i] for i in index]
        values = [[float(matrix[i, j]) for j in index] for i in index]
        description = relations.descriptions.get(measure) or ""
        caption = f"{measure}: {description}".rstrip(": ") + (
            " Rows and columns in the clustering's order." if ordered else ""
        )
        page.figure(
            fig.Heatmap(
                f"{title}, mean over {relations.epochs[measure]} epoch(s)", values, names, names,
                xlabel="task j", ylabel="task i", colorbar_label=measure,
                center=0.0 if measure in _CENTERED_MEASURES else None,
            ),
            f"{title} between every pair of tasks",
            caption,
        )
    if relations.absent and relations.matrices:
        page.muted("Not recorded: " + ", ".join(relations.absent) + ".")
    if relations.loss_ratio:
        epochs = max(len(v) for v in relations.loss_ratio.values())
        series = {
            t: ([float(e) for e in range(len(v))], v) for t, v in relations.loss_ratio.items()
        }
        page.figure(
            fig.Lines("Loss ratio L(epoch) / L(0)", "epoch", {"": series}, {"": "loss ratio"}),
            "each task's loss relative to its first epoch",
            f"Per task, over {epochs} epoch(s): a task whose ratio falls slowly learns slowly "
            "next to the others.",
        )
    counts = relations.counts
    if counts:
        facts = [
            (str(k), ", ".join(f"{t}: {n}" for t, n in v.items()) if isinstance(v, Mapping)
             else str(v))
            for k, v in counts.items()
        ]
        page.add(Facts(facts))


def _grouping_section(page: Page, grouping: OptionalFile | None, level: int, prefix: str) -> None:
    if grouping is None:
        return
    page.heading(level, "Task grouping", f"{prefix}grouping")
    if grouping.error is not None:
        page.note(f"The grouping search could not be read: {grouping.error}")
        return
    found: Grouping = grouping.value
    if not found.candidates:
        page.muted("The grouping search recorded no candidate.")
        return
    body = []
    for i, c in enumerate(found.candidates):
        groups = " | ".join("{" + ", ".join(g) + "}" for g in c.groups)
        body.append(
            [
                _num(float(i), str(i)),
                Cell("chosen" if i == found.chosen else ""),
                Cell(groups, sort=groups),
                _num(float(len(c.groups)), str(len(c.groups))),
                _num(c.score, format_value(c.score)),
                _num(
                    c.val_delta_m,
                    format_delta_m(c.val_delta_m)
                    + (f" ± {c.val_delta_m_std:.2f}" if c.val_delta_m_std is not None else ""),
                ),
                _num(c.time_per_epoch_s, format_seconds(c.time_per_epoch_s)),
            ]
        )
    marked = frozenset({found.chosen}) if found.chosen is not None else frozenset()
    page.add(
        Table(
            ["#", "", "groups", "models", "score", "val Δm ↓", "time per epoch"], body,
            sortable=True, marked=marked,
        )
    )
    tasks = f" of {len(found.tasks)} tasks" if found.tasks else ""
    page.muted(
        f"Partitions{tasks} compared by the grouping search, on validation only (Δm mean ± std "
        "over seeds against the single-task baselines); the highlighted row is the one chosen."
    )


def _warnings_section(page: Page, run: RunData, level: int, prefix: str) -> None:
    page.heading(level, "Warnings", f"{prefix}warnings")
    totals = {str(k): v for k, v in ((run.results or {}).get("warnings") or {}).items()}
    per_epoch: dict[str, pd.Series] = {}
    if run.metrics is not None:
        rows = run.metrics[run.metrics["metric"].str.startswith(_WARNING_PREFIX)]
        for metric, group in rows.groupby("metric", sort=True):
            per_epoch[str(metric)[len(_WARNING_PREFIX) :]] = group.groupby("epoch")["value"].sum()
    names = list(dict.fromkeys([*totals, *per_epoch]))
    if not names:
        page.muted("No warnings recorded.")
        return
    body = []
    for name in names:
        series = per_epoch.get(name)
        total = totals.get(name)
        nonzero = int((series.fillna(0) != 0).sum()) if series is not None else None
        last = float(series.iloc[-1]) if series is not None and len(series) else None
        body.append(
            [
                Cell(name),
                _num(finite(total), str(total) if total is not None else "—"),
                _num(nonzero, str(nonzero) if nonzero is not None else "—"),
                _num(last, format_value(last) if last is not None else "—"),
            ]
        )
    page.add(
        Table(
            ["warning", f"count ({RESULTS_FILE})", "epochs with a count", "last epoch's value"],
            body,
        )
    )

