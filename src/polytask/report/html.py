"""One self-contained ``report.html`` for a training run or for an experiment comparing runs.

Why a single file: a report gets mailed, attached to an issue or opened from a cluster's scratch
disk weeks later. Every figure is a PNG embedded as a base64 ``data:`` URI, the stylesheet is
inline, and there is no script, font or stylesheet to fetch, so the file renders the same offline
and after the run directory is gone.

Why it reads files rather than live objects: the report is built from what the training loop wrote
to disk (``metrics.csv``, ``weights.csv``, optional ``experts.csv``, ``results.json``,
``config.yaml``; ``summary.json`` for an experiment). That is the record of the run; it works for
runs made on another machine and for a run killed half-way, which gets a report of what exists
with a visible note that it is incomplete. A file that is present but malformed (a required column
missing) is an error naming the file and the column, never a silently empty plot.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from polytask.report import plots

__all__ = [
    "EXPERIMENT_FILE",
    "EXPERTS_COLUMNS",
    "MANY_TASKS",
    "METRICS_COLUMNS",
    "REPORT_FILE",
    "RESULTS_FILE",
    "WEIGHTS_COLUMNS",
    "render_report",
    "write_report",
]

REPORT_FILE = "report.html"
RESULTS_FILE = "results.json"
EXPERIMENT_FILE = "summary.json"
METRICS_FILE = "metrics.csv"
WEIGHTS_FILE = "weights.csv"
EXPERTS_FILE = "experts.csv"
CONFIG_FILE = "config.yaml"

METRICS_COLUMNS = ("epoch", "split", "task", "metric", "value")
WEIGHTS_COLUMNS = ("step", "epoch", "task", "weight")
EXPERTS_COLUMNS = ("epoch", "task", "expert", "weight")

_RAW_POINTS_PER_TASK = 4000

MANY_TASKS = 12
"""Above this many tasks the report summarises over tasks instead of drawing each task.

Why: one panel, line, bar or column per task is readable for a handful of tasks, but with 139
(School) the figures take minutes to draw and cannot be read anyway. Past this count the figures
show the mean, median and spread over tasks, the few best and worst tasks, and a histogram of the
per-task values, and the page says so; the per-task numbers stay in the tables (collapsed).
"""
_EXTREME_TASKS = 3  # how many best and worst tasks get their own panel when summarising
_WARNING_PREFIX = "warning/"


# --------------------------------------------------------------------------------------- public
def write_report(directory: str | Path) -> Path:
    """Write ``report.html`` into a run or experiment directory and return its path.

    A directory with ``summary.json`` is an experiment (a comparison of runs); one with
    ``results.json`` is a finished run; one with only ``metrics.csv`` is a run that has not finished
    (or was killed) and is reported as incomplete.

    Raises:
        FileNotFoundError: the directory does not exist or holds none of those files.
        ValueError: a file is malformed (the message names the file and what is wrong).
    """
    directory = Path(directory)
    text = render_report(directory)
    path = directory / REPORT_FILE
    path.write_text(text, encoding="utf-8")
    return path


def render_report(directory: str | Path) -> str:
    """The HTML text :func:`write_report` writes, without writing it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"report: {directory} is not a directory")
    page = _Page()
    if (directory / EXPERIMENT_FILE).is_file():
        title = _render_experiment(page, directory)
    elif (directory / RESULTS_FILE).is_file() or (directory / METRICS_FILE).is_file():
        run = load_run(directory)
        title = f"Run {run.name}"
        _render_run(page, run, level=2, prefix="")
    else:
        raise FileNotFoundError(
            f"report: {directory} is neither an experiment directory ({EXPERIMENT_FILE}) nor a run "
            f"directory ({RESULTS_FILE}, or {METRICS_FILE} for an unfinished run)"
        )
    return page.document(title, source=directory)


# ------------------------------------------------------------------------------------- reading
@dataclass
class RunData:
    """What a run directory holds; ``None`` for a file that is not there."""

    directory: Path
    results: dict[str, Any] | None
    metrics: pd.DataFrame | None
    weights: pd.DataFrame | None
    experts: pd.DataFrame | None
    config: str | None
    missing: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
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


def load_run(directory: Path) -> RunData:
    """Read a run directory's files; an absent file becomes ``None`` and is listed in ``missing``."""
    results_path = directory / RESULTS_FILE
    results = _read_json(results_path) if results_path.is_file() else None
    missing: list[str] = []

    def optional_csv(
        name: str, reader: Any, *, truly_optional: bool = False
    ) -> pd.DataFrame | None:
        path = directory / name
        if path.is_file():
            frame: pd.DataFrame = reader(path)
            return frame
        if not truly_optional:
            missing.append(name)
        return None

    metrics = optional_csv(METRICS_FILE, read_metrics)
    weights = optional_csv(WEIGHTS_FILE, read_weights)
    experts = optional_csv(EXPERTS_FILE, read_experts, truly_optional=True)
    config_path = directory / CONFIG_FILE
    config = (
        config_path.read_text(encoding="utf-8", errors="replace") if config_path.is_file() else None
    )
    if config is None:
        missing.append(CONFIG_FILE)
    if results is None:
        missing.insert(0, RESULTS_FILE)
    return RunData(directory, results, metrics, weights, experts, config, missing)


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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------- formatting
def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def format_value(value: object) -> str:
    """A metric value: 4 decimals in the usual range, 4 significant digits outside it."""
    number = _finite(value)
    if number is None:
        return "—"
    if number == 0:
        return "0"
    if 1e-3 <= abs(number) < 1e4:
        return f"{number:.4f}"
    return f"{number:.4g}"


def format_delta_m(value: object) -> str:
    """Δm in percent with its sign, e.g. ``+3.14%`` (worse than single-task) or ``-1.20%``."""
    number = _finite(value)
    return "—" if number is None else f"{number:+.2f}%"


def format_seconds(value: object) -> str:
    number = _finite(value)
    if number is None:
        return "—"
    if number < 120:
        return f"{number:.1f} s"
    if number < 7200:
        return f"{number / 60:.1f} min"
    return f"{number / 3600:.2f} h"


def _direction(higher_is_better: object) -> str:
    if higher_is_better is True:
        return " ↑"
    if higher_is_better is False:
        return " ↓"
    return ""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


# ------------------------------------------------------------------------------------ the page
_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg-soft: #f6f8fa;
        --accent: #0969da; --warn-bg: #fff8c5; --warn-line: #d4a72c; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5;
       font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 1.8em; margin: 0 0 4px; }
h2 { font-size: 1.4em; margin: 40px 0 12px; padding-bottom: 4px;
     border-bottom: 1px solid var(--line); }
h3 { font-size: 1.15em; margin: 28px 0 8px; }
h4 { font-size: 1em; margin: 20px 0 6px; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
.source { color: var(--muted); margin: 0 0 16px; font-size: 0.9em; word-break: break-all; }
nav.toc { background: var(--bg-soft); border: 1px solid var(--line); border-radius: 6px;
          padding: 8px 20px; margin: 16px 0 24px; }
nav.toc h2 { border: 0; margin: 8px 0 4px; font-size: 1.1em; }
nav.toc ul { margin: 0; padding-left: 20px; }
nav.toc li.toc-3 { margin-left: 20px; font-size: 0.95em; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.92em; }
th, td { border: 1px solid var(--line); padding: 4px 10px; text-align: left; }
th { background: var(--bg-soft); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { background: #dafbe1; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; margin: 8px 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; }
figure { margin: 12px 0 24px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 0.88em; margin-top: 4px; }
.note { background: var(--warn-bg); border: 1px solid var(--warn-line); border-radius: 6px;
        padding: 8px 12px; margin: 12px 0; }
.muted { color: var(--muted); }
details { margin: 8px 0; }
summary { cursor: pointer; color: var(--accent); }
pre { background: var(--bg-soft); border: 1px solid var(--line); border-radius: 6px;
      padding: 12px; overflow-x: auto; font-size: 0.85em; }
"""


class _Page:
    """Collects HTML fragments and the headings for the table of contents."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.toc: list[tuple[int, str, str]] = []
        self._ids: set[str] = set()

    def heading(self, level: int, title: str, anchor: str) -> None:
        anchor = _slug(anchor)
        unique, n = anchor, 1
        while unique in self._ids:
            n += 1
            unique = f"{anchor}-{n}"
        self._ids.add(unique)
        self.toc.append((level, unique, title))
        self.parts.append(f'<h{level} id="{unique}">{_esc(title)}</h{level}>')

    def add(self, fragment: str) -> None:
        self.parts.append(fragment)

    def note(self, text: str) -> None:
        self.parts.append(f'<p class="note">{_esc(text)}</p>')

    def muted(self, text: str) -> None:
        self.parts.append(f'<p class="muted">{_esc(text)}</p>')

    def figure(self, png: bytes, alt: str, caption: str = "") -> None:
        data = base64.b64encode(png).decode("ascii")
        cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
        self.parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(alt)}">{cap}</figure>'
        )

    def _toc_html(self) -> str:
        """A flat list indented by heading level (levels 2 and 3; deeper ones are run details)."""
        entries = [(level, anchor, title) for level, anchor, title in self.toc if level <= 3]
        if not entries:
            return ""
        items = "".join(
            f'<li class="toc-{level}"><a href="#{anchor}">{_esc(title)}</a></li>'
            for level, anchor, title in entries
        )
        return f'<nav class="toc"><h2>Contents</h2><ul>{items}</ul></nav>'

    def document(self, title: str, *, source: Path) -> str:
        body = "\n".join(self.parts)
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_esc(title)} — polytask report</title>\n"
            f"<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
            f"<h1>{_esc(title)}</h1>\n"
            f'<p class="source">polytask report of {_esc(source.resolve())}</p>\n'
            f"{self._toc_html()}\n{body}\n</main>\n</body>\n</html>\n"
        )


def _table(
    header: Sequence[str],
    rows: Iterable[Sequence[tuple[str, str]]],
) -> str:
    """An HTML table; each cell is ``(escaped html, css class)``; header cells are escaped here."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{cls}">{content}</td>' if cls else f"<td>{content}</td>"
            for content, cls in row
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _facts(items: Iterable[tuple[str, str]]) -> str:
    inner = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in items)
    return f'<dl class="facts">{inner}</dl>'


def _best_rows(values: Sequence[float | None], higher_is_better: bool | None) -> set[int]:
    """Indices of the best finite values (all of them on a tie); none when direction is unknown."""
    if higher_is_better is None:
        return set()
    finite = [(i, v) for i, v in enumerate(values) if v is not None]
    if not finite:
        return set()
    best = max(v for _, v in finite) if higher_is_better else min(v for _, v in finite)
    return {i for i, v in finite if v == best}


# -------------------------------------------------------------------------------- experiments
def _render_experiment(page: _Page, directory: Path) -> str:
    path = directory / EXPERIMENT_FILE
    summary = _read_json(path)
    rows = summary.get("rows")
    if not isinstance(rows, list):
        raise ValueError(f"{path}: missing required key 'rows' (a list of compared runs)")
    tasks = [t for t in summary.get("tasks", []) if isinstance(t, dict) and "name" in t]
    title = str(summary.get("title") or directory.name)
    labels = [str(row.get("label", f"run {i + 1}")) for i, row in enumerate(rows)]
    # run headings are "run-<i>-<label>", their sections "r<i>-<section>": never the same id
    anchors = [_slug(f"run-{i + 1}-{label}") for i, label in enumerate(labels)]

    page.heading(2, "Comparison", "comparison")
    notes = [str(n) for n in summary.get("notes", [])]
    if notes:
        page.add("<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
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
            "metrics against single-task baselines, in %, lower is better."
        )
    else:
        page.note(f"{path} lists no runs.")

    page.heading(2, "Primary test metric per task", "primary-metric-chart")
    if many:
        _primary_histograms(page, rows, labels, tasks)
    else:
        _primary_bars(page, rows, labels, tasks)

    page.heading(2, "Runs", "runs")
    for i, (label, row) in enumerate(zip(labels, rows, strict=True)):
        page.heading(3, label, anchors[i])
        run_dir = row.get("run_dir")
        if not run_dir:
            page.note(f"Row {label!r} of {EXPERIMENT_FILE} names no run_dir.")
            continue
        run_path = directory / str(run_dir)
        has_run = (run_path / RESULTS_FILE).is_file() or (run_path / METRICS_FILE).is_file()
        if not has_run:
            page.note(
                f"Run directory {run_dir} not found or empty (no {RESULTS_FILE} or {METRICS_FILE})."
            )
            continue
        page.muted(f"Run directory: {run_dir}")
        _render_run(page, load_run(run_path), level=4, prefix=f"r{i + 1}-")
    return title


def _primary_bars(
    page: _Page,
    rows: Sequence[Mapping[str, Any]],
    labels: Sequence[str],
    tasks: Sequence[Mapping[str, Any]],
) -> None:
    """One bar panel per task, one bar per run (few tasks)."""
    panels: dict[str, dict[str, float]] = {}
    ylabels: dict[str, str] = {}
    for task in tasks:
        name, metric = str(task["name"]), str(task.get("primary_metric", ""))
        panel_name = f"{name} ({metric})" if metric else name
        ylabels[panel_name] = metric + _direction(task.get("higher_is_better"))
        panels[panel_name] = {}
        for label, row in zip(labels, rows, strict=True):
            value = _finite(row.get("test", {}).get(name, {}).get(metric))
            if value is not None:
                panels[panel_name][label] = value
    if any(panels.values()):
        png = plots.bar_panels(panels, "Primary test metric per task", ylabels=ylabels)
        page.figure(png, "bar chart of the primary test metric per task and method")
    else:
        page.muted("No test metrics to compare.")


def _primary_metric_groups(tasks: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Primary metric -> the tasks scored by it: only values of one metric are summarised together."""
    groups: dict[str, list[str]] = {}
    for task in tasks:
        groups.setdefault(str(task.get("primary_metric", "")), []).append(str(task["name"]))
    return groups


def _primary_histograms(
    page: _Page,
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
            found = [_finite(test.get(n, {}).get(metric)) for n in names]
            values[label] = [v for v in found if v is not None]
        if not any(values.values()):
            continue
        png = plots.histogram(
            values, f"Test {metric} over {len(names)} tasks, per run", metric or "value"
        )
        page.figure(
            png,
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
) -> str:
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
                    if (v := _finite(row.get("test", {}).get(n, {}).get(metric))) is not None
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
                _finite((row.get("summary_metrics") or {}).get("test", {}).get(key)) for row in rows
            ]
            columns.append((f"{key} (test)", values, None, "metric"))
    for task in tasks if not summarise else ():
        name, metric = str(task["name"]), str(task.get("primary_metric", ""))
        hib = task.get("higher_is_better")
        direction = hib if isinstance(hib, bool) else None
        values = [_finite(row.get("test", {}).get(name, {}).get(metric)) for row in rows]
        columns.append((f"{name} {metric}{_direction(direction)}", values, direction, "metric"))
    columns.append(
        ("Δm" + _direction(False), [_finite(r.get("delta_m")) for r in rows], False, "dm")
    )
    columns.append(
        ("time" + _direction(False), [_finite(r.get("time_s")) for r in rows], False, "t")
    )
    best = [_best_rows(values, direction) for _, values, direction, _ in columns]
    formatter = {"metric": format_value, "dm": format_delta_m, "t": format_seconds}

    body = []
    for i, (label, row) in enumerate(zip(labels, rows, strict=True)):
        link = f'<a href="#{anchors[i]}">{_esc(label)}</a>'
        cells = [(link, ""), (_esc(row.get("kind", "")), "")]
        for (_, values, _, kind), winners in zip(columns, best, strict=True):
            text = _esc(formatter[kind](values[i]))
            cells.append(
                (f"<strong>{text}</strong>", "num best") if i in winners else (text, "num")
            )
        body.append(cells)
    return _table(["method", "kind", *(c[0] for c in columns)], body)


# ---------------------------------------------------------------------------------------- runs
def _render_run(page: _Page, run: RunData, *, level: int, prefix: str) -> None:
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
    many = len(run.task_names()) > MANY_TASKS
    if many:
        page.note(
            f"{len(run.task_names())} tasks (more than {MANY_TASKS}): the figures summarise over "
            "tasks (mean, median and spread per epoch, the "
            f"{_EXTREME_TASKS} best and worst tasks by their validation primary metric, a "
            "histogram of the per-task values) instead of drawing every task; the per-task numbers "
            "are in the collapsed tables."
        )
    page.add(_overview(run, collapse=many))

    page.heading(level, "Final results" if run.complete else "Latest validation", f"{prefix}final")
    final = _final_table(run)
    if many:
        page.add(_histogram_of_primary(run))
        final = f"<details><summary>Per-task table ({len(run.task_names())} tasks)</summary>{final}</details>"
    page.add(final)

    best = run.best_epoch
    vline_label = f"best epoch {best}" if best is not None else None
    if metrics is not None:
        _loss_section(page, run, metrics, level, prefix, best, vline_label)
        _val_section(page, run, metrics, level, prefix, best, vline_label)
        _schedule_section(page, metrics, level, prefix)
    _dense_section(page, run, level, prefix)
    _weights_section(page, run, level, prefix)
    if run.experts is not None:
        _experts_section(page, run, run.experts, level, prefix)
    _warnings_section(page, run, level, prefix)

    page.heading(level, "Configuration", f"{prefix}config")
    if run.config is None:
        page.muted(f"{CONFIG_FILE} not found.")
    else:
        page.add(
            f"<details><summary>{_esc(CONFIG_FILE)} (resolved)</summary>"
            f"<pre>{_esc(run.config)}</pre></details>"
        )


def _overview(run: RunData, *, collapse: bool = False) -> str:
    results = run.results or {}
    facts: list[tuple[str, str]] = [("name", run.name)]
    for key in ("balancer", "architecture"):
        if results.get(key) is not None:
            facts.append((key, str(results[key])))
    if run.complete:
        facts.append(("best epoch", str(run.best_epoch) if run.best_epoch is not None else "—"))
        facts.append(("selection", str(results.get("selection", "—"))))
        facts.append(("test Δm (vs single-task)", format_delta_m(results.get("delta_m"))))
        epochs = results.get("epochs")
        facts.append(("epochs", str(epochs) if epochs is not None else "—"))
        facts.append(("time", format_seconds(results.get("time_s"))))
        params = results.get("num_parameters")
        if isinstance(params, int):
            facts.append(("parameters", f"{params:,}"))
    html_parts = [_facts(facts)]
    info = run.task_info()
    if info:
        body = [
            [
                (_esc(name), ""),
                (_esc(t.get("kind", "")), ""),
                (
                    _esc(str(t.get("primary_metric", "")) + _direction(t.get("higher_is_better"))),
                    "",
                ),
            ]
            for name, t in info.items()
        ]
        table = _table(["task", "kind", "primary metric"], body)
        if collapse:
            table = f"<details><summary>Tasks ({len(body)})</summary>{table}</details>"
        html_parts.append(table)
    return "".join(html_parts)


def _final_primary(run: RunData, split: str) -> dict[str, float]:
    """Each task's primary metric on ``split`` at the selected epoch (results.json); else latest val."""
    info = run.task_info()
    if run.complete:
        values = (run.results or {}).get(split) or {}
        found = {
            t: _finite(values.get(t, {}).get(info.get(t, {}).get("primary_metric")))
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


def _histogram_of_primary(run: RunData) -> str:
    """A figure (as HTML) of the per-task primary metric at the selected epoch, val and test."""
    info = run.task_info()
    metrics = {str(info.get(t, {}).get("primary_metric", "")) for t in run.task_names()}
    if len(metrics) != 1:
        return ""
    metric = metrics.pop()
    values = {split: list(_final_primary(run, split).values()) for split in ("val", "test")}
    values = {k: v for k, v in values.items() if v}
    if not values:
        return ""
    page = _Page()
    png = plots.histogram(values, f"{metric} per task ({len(run.task_names())} tasks)", metric)
    page.figure(
        png,
        f"histogram of the per-task {metric}",
        f"Summarised: the tasks counted by their {metric} at the selected epoch.",
    )
    return "".join(page.parts)


def _ordered_metrics(names: Iterable[str], primary: str | None) -> list[str]:
    unique = sorted(set(names))
    if primary in unique:
        unique.remove(primary)
        unique.insert(0, primary)
    return unique


def _final_table(run: RunData) -> str:
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
                row = [
                    (_esc(task), ""),
                    (_esc(label), ""),
                    (_esc(format_value(val.get(task, {}).get(metric))), "num"),
                    (_esc(format_value(test.get(task, {}).get(metric))), "num"),
                ]
                if stl:
                    row.append((_esc(format_value(stl.get(task, {}).get(metric))), "num"))
                body.append(row)
        return _table(header, body) if body else '<p class="muted">No metrics in results.json.</p>'

    metrics = run.metrics
    if metrics is None:
        return f'<p class="muted">No {METRICS_FILE}, nothing recorded.</p>'
    val = metrics[(metrics["split"] == "val") & (metrics["task"] != "")].dropna(subset=["value"])
    if val.empty:
        return '<p class="muted">No validation metrics recorded yet.</p>'
    last = int(val["epoch"].max())
    latest = val[val["epoch"] == last]
    body = []
    for task in run.task_names():
        rows = latest[latest["task"] == task]
        values = dict(zip(rows["metric"], rows["value"], strict=True))
        for metric in _ordered_metrics(values, info.get(task, {}).get("primary_metric")):
            body.append(
                [(_esc(task), ""), (_esc(metric), ""), (_esc(format_value(values[metric])), "num")]
            )
    return _table(["task", "metric", f"val (epoch {last}, last recorded)"], body)


def _curve(frame: pd.DataFrame) -> plots.Series:
    """Mean value per epoch (one row per epoch is expected; duplicates are averaged)."""
    per_epoch = frame.groupby("epoch")["value"].mean().sort_index()
    return ([float(x) for x in per_epoch.index], [float(y) for y in per_epoch.to_numpy()])


def _loss_section(
    page: _Page,
    run: RunData,
    metrics: pd.DataFrame,
    level: int,
    prefix: str,
    best: int | None,
    vline_label: str | None,
) -> None:
    losses = metrics[(metrics["metric"] == "loss") & (metrics["split"] != "test")]
    losses = losses.dropna(subset=["value"])
    page.heading(level, "Losses", f"{prefix}losses")
    if losses.empty:
        page.muted("No losses recorded.")
        return
    panels: dict[str, dict[str, plots.Series]] = {}
    total = losses[losses["task"] == ""]
    if not total.empty:
        panels["total"] = {split: _curve(g) for split, g in total.groupby("split", sort=False)}
    names = run.task_names()
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
            panels[title] = {split: _curve(g) for split, g in rows.groupby("split", sort=False)}
    png = plots.line_panels(panels, "Loss per task", "epoch", vline=best, vline_label=vline_label)
    page.figure(png, "loss curves per task", caption)


def _stat_curve(frame: pd.DataFrame, stat: str) -> plots.Series:
    """Per epoch, ``stat`` (mean, median, min, max, or a quantile "q10") over the tasks' values."""
    grouped = frame.groupby("epoch")["value"]
    quantile = stat.startswith("q")
    per_epoch = grouped.quantile(int(stat[1:]) / 100) if quantile else grouped.agg(stat)
    per_epoch = per_epoch.sort_index()
    return ([float(x) for x in per_epoch.index], [float(y) for y in per_epoch.to_numpy()])


def _val_section(
    page: _Page,
    run: RunData,
    metrics: pd.DataFrame,
    level: int,
    prefix: str,
    best: int | None,
    vline_label: str | None,
) -> None:
    val = metrics[(metrics["split"] == "val") & (metrics["metric"] != "loss")]
    val = val.dropna(subset=["value"])
    val = val[~val["metric"].str.startswith(_WARNING_PREFIX)]
    per_task = val[val["task"] != ""]
    run_level = val[val["task"] == ""]  # delta_m, the selection score
    page.heading(level, "Validation metrics", f"{prefix}validation")
    if val.empty:
        page.muted("No validation metrics recorded.")
        return
    panels: dict[str, dict[str, plots.Series]] = {}
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
    png = plots.line_panels(
        panels, "Validation metrics", "epoch", ylabels=ylabels, vline=best, vline_label=vline_label
    )
    caption = (
        f"Summarised over {len(order)} tasks: one panel per metric, with the mean, median, 10th "
        "and 90th percentile over tasks per epoch; run-level values (Δm, selection score) last."
        if many
        else "One panel per metric, one line per task; run-level values (Δm, selection score) last."
    )
    page.figure(png, "validation metrics per epoch", caption)


def _schedule_section(page: _Page, metrics: pd.DataFrame, level: int, prefix: str) -> None:
    run_level = metrics[(metrics["task"] == "") & ~metrics["split"].isin(("val", "test"))]
    run_level = run_level.dropna(subset=["value"])
    run_level = run_level[
        (run_level["metric"] != "loss") & ~run_level["metric"].str.startswith(_WARNING_PREFIX)
    ]
    if run_level.empty:
        return
    page.heading(level, "Learning rate and timing", f"{prefix}schedule")
    panels = {
        metric: {split: _curve(g) for split, g in rows.groupby("split", sort=False)}
        for metric, rows in run_level.groupby("metric", sort=False)
    }
    png = plots.line_panels(
        panels, "Run-level values per epoch", "epoch", ylabels=dict.fromkeys(panels, "")
    )
    page.figure(png, "learning rate and epoch time per epoch")


def _weights_section(page: _Page, run: RunData, level: int, prefix: str) -> None:
    page.heading(level, "Task weights", f"{prefix}weights")
    weights = run.weights
    if weights is None:
        page.muted(f"{WEIGHTS_FILE} not found.")
        return
    if weights.empty:
        page.muted("No task weights recorded.")
        return
    steps_per_epoch = weights.groupby("epoch")["step"].nunique()
    window = max(1, int(steps_per_epoch.median()))
    smooth: dict[str, plots.Series] = {}
    raw: dict[str, plots.Series] = {}
    names = run.task_names()
    if len(names) > MANY_TASKS:
        _weights_summary(page, weights, names, window)
        return
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
    png = plots.line_plot(smooth, "Task weights applied by the balancer", "step", "weight", raw=raw)
    caption = (
        f"Thick: rolling mean over {window} step(s) (about one epoch); thin: the weight at each "
        "step."
    )
    page.figure(png, "task weights over training steps", caption)
    last = int(weights["epoch"].max())
    final = weights[weights["epoch"] == last].groupby("task")["weight"].mean()
    body = [
        [(_esc(t), ""), (_esc(format_value(float(final[t]))), "num")]
        for t in run.task_names()
        if t in final.index
    ]
    page.add(_table(["task", f"mean weight in epoch {last}"], body))


def _weights_summary(page: _Page, weights: pd.DataFrame, names: Sequence[str], window: int) -> None:
    """Many tasks: the mean, min and max weight over tasks per step, and a collapsed table."""
    rows = weights[weights["task"].isin(names)]
    if rows.empty:
        page.muted("No task weights recorded for the run's tasks.")
        return
    per_step = rows.groupby(["step", "task"])["weight"].mean().unstack("task")
    stride = max(1, len(per_step) // _RAW_POINTS_PER_TASK)
    xs = [float(x) for x in per_step.index][::stride]
    smooth: dict[str, plots.Series] = {}
    for label, series in (
        ("mean", per_step.mean(axis=1)),
        ("min", per_step.min(axis=1)),
        ("max", per_step.max(axis=1)),
    ):
        rolled = series.rolling(window, min_periods=1, center=True).mean()
        smooth[label] = (xs, [float(y) for y in rolled.to_numpy()[::stride]])
    png = plots.line_plot(smooth, f"Task weights over {len(names)} tasks", "step", "weight")
    page.figure(
        png,
        "mean, min and max task weight over training steps",
        f"Summarised over {len(names)} tasks: mean, smallest and largest weight at each step, "
        f"rolling mean over {window} step(s) (about one epoch).",
    )
    last = int(weights["epoch"].max())
    final = weights[weights["epoch"] == last].groupby("task")["weight"].mean()
    body = [
        [(_esc(t), ""), (_esc(format_value(float(final[t]))), "num")]
        for t in names
        if t in final.index
    ]
    table = _table(["task", f"mean weight in epoch {last}"], body)
    page.add(f"<details><summary>Per-task weights ({len(body)} tasks)</summary>{table}</details>")


def _expert_order(experts: Iterable[str]) -> list[str]:
    def key(name: str) -> tuple[int, int, str]:
        return (0, int(name), name) if name.isdigit() else (1, 0, name)

    return sorted(set(experts), key=key)


def _experts_section(
    page: _Page, run: RunData, experts: pd.DataFrame, level: int, prefix: str
) -> None:
    page.heading(level, "Expert usage", f"{prefix}experts")
    if experts.empty:
        page.muted("No expert gate weights recorded.")
        return
    last = int(experts["epoch"].max())
    expert_names = _expert_order(experts["expert"])
    tasks = [t for t in run.task_names() if t in set(experts["task"])]
    final = experts[experts["epoch"] == last].groupby(["task", "expert"])["weight"].mean()
    matrix = [[float(final.get((t, e), math.nan)) for e in expert_names] for t in tasks]
    png = plots.heatmap(
        matrix,
        tasks,
        expert_names,
        f"Mean gate weight per expert, epoch {last}",
        xlabel="expert",
        ylabel="task",
        colorbar_label="gate weight",
    )
    page.figure(png, f"expert gate weights per task at epoch {last}")
    if len(run.task_names()) > MANY_TASKS:
        mean = experts[experts["task"].isin(tasks)].groupby(["expert", "epoch"])["weight"].mean()
        series = {
            e: ([float(x) for x in mean.loc[e].index], [float(y) for y in mean.loc[e].to_numpy()])
            for e in expert_names
            if e in mean.index.get_level_values("expert")
        }
        png = plots.line_plot(
            series, f"Gate weight per expert, mean over {len(tasks)} tasks", "epoch", "weight"
        )
        page.figure(
            png,
            "mean expert gate weights over epochs",
            f"Summarised: one line per expert, its gate weight averaged over {len(tasks)} tasks.",
        )
        return
    per_epoch = experts.groupby(["task", "expert", "epoch"])["weight"].mean()
    panels: dict[str, dict[str, plots.Series]] = {}
    for task in tasks:
        panels[task] = {}
        for expert in expert_names:
            if (task, expert) in per_epoch.index.droplevel("epoch"):
                series = per_epoch.loc[(task, expert)].sort_index()
                panels[task][expert] = (
                    [float(x) for x in series.index],
                    [float(y) for y in series.to_numpy()],
                )
    png = plots.line_panels(
        panels,
        "Gate weight per expert over epochs",
        "epoch",
        ylabels=dict.fromkeys(panels, "weight"),
    )
    page.figure(png, "expert gate weights over epochs", "One panel per task, one line per expert.")


def _dense_section(page: _Page, run: RunData, level: int, prefix: str) -> None:
    """Predicted masks and maps beside the truth, when the run saved dense validation samples."""
    from polytask.evaluation.dense_samples import DENSE_SAMPLES_FILE, read_dense_samples

    path = run.directory / DENSE_SAMPLES_FILE
    if not path.exists():
        return
    page.heading(level, "Dense predictions", f"{prefix}dense")
    try:
        samples = read_dense_samples(path)
    except (OSError, ValueError, KeyError) as err:
        page.note(f"{DENSE_SAMPLES_FILE} could not be read: {err}")
        return
    page.figure(
        plots.dense_samples(samples["input"], samples["tasks"], "first validation samples"),
        "input, truth and prediction of each dense task",
        "The first validation samples, predicted by the selected model: each dense task's truth "
        "beside its prediction (grey: unlabelled pixels; classes keep one colour; a depth map's "
        "truth and prediction share one colour scale, and its prediction is shown where the "
        "truth is labelled).",
    )


def _warnings_section(page: _Page, run: RunData, level: int, prefix: str) -> None:
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
                (_esc(name), ""),
                (_esc(total if total is not None else "—"), "num"),
                (_esc(nonzero if nonzero is not None else "—"), "num"),
                (_esc(format_value(last) if last is not None else "—"), "num"),
            ]
        )
    page.add(
        _table(
            ["warning", f"count ({RESULTS_FILE})", "epochs with a count", "last epoch's value"],
            body,
        )
    )
