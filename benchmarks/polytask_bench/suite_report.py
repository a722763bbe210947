"""Published results: the cells of a benchmark run as Markdown tables and PNG plots.

Everything here is read from the cell JSON files :mod:`polytask_bench.suite` wrote, so a report
can be rebuilt on any machine, from a finished or a partial run; a partial run says which cells
are missing instead of silently averaging fewer of them.

Why these choices:

- Test metrics of the checkpoint selected on validation (the selection rule is printed with each
  table); the test split never chooses anything, including the tuned baseline's lr / weight decay.
- Mean ± sample standard deviation over seeds; ``n`` is printed because a std over two seeds says
  little, and a best marked over overlapping error bars is a tie, not a win.
- Each table carries the exact ``polytask bench run`` command(s) that produced its cells, read
  from the cells themselves (not reconstructed), plus the ``polytask bench report`` command.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polytask.report.plots import key_colors, new_figure, set_margins, to_png
from polytask_bench.suite import CELLS_DIR, describe_rule, iter_cells, stl_selection

__all__ = ["MethodRow", "aggregate", "write_results"]

# More tasks than this: the main table shows the mean over tasks, the per-task table goes below.
MAX_TASK_COLUMNS = 6
# More tasks than this: no per-task table or per-task bars at all (e.g. School's 139 schools).
MAX_TASK_DETAIL = 20


def _mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return (math.nan, math.nan, 0)
    std = statistics.stdev(finite) if len(finite) > 1 else math.nan
    return (statistics.fmean(finite), std, len(finite))


@dataclass
class MethodRow:
    """One method of one (data set, architecture) pair, aggregated over its seeds."""

    method: str
    kind: str
    seeds: list[int]
    task: dict[str, tuple[float, float, int]] = field(default_factory=dict)
    val_task: dict[str, tuple[float, float, int]] = field(default_factory=dict)
    mean_primary: tuple[float, float, int] = (math.nan, math.nan, 0)
    delta_m: tuple[float, float, int] = (math.nan, math.nan, 0)
    val_delta_m: tuple[float, float, int] = (math.nan, math.nan, 0)
    time_per_epoch: tuple[float, float, int] = (math.nan, math.nan, 0)
    peak_memory: tuple[float, float, int] = (math.nan, math.nan, 0)
    summary: dict[str, tuple[float, float, int]] = field(default_factory=dict)
    parameters: int | None = None
    selection: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class Group:
    dataset: str
    architecture: str
    tasks: list[dict[str, Any]]
    rows: list[MethodRow]
    grid: list[MethodRow]
    cells: list[dict[str, Any]]

    @property
    def slug(self) -> str:
        return f"{self.dataset}-{self.architecture}"


def _order(method: str, kind: str, suite_order: Sequence[str]) -> tuple[int, int, str]:
    rank = {"stl": 0, "mtl": 1, "libmtl": 2, "tuned": 3, "grid": 4}.get(kind, 5)
    pos = suite_order.index(method) if method in suite_order else len(suite_order)
    return (rank, pos, method)


def aggregate(cells: Sequence[Mapping[str, Any]], suite_order: Sequence[str] = ()) -> list[Group]:
    """Group cells by (data set, architecture) and aggregate each method over its seeds."""
    pairs: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for cell in cells:
        pairs.setdefault((cell["dataset"], cell["architecture"]), []).append(cell)
    groups = []
    for (dataset, arch), members in pairs.items():
        tasks = members[0]["tasks"]
        by_method: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
        for cell in members:
            by_method.setdefault((cell["method"], cell["kind"]), []).append(cell)
        rows = []
        for (method, kind), runs in sorted(
            by_method.items(), key=lambda kv: _order(kv[0][0], kv[0][1], suite_order)
        ):
            runs = sorted(runs, key=lambda c: c["seed"])
            row = MethodRow(method=method, kind=kind, seeds=[int(c["seed"]) for c in runs])
            for t in tasks:
                name, metric = t["name"], t["primary_metric"]
                row.task[name] = _mean_std([c["test"].get(name, {}).get(metric) for c in runs])
                row.val_task[name] = _mean_std([c["val"].get(name, {}).get(metric) for c in runs])
            row.mean_primary = _mean_std([_mean_over_tasks(c, tasks) for c in runs])
            row.delta_m = _mean_std([c.get("delta_m") for c in runs])
            row.val_delta_m = _mean_std([c.get("val_delta_m") for c in runs])
            row.time_per_epoch = _mean_std([c.get("time_per_epoch_s") for c in runs])
            for name in sorted({n for c in runs for n in c.get("summary", {}).get("test", {})}):
                row.summary[name] = _mean_std(
                    [c.get("summary", {}).get("test", {}).get(name) for c in runs]
                )
            row.peak_memory = _mean_std([c.get("peak_memory_mb") for c in runs])
            row.parameters = runs[0].get("num_parameters")
            row.selection = describe_rule(str(runs[0].get("selection", "")))
            if kind == "stl" and runs[0].get("config"):  # derived, so older cells read right too
                row.selection = stl_selection(runs[0]["config"])
            if kind == "tuned" and runs[0].get("tuning"):
                tuning = runs[0]["tuning"]
                row.notes.append(
                    f"lr={tuning['lr']:g}, weight_decay={tuning['weight_decay']:g}; "
                    f"{tuning['chosen_by']}"
                )
            rows.append(row)
        groups.append(
            Group(
                dataset=dataset, architecture=arch, tasks=tasks,
                rows=[r for r in rows if r.kind != "grid"],
                grid=[r for r in rows if r.kind == "grid"], cells=list(members),  # type: ignore[arg-type]
            )
        )
    return groups


def _mean_over_tasks(cell: Mapping[str, Any], tasks: Sequence[Mapping[str, Any]]) -> float:
    values = [cell["test"].get(t["name"], {}).get(t["primary_metric"]) for t in tasks]
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.fmean(finite) if finite else math.nan


# ---------------------------------------------------------------------------------------------
# Markdown


def _fmt(ms: tuple[float, float, int], digits: int, signed: bool = False) -> str:
    mean, std, n = ms
    if n == 0 or not math.isfinite(mean):
        return "—"
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    if n > 1 and math.isfinite(std):
        text += f" ± {std:.{digits}f}"
    return text


def _best(rows: Sequence[MethodRow], get: Any, higher: bool | None) -> set[int]:
    """Indices of the rows whose mean is the best of the column (ties all marked)."""
    if higher is None:
        return set()
    values = [(i, get(r)[0]) for i, r in enumerate(rows) if get(r)[2] > 0 and math.isfinite(get(r)[0])]
    if len(values) < 2:
        return set()
    target = max(v for _, v in values) if higher else min(v for _, v in values)
    best = {i for i, v in values if math.isclose(v, target, rel_tol=1e-9, abs_tol=1e-12)}
    return set() if len(best) == len(values) else best  # all tied: nobody is best


def _digits(metric: str) -> int:
    del metric  # one precision for every metric: 4 digits separate seeds on 10k-row test sets
    return 4


def _cell_text(ms: tuple[float, float, int], digits: int, bold: bool, signed: bool = False) -> str:
    text = _fmt(ms, digits, signed)
    return f"**{text}**" if bold and text != "—" else text


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return out


def _main_table(group: Group) -> list[str]:
    rows, tasks = group.rows, group.tasks
    per_task = len(tasks) <= MAX_TASK_COLUMNS
    header = ["method", "n"]
    # getter, higher is better (None: mark nothing), digits, signed
    columns: list[tuple[Any, bool | None, int, bool]] = []
    if per_task:
        for t in tasks:
            header.append(f"{t['name']} {t['primary_metric']} {'↑' if t['higher_is_better'] else '↓'}")
            columns.append((lambda r, n=t["name"]: r.task[n], t["higher_is_better"],
                            _digits(t["primary_metric"]), False))
    else:
        metrics = sorted({t["primary_metric"] for t in tasks})
        directions = {bool(t["higher_is_better"]) for t in tasks}
        name = metrics[0] if len(metrics) == 1 else "primary metric"
        arrow = {frozenset({True}): "↑", frozenset({False}): "↓"}.get(frozenset(directions), "")
        header.append(f"mean {name} over {len(tasks)} tasks {arrow}".rstrip())
        # with mixed directions a mean has no "better" side: nothing is marked
        columns.append((lambda r: r.mean_primary, None if not arrow else arrow == "↑", 4, False))
    # whole-model metrics (e.g. School's pooled explained variance, in %): higher is better
    for name in sorted({n for r in rows for n in r.summary}):
        header.append(f"test {name} ↑")
        columns.append((lambda r, n=name: r.summary.get(n, (math.nan, math.nan, 0)), True, 2, False))
    header += ["Δm% ↓", "val Δm% ↓", "s / epoch ↓", "peak MiB ↓", "parameters"]
    columns += [
        (lambda r: r.delta_m, False, 2, True),
        (lambda r: r.val_delta_m, False, 2, True),
        (lambda r: r.time_per_epoch, False, 3, False),
        # CPU RSS growth is a lower bound that the allocator's reuse often hides (0 MiB): no "best"
        (lambda r: r.peak_memory, None if _cpu_memory(group) else False, 1, False),
    ]
    best = [_best(rows, get, higher) for get, higher, _, _ in columns]
    lines = []
    for i, r in enumerate(rows):
        line = [_label(r), str(len(r.seeds))]
        for (get, _, digits, signed), marks in zip(columns, best, strict=True):
            line.append(_cell_text(get(r), digits, i in marks, signed))
        line.append(f"{r.parameters:,}" if r.parameters is not None else "—")
        lines.append(line)
    return _table(header, lines)


def _cpu_memory(group: Group) -> bool:
    return any(str(c.get("memory_measure", "")).startswith("CPU") for c in group.cells)


def _label(row: MethodRow) -> str:
    if row.kind == "stl":
        return "STL (one model per task)"
    if row.kind == "tuned":
        return "equal (tuned lr/wd)"
    if row.kind == "libmtl":
        return f"LibMTL {row.method.removeprefix('libmtl-')}"
    return row.method


def _task_table(group: Group) -> list[str]:
    header = ["method", *[t["name"] for t in group.tasks]]
    getters = [(lambda r, n=t["name"]: r.task[n], t["higher_is_better"], _digits(t["primary_metric"]))
               for t in group.tasks]
    best = [_best(group.rows, get, higher) for get, higher, _ in getters]
    lines = []
    for i, r in enumerate(group.rows):
        lines.append([_label(r)] + [
            _cell_text(get(r), digits, i in marks)
            for (get, _, digits), marks in zip(getters, best, strict=True)
        ])
    return _table(header, lines)


def _libmtl_table(group: Group) -> list[str]:
    """polytask's and LibMTL's cell of each shared method: quality, time per epoch, the verdicts.

    "same result" is |difference of means| <= the larger of the two standard deviations ("within
    one standard deviation", the criterion docs/results.md states); the compared quantity is Δm% when single-task
    baselines exist, else the mean primary metric over tasks.
    """
    ours = {r.method: r for r in group.rows if r.kind == "mtl"}
    pairs = [(ours[r.method.removeprefix("libmtl-")], r) for r in group.rows
             if r.kind == "libmtl" and r.method.removeprefix("libmtl-") in ours]
    if not pairs:
        return []
    use_dm = any(p.delta_m[2] for p, _ in pairs)
    quantity = "test Δm% ↓" if use_dm else "test mean primary"
    lines = []
    for p, lib in pairs:
        get = (lambda r: r.delta_m) if use_dm else (lambda r: r.mean_primary)
        (pm, ps, pn), (lm, ls, ln) = get(p), get(lib)
        same = "—"
        if min(pn, ln) == 1:
            same = "n/a (one seed: no std)"
        elif pn and ln and math.isfinite(pm) and math.isfinite(lm):
            spread = max(v for v in (ps, ls, 0.0) if math.isfinite(v))
            same = "yes" if abs(pm - lm) <= spread else f"no (Δ {abs(pm - lm):.2f})"
        (pt, _, ptn), (lt, _, ltn) = p.time_per_epoch, lib.time_per_epoch
        ratio, faster = "—", "—"
        if ptn and ltn and lt > 0:
            ratio = f"{pt / lt:.2f}"
            faster = "yes" if pt <= lt else "no"
        lines.append([p.method, _fmt(get(p), 2, use_dm), _fmt(get(lib), 2, use_dm), same,
                      _fmt(p.time_per_epoch, 3), _fmt(lib.time_per_epoch, 3), ratio, faster])
    header = ["method", f"polytask {quantity}", f"LibMTL {quantity}", "same result (1 std)",
              "polytask s / epoch", "LibMTL s / epoch", "time ratio", "polytask ≤ LibMTL"]
    return _table(header, lines)


def _grid_table(group: Group) -> list[str]:
    tuned = next((r for r in group.rows if r.kind == "tuned"), None)
    lines = []
    for r in group.grid:
        lines.append([r.method.removeprefix("equal_grid-"), ", ".join(map(str, r.seeds)),
                      _fmt(r.val_delta_m, 2, signed=True), _fmt(r.mean_primary, 4)])
    out = _table(["grid point", "seeds", "val Δm% (chooses)", "test mean primary (not used)"], lines)
    if tuned is not None and tuned.notes:
        out.append("")
        out.append(f"Chosen: {tuned.notes[0]}.")
    return out


def _commands(cells: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted({str(c.get("command") or "") for c in cells if c.get("command")})


def _environment(cells: Sequence[Mapping[str, Any]]) -> str:
    envs = {json.dumps({k: c.get("environment", {}).get(k) for k in
                        ("device", "gpu", "torch", "python", "cpu_count", "torch_threads")},
                       sort_keys=True) for c in cells}
    parts = []
    for text in sorted(envs):
        env = json.loads(text)
        desc = f"device {env['device']}" + (f" ({env['gpu']})" if env.get("gpu") else "")
        desc += (f", torch {env['torch']}, Python {env['python']}, {env['cpu_count']} CPUs, "
                 f"{env['torch_threads']} torch threads")
        parts.append(desc)
    return "; ".join(parts)


def _group_section(
    group: Group, md_dir: Path, stem: str, report_command: str, level: int = 2
) -> list[str]:
    lines = [f"{'#' * level} {group.dataset} — {group.architecture}", ""]
    selection = sorted({r.selection for r in group.rows if r.kind in ("mtl", "tuned") and r.selection})
    lines.append(
        "Test metrics of the checkpoint selected on the validation split, mean ± sample std over "
        "seeds (n = seeds); **bold** = best mean of the column (a tie within the std is not a win). "
        "Δm% is against the single-task baselines of the same seed, on each task's primary metric "
        "(lower is better)."
    )
    lines.append("")
    lines += _main_table(group)
    lines.append("")
    if len(group.tasks) > MAX_TASK_COLUMNS and len(group.tasks) <= MAX_TASK_DETAIL:
        lines += ["<details><summary>per task (test primary metric)</summary>", ""]
        lines += _task_table(group)
        lines += ["", "</details>", ""]
    lines.append(f"- model selection: {'; '.join(selection) or 'see cells'}; STL: "
                 + next((r.selection for r in group.rows if r.kind == "stl"), "—"))
    notes = {c.get("memory_measure") for c in group.cells if c.get("kind") != "stl"}
    lines.append(f"- peak memory: {'; '.join(sorted(n for n in notes if n))}")
    lines.append("- s / epoch: training steps + validation pass; STL: sum over its per-task models")
    lines.append(f"- environment: {_environment(group.cells)}")
    side = _libmtl_table(group)
    if side:
        versions = sorted({str(c.get("libmtl", {}).get("version")) for c in group.cells
                           if c.get("kind") == "libmtl"})
        rep = sorted({bool(c.get("libmtl", {}).get("rep_grad")) for c in group.cells
                      if c.get("kind") == "libmtl"})
        lines += [
            "", f"Side by side with LibMTL {', '.join(versions)} (its HPS + weighting classes "
            f"and per-step `backward`, rep_grad={', '.join(map(str, rep))}; identical trunk, "
            "heads, initial weights, batches, optimizer, seeds, early stopping and validation "
            "rule; its Trainer's per-batch metrics and per-epoch test pass are left out of its "
            "time, in its favour):", "",
        ]
        lines += side
    if group.grid:
        lines += ["", "Tuning grid of the equal-weights baseline (validation only):", ""]
        lines += _grid_table(group)
    lines += ["", "Reproduce (run, then report):", "", "```"]
    lines += [*_commands(group.cells), report_command, "```", ""]
    for kind, title in (("tasks", "per-task test metric"), ("pareto", "Pareto plot"),
                        ("dm-time", "Δm% vs time per epoch")):
        png = _plot(kind, group)
        if png is None:
            continue
        name = f"{stem}-{group.slug}-{kind}.png"
        (md_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (md_dir / name).write_bytes(png)
        lines.append(f"![{group.dataset} {group.architecture}: {title}]({name})")
    lines.append("")
    return lines


def _suite_section(
    results_dir: Path, md_dir: Path, stem: str, report_command: str, level: int
) -> list[str]:
    """The status, description and every (data set, architecture) group of one results dir."""
    if not (results_dir / CELLS_DIR).is_dir():
        raise FileNotFoundError(f"{results_dir} holds no '{CELLS_DIR}/' directory (not a bench run)")
    cells = list(iter_cells(results_dir))
    if not cells:
        raise FileNotFoundError(f"{results_dir / CELLS_DIR} holds no finished cell")
    suite_info: dict[str, Any] = {}
    if (results_dir / "suite.json").exists():
        suite_info = json.loads((results_dir / "suite.json").read_text())
    suite = suite_info.get("suite", {})
    order = [b.get("label") or b["name"] for b in suite.get("balancers", [])]
    expected = suite_info.get("expected_cells", [])
    selected = suite_info.get("selected_cells") or expected
    partial = bool(expected) and set(selected) != set(expected)
    full_count = len(expected)
    expected = [s for s in expected if s in set(selected)] if partial else expected
    done = {c["cell"] for c in cells}
    failed = sorted(p.name.removesuffix(".failed.json")
                    for p in (results_dir / CELLS_DIR).glob("*.failed.json"))
    missing = [s for s in expected if s not in done and s not in failed]
    name = suite.get("name") or results_dir.name
    title = name if level == 1 else results_dir.resolve().name  # unique among several dirs
    lines = [f"{'#' * level} Benchmark results: {title}", ""]
    if title != name:
        lines += [f"Suite `{name}` ({suite_info.get('suite_file') or 'suite file not recorded'}).", ""]
    if suite.get("description"):
        lines += [suite["description"].strip(), ""]
    lines.append(
        f"Status: {len(done & set(expected)) if expected else len(done)} of "
        f"{len(expected) or len(done)} cells finished"
        + (f", {len(failed)} failed" if failed else "")
        + (f", {len(missing)} not run" if missing else "")
        + (f" (the runs selected {len(expected)} of the suite's {full_count} cells with --only)"
           if partial else "")
        + ". Every figure below comes from these cells; nothing is copied from elsewhere."
    )
    if failed:
        lines += ["", "Failed cells (see `cells/<cell>.failed.json`): " + ", ".join(failed)]
    if missing:
        shown = ", ".join(missing[:30]) + (f" and {len(missing) - 30} more" if len(missing) > 30 else "")
        lines += ["", f"Not run: {shown}"]
    lines.append("")
    for group in aggregate(cells, order):
        lines += _group_section(group, md_dir, stem, report_command, level + 1)
    return lines


def write_results(
    results_dir: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    report_command: str = "",
    preface: str | None = None,
) -> Path:
    """Write the Markdown (and its PNGs beside it) for every cell under ``results_dir``.

    Several results directories make one page: ``preface`` (Markdown, e.g. the findings and the
    targets, written by a person) first, then one section per directory. PNG names carry the
    directory's name, so two runs of the same data set do not overwrite each other's plots.
    """
    dirs = [Path(results_dir)] if isinstance(results_dir, (str, Path)) else [Path(d) for d in results_dir]
    if not dirs:
        raise ValueError("no results directory given")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(dirs) == 1 and preface is None:
        lines = _suite_section(dirs[0], out.parent, out.stem, report_command, level=1)
    else:
        lines = [preface.rstrip(), ""] if preface else ["# Benchmark results", ""]
        for d in dirs:  # the many PNGs go to a folder named after the page
            lines += _suite_section(d, out.parent, f"{out.stem}/{d.resolve().name}",
                                    report_command, level=2)
    out.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------
# Plots: drawn with the figure helpers of polytask's run report (matplotlib's Agg canvas directly:
# no pyplot state, safe without a display), so both reports' figures look and behave alike.


def _scatter_axes(
    rows: Sequence[MethodRow], height: float, left: float
) -> tuple[Any, Any, list[str], dict[str, Any]]:
    """A 6-inch-wide figure with one axes, and each row's label and colour (one point per row)."""
    labels = [_label(r) for r in rows]
    fig = new_figure(6.0, height)
    set_margins(fig, left=left, bottom=0.65)
    return fig, fig.add_subplot(), labels, key_colors(labels)


def _png(fig: Any, ax: Any, grid_axis: str = "both") -> bytes:
    """Every plot here ends alike: a light grid, a small legend, PNG bytes."""
    ax.grid(True, axis=grid_axis, alpha=0.3)
    ax.legend(fontsize="x-small", framealpha=0.7)
    return to_png(fig)


def _plot(kind: str, group: Group) -> bytes | None:
    if kind == "tasks":
        return _task_bars(group)
    if kind == "pareto":
        return _pareto(group)
    return _dm_time(group)


def _task_bars(group: Group) -> bytes | None:
    rows = group.rows
    if len(group.tasks) <= MAX_TASK_DETAIL:
        names = [t["name"] for t in group.tasks]
        values = {t["name"]: {_label(r): r.task[t["name"]] for r in rows} for t in group.tasks}
        ylabel = " / ".join(sorted({t["primary_metric"] for t in group.tasks}))
    else:
        names = ["mean over tasks"]
        values = {names[0]: {_label(r): r.mean_primary for r in rows}}
        ylabel = f"mean {group.tasks[0]['primary_metric']}"
    labels = [_label(r) for r in rows]
    colors = key_colors(labels)
    fig = new_figure(max(6.0, 1.0 + 0.5 * len(names) * max(1, len(labels)) * 0.45), 4.2)
    set_margins(fig, top=0.45, bottom=0.9 if len(names) > 4 else 0.55)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        xs, ys, es = [], [], []
        for i, name in enumerate(names):
            mean, std, n = values[name][label]
            if n == 0 or not math.isfinite(mean):
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(mean)
            es.append(std if math.isfinite(std) else 0.0)
        ax.bar(xs, ys, width=width * 0.95, yerr=es, capsize=2, label=label, color=colors[label])
    ax.set_xticks(range(len(names)), names, rotation=45 if len(names) > 4 else 0,
                  ha="right" if len(names) > 4 else "center")
    spans = [(m - (e if math.isfinite(e) else 0.0), m + (e if math.isfinite(e) else 0.0))
             for d in values.values() for m, e, n in d.values() if n and math.isfinite(m)]
    if spans:  # zoom on the bars and their error bars: differences are often a few tenths
        lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
        pad = max((hi - lo) * 0.15, abs(hi) * 0.02, 1e-6)
        ax.set_ylim(lo - pad if lo - pad > 0 or lo < 0 else 0, hi + pad)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{group.dataset} / {group.architecture}: test, mean ± std over seeds")
    ax.set_axisbelow(True)
    return _png(fig, ax, grid_axis="y")


def _pareto_tasks(group: Group) -> tuple[dict[str, Any], dict[str, Any]] | None:
    chosen = next((c.get("pareto") for c in group.cells if c.get("pareto")), None)
    by_name = {t["name"]: t for t in group.tasks}
    if chosen and all(n in by_name for n in chosen):
        return by_name[chosen[0]], by_name[chosen[1]]
    if len(group.tasks) < 2:
        return None
    return group.tasks[0], group.tasks[1]


def pareto_front(points: Sequence[tuple[float, float]], higher: tuple[bool, bool]) -> list[int]:
    """Indices of the points no other point dominates (at least as good in both, better in one)."""
    def better_eq(a: float, b: float, h: bool) -> bool:
        return a >= b if h else a <= b

    front = []
    for i, p in enumerate(points):
        dominated = any(
            j != i and better_eq(q[0], p[0], higher[0]) and better_eq(q[1], p[1], higher[1])
            and q != p
            for j, q in enumerate(points)
        )
        if not dominated:
            front.append(i)
    return front


def _pareto(group: Group) -> bytes | None:
    pair = _pareto_tasks(group)
    if pair is None:
        return None
    ta, tb = pair
    rows = [r for r in group.rows if r.task[ta["name"]][2] and r.task[tb["name"]][2]]
    if not rows:
        return None
    fig, ax, labels, colors = _scatter_axes(rows, 4.6, left=0.9)
    points = [(r.task[ta["name"]][0], r.task[tb["name"]][0]) for r in rows]
    front = pareto_front(points, (ta["higher_is_better"], tb["higher_is_better"]))
    for i, (r, label) in enumerate(zip(rows, labels, strict=True)):
        xa, xs = r.task[ta["name"]][0], r.task[ta["name"]][1]
        ya, ys = r.task[tb["name"]][0], r.task[tb["name"]][1]
        ax.errorbar(xa, ya, xerr=xs if math.isfinite(xs) else None,
                    yerr=ys if math.isfinite(ys) else None, fmt="o" if i in front else "s",
                    color=colors[label], label=label + (" (front)" if i in front else ""),
                    capsize=2, markersize=7 if i in front else 5)
    if len(front) > 1:
        pts = sorted(points[i] for i in front)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "--", color="0.6", linewidth=1)
    ax.set_xlabel(f"{ta['name']} {ta['primary_metric']} ({'higher' if ta['higher_is_better'] else 'lower'} is better)")
    ax.set_ylabel(f"{tb['name']} {tb['primary_metric']} ({'higher' if tb['higher_is_better'] else 'lower'} is better)")
    ax.set_title(f"{group.dataset} / {group.architecture}: test, two tasks")
    return _png(fig, ax)


def _dm_time(group: Group) -> bytes | None:
    rows = [r for r in group.rows if r.delta_m[2] and r.time_per_epoch[2]]
    if not rows:
        return None
    fig, ax, labels, colors = _scatter_axes(rows, 4.4, left=0.8)
    for r, label in zip(rows, labels, strict=True):
        ax.errorbar(r.time_per_epoch[0], r.delta_m[0],
                    yerr=r.delta_m[1] if math.isfinite(r.delta_m[1]) else None,
                    xerr=r.time_per_epoch[1] if math.isfinite(r.time_per_epoch[1]) else None,
                    fmt="D" if r.kind == "stl" else "o", color=colors[label], label=label, capsize=2)
    ax.axhline(0.0, color="0.6", linewidth=1, linestyle=":")
    ax.set_xlabel("seconds per epoch (STL: sum over its models)")
    ax.set_ylabel("Δm% vs STL (lower is better)")
    ax.set_title(f"{group.dataset} / {group.architecture}: quality vs cost")
    return _png(fig, ax)
