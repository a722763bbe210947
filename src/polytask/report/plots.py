"""Static PNG figures for the report (``--static``), and the dense samples kept as images.

:func:`render_png` draws a :mod:`polytask.report.figures` spec; the interactive report draws the
same specs with plotly instead (:mod:`polytask.report.interactive`).

Why PNG bytes rather than figures: the report embeds every image as a base64 ``data:`` URI so that
one file carries everything. Returning bytes keeps these functions free of HTML concerns, easy to
test, and keeps each figure's lifetime inside the function, so building reports for hundreds of
runs does not accumulate figures.

Why no ``pyplot``: figures are drawn on matplotlib's Agg canvas directly (``Figure`` plus
``FigureCanvasAgg``). That renders headless without switching the process-wide backend (a user's
notebook keeps its own), and nothing is registered in pyplot's figure manager, so there is nothing
that could stay open. Each figure is still cleared after saving to release its artists at once.

Why fixed margins rather than a layout engine: constrained/tight layout draws every figure twice,
which made a report with dozens of figures ~40% slower; margins are set in inches here (wider where
long tick labels need it), which keeps panels aligned for the labels this report draws.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from polytask.report import figures

__all__ = [
    "PNG_SIGNATURE",
    "Series",
    "bar_panels",
    "bar_plot",
    "dense_samples",
    "heatmap",
    "histogram",
    "key_colors",
    "line_panels",
    "line_plot",
    "new_figure",
    "render_png",
    "set_margins",
    "to_png",
]

Series = figures.Series

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_DPI = 100
_PANEL_W = 4.6
_PANEL_H = 3.2
_MANY_LEGEND_ENTRIES = 6


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches on its own Agg canvas, outside pyplot.

    Public so that other figure code (the benchmark suite's report) draws its figures the same
    way: headless, without touching the process-wide backend, with nothing left registered.
    """
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def set_margins(
    fig: Figure,
    *,
    left: float = 0.75,
    right: float = 0.2,
    bottom: float = 0.55,
    top: float = 0.45,
    wspace: float = 0.75,
    hspace: float = 0.85,
    rows: int = 1,
    cols: int = 1,
) -> None:
    """Margins and gaps in inches, converted to the fractions ``subplots_adjust`` wants.

    Inches rather than fractions because tick labels need the same room whatever the figure's
    size; ``rows`` / ``cols`` give the panel grid the gaps are measured between (one axes: the
    gaps do not matter).
    """
    width, height = fig.get_size_inches()
    panel_w = max(0.5, (width - left - right - wspace * (cols - 1)) / cols)
    panel_h = max(0.5, (height - top - bottom - hspace * (rows - 1)) / rows)
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=wspace / panel_w,
        hspace=hspace / panel_h,
    )


def _text_inches(labels: Sequence[str], per_char: float = 0.075) -> float:
    return per_char * max((len(str(label)) for label in labels), default=0)


def to_png(fig: Figure) -> bytes:
    """The figure as PNG bytes, then cleared: its artists are released at once.

    No ``Software`` metadata: the bytes do not change with the matplotlib version that drew them.
    """
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    finally:
        fig.clear()
    return buffer.getvalue()


def key_colors(keys: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """A stable colour per key in first-appearance order: a key looks the same in every panel."""
    unique = list(dict.fromkeys(keys))
    cmap = colormaps["tab10" if len(unique) <= 10 else "tab20"]
    return {key: cmap(i % cmap.N) for i, key in enumerate(unique)}


def _legend(ax: Axes, entries: int) -> None:
    if entries <= 1:
        return
    if entries > _MANY_LEGEND_ENTRIES:
        ax.legend(fontsize="xx-small", ncols=2, framealpha=0.7)
    else:
        ax.legend(fontsize="small", framealpha=0.7)


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.5")
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_lines(
    ax: Axes,
    series: Mapping[str, Series],
    colors: Mapping[str, tuple[float, float, float, float]],
    *,
    raw: Mapping[str, Series] | None = None,
    vline: float | None = None,
    vline_label: str | None = None,
    markers: bool = False,
) -> None:
    drawn = 0
    raw_alpha = 0.3 / max(1.0, math.sqrt(len(raw or {}) / 2))  # many tasks: fainter raw lines
    for key, (xs, ys) in (raw or {}).items():
        if len(xs):
            ax.plot(xs, ys, color=colors.get(key, "0.6"), linewidth=0.5, alpha=raw_alpha)
    for key, (xs, ys) in series.items():
        if not len(xs):
            continue
        marker = "o" if markers and len(xs) <= 30 else None
        ax.plot(xs, ys, label=key, color=colors[key], linewidth=1.6, marker=marker, markersize=3)
        drawn += 1
    if drawn == 0:
        _no_data(ax)
        return
    if all(float(x).is_integer() for xs, _ in series.values() for x in xs):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, steps: no "1.5"
    entries = drawn
    if vline is not None:
        ax.axvline(vline, color="0.4", linestyle="--", linewidth=0.9, label=vline_label)
        entries += 1 if vline_label else 0
    ax.grid(True, alpha=0.3)
    _legend(ax, entries)


def line_plot(
    series: Mapping[str, Series],
    title: str,
    xlabel: str,
    ylabel: str,
    *,
    raw: Mapping[str, Series] | None = None,
    vline: float | None = None,
    vline_label: str | None = None,
) -> bytes:
    """One axes of named lines; ``raw`` lines (same keys) are drawn thin and faint underneath.

    ``raw`` is for a noisy signal shown with its smoothed version in ``series`` (task weights per
    step under their rolling mean). ``vline`` marks an x position, e.g. the selected epoch.
    """
    fig = new_figure(8.0, 4.0)
    set_margins(fig, top=0.4)
    ax = fig.add_subplot()
    colors = key_colors([*series, *(raw or {})])
    _draw_lines(ax, series, colors, raw=raw, vline=vline, vline_label=vline_label, markers=True)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return to_png(fig)


def _grid(n: int, ncols: int) -> tuple[int, int]:
    cols = max(1, min(ncols, n))
    return math.ceil(n / cols), cols


def _named_axes(fig: Figure, names: Sequence[str], rows: int, cols: int) -> list[tuple[str, Axes]]:
    """A ``rows`` x ``cols`` grid of axes paired with the panel names; the unused cells hidden."""
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    return list(zip(names, axes, strict=False))


def line_panels(
    panels: Mapping[str, Mapping[str, Series]],
    title: str,
    xlabel: str,
    *,
    ylabels: Mapping[str, str] | None = None,
    vline: float | None = None,
    vline_label: str | None = None,
    ncols: int = 3,
) -> bytes:
    """Small multiples: one axes per panel (own y scale), each with named lines.

    Lines with the same name have the same colour in every panel (``train``/``val``, a task, an
    expert), so one reading of a legend carries over.
    """
    names = list(panels) or [""]
    rows, cols = _grid(len(names), ncols)
    fig = new_figure(_PANEL_W * cols, _PANEL_H * rows + 0.4)
    set_margins(fig, top=0.75, rows=rows, cols=cols)
    colors = key_colors([key for series in panels.values() for key in series])
    for name, ax in _named_axes(fig, names, rows, cols):
        _draw_lines(
            ax,
            panels.get(name, {}),
            colors,
            vline=vline,
            vline_label=vline_label,
            markers=True,
        )
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel(xlabel, fontsize="small")
        ax.set_ylabel((ylabels or {}).get(name, ""), fontsize="small")
    fig.suptitle(title)
    return to_png(fig)


def _draw_bars(
    ax: Axes,
    values: Mapping[str, Mapping[str, float]],
    colors: Mapping[str, tuple[float, float, float, float]],
) -> None:
    """Grouped bars: groups on the x axis, one bar per series within a group; NaN bars skipped."""
    groups = list(values)
    series = list(dict.fromkeys(s for group in values.values() for s in group))
    if not groups or not series:
        _no_data(ax)
        return
    width = 0.8 / len(series)
    for j, name in enumerate(series):
        xs: list[float] = []
        ys: list[float] = []
        for i, group in enumerate(groups):
            value = values[group].get(name)
            if value is None or not math.isfinite(value):
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(value)
        ax.bar(xs, ys, width=width * 0.95, label=name, color=colors[name])
    ax.set_xticks(range(len(groups)), groups)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def bar_plot(values: Mapping[str, Mapping[str, float]], title: str, ylabel: str) -> bytes:
    """Grouped bar chart: ``values[group][series]``; groups on the x axis, one colour per series."""
    fig = new_figure(8.0, 4.0)
    set_margins(fig, top=0.4)
    ax = fig.add_subplot()
    series = [s for group in values.values() for s in group]
    _draw_bars(ax, values, key_colors(series))
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    _legend(ax, len(set(series)))
    return to_png(fig)


def bar_panels(
    panels: Mapping[str, Mapping[str, float]],
    title: str,
    *,
    ylabels: Mapping[str, str] | None = None,
    ncols: int = 3,
) -> bytes:
    """One bar axes per panel, ``panels[panel][bar] = value``; bar colours shared across panels.

    For comparing methods on tasks whose metrics have different scales (AUROC and MAE do not
    belong on one y axis). A bar whose value is missing or NaN is left out of its panel.
    """
    names = list(panels) or [""]
    rows, cols = _grid(len(names), ncols)
    bars = [b for panel in panels.values() for b in panel]
    colors = key_colors(bars)
    label_h = 0.15 + 0.75 * _text_inches(list(colors), per_char=0.07)  # 45° tick labels
    fig = new_figure(_PANEL_W * cols, (_PANEL_H + label_h) * rows + 0.4)
    set_margins(fig, top=0.75, bottom=label_h + 0.2, hspace=label_h + 0.5, rows=rows, cols=cols)
    for name, ax in _named_axes(fig, names, rows, cols):
        panel = {
            b: v for b, v in panels.get(name, {}).items() if v is not None and math.isfinite(v)
        }
        if not panel:
            _no_data(ax)
        else:
            ax.bar(range(len(panel)), list(panel.values()), color=[colors[b] for b in panel])
            ax.set_xticks(range(len(panel)), list(panel), rotation=45, ha="right", fontsize="small")
            ax.grid(True, axis="y", alpha=0.3)
            ax.set_axisbelow(True)
        ax.set_title(name, fontsize="medium")
        ax.set_ylabel((ylabels or {}).get(name, ""), fontsize="small")
    fig.suptitle(title)
    return to_png(fig)


def histogram(
    values: Mapping[str, Sequence[float]],
    title: str,
    xlabel: str,
    *,
    bins: int = 20,
    ylabel: str = "tasks",
) -> bytes:
    """Histograms of named samples on shared bins, drawn as outlines so that several stay legible.

    For one number per task when there are too many tasks for a bar or panel each (School's 139
    schools): the shape of the distribution, its spread and its outliers in one small figure.
    Non-finite values are left out.
    """
    clean = {k: [float(v) for v in vs if math.isfinite(v)] for k, vs in values.items()}
    clean = {k: vs for k, vs in clean.items() if vs}
    fig = new_figure(8.0, 4.0)
    set_margins(fig, top=0.4)
    ax = fig.add_subplot()
    if not clean:
        _no_data(ax)
    else:
        lo = min(min(vs) for vs in clean.values())
        hi = max(max(vs) for vs in clean.values())
        edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)] if hi > lo else bins
        colors = key_colors(list(clean))
        for name, vs in clean.items():
            ax.hist(vs, bins=edges, histtype="step", linewidth=1.5, label=name, color=colors[name])
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        _legend(ax, len(clean))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return to_png(fig)


def heatmap(
    values: Sequence[Sequence[float]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    *,
    xlabel: str = "",
    ylabel: str = "",
    colorbar_label: str = "",
    annotate: bool = True,
    center: float | None = None,
) -> bytes:
    """A matrix as coloured cells (``values[row][col]``), annotated with values when it is small.

    ``center``: a diverging colour scale symmetric around that value (similarities in [-1, 1]).
    """
    n_rows, n_cols = len(row_labels), len(col_labels)
    if any(len(row) != n_cols for row in values) or len(values) != n_rows:
        raise ValueError(
            f"heatmap: values must be {n_rows} rows of {n_cols} columns to match the labels"
        )
    left = 0.55 + _text_inches(row_labels) + (0.3 if ylabel else 0.0)
    width = min(16.0, left + 1.6 + 0.7 * max(n_cols, 1))
    fig = new_figure(width, min(12.0, 1.6 + 0.45 * max(n_rows, 1)))
    set_margins(fig, left=left, right=0.3, top=0.4, bottom=0.6 if xlabel else 0.4)
    ax = fig.add_subplot()
    if n_rows == 0 or n_cols == 0:
        _no_data(ax)
    else:
        finite = [v for row in values for v in row if math.isfinite(v)]
        spread = 1.0
        if center is not None:
            spread = max((abs(v - center) for v in finite), default=1.0) or 1.0
            image = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=center - spread,
                              vmax=center + spread)
        else:
            image = ax.imshow(values, aspect="auto", cmap="viridis")
        ax.set_xticks(range(n_cols), list(col_labels), fontsize="small")
        ax.set_yticks(range(n_rows), list(row_labels), fontsize="small")
        colorbar = fig.colorbar(image, ax=ax)
        colorbar.set_label(colorbar_label)
        if annotate and n_rows * n_cols <= 200:
            middle = (min(finite) + max(finite)) / 2 if finite else 0.0
            for r, row in enumerate(values):
                for c, value in enumerate(row):
                    if math.isfinite(value):
                        ax.text(
                            c,
                            r,
                            f"{value:.2f}",
                            ha="center",
                            va="center",
                            fontsize="x-small",
                            color=(
                                "black"
                                if (center is not None and abs(value - center) < spread / 2)
                                or (center is None and value > middle)
                                else "white"
                            ),
                        )
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return to_png(fig)


def _dense_panel(ax: Axes, values: Any, task: Mapping[str, Any], scale: tuple[float, float]) -> None:
    """One dense map: classes (fixed colours), depth (shared colour scale) or normals (RGB)."""
    import numpy as np

    kind = task.get("kind")
    if kind == "segmentation":
        classes = max(2, int(task.get("num_classes") or 2))
        masked = np.ma.masked_where((values < 0) | (values >= classes), values)
        cmap = colormaps["tab20"].resampled(classes).with_extremes(bad="0.85")
        ax.imshow(masked, cmap=cmap, vmin=-0.5, vmax=classes - 0.5, interpolation="nearest")
    elif values.ndim == 3 and values.shape[0] == 3:  # normals [3, H, W] -> RGB
        rgb = np.clip((np.nan_to_num(np.moveaxis(values, 0, -1)) + 1) / 2, 0, 1)
        rgb[~np.isfinite(values).all(axis=0) | (values == 0).all(axis=0)] = 0.85
        ax.imshow(rgb, interpolation="nearest")
    else:
        flat = values.reshape(values.shape[-2:])
        cmap = colormaps["viridis"].with_extremes(bad="0.85")
        ax.imshow(np.ma.masked_invalid(flat), cmap=cmap, vmin=scale[0], vmax=scale[1],
                  interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _labelled(truth: Any, task: Mapping[str, Any]) -> Any:
    """Where a depth-like or normal map is labelled (a mask broadcastable to ``truth``)."""
    import numpy as np

    if task.get("kind") == "normals" and truth.ndim == 3:
        return (np.isfinite(truth).all(axis=0) & (truth != 0).any(axis=0))[None]
    mask = np.isfinite(truth)
    if task.get("kind") == "depth" and (task.get("options") or {}).get("zero_is_missing", True):
        mask &= truth != 0
    return mask


def _drawable(task: Mapping[str, Any]) -> str | None:
    """Why a task's samples cannot be drawn as maps, or ``None`` when they can."""
    import numpy as np

    truth, pred = np.asarray(task.get("truth")), np.asarray(task.get("pred"))
    if task.get("layout") == "boxes":  # detection: drawn by _box_panel
        ok = truth.ndim == pred.ndim == 3 and truth.shape[2] == 5 and pred.shape[2] == 6
        return None if ok else f"boxes of shapes {list(truth.shape)} / {list(pred.shape)}"
    if truth.ndim not in (3, 4) or (truth.ndim == 4 and truth.shape[1] != 3):
        return f"truth of shape {list(truth.shape)} is not [n, H, W] or [n, 3, H, W] maps"
    if pred.shape[0] != truth.shape[0] or pred.shape[-2:] != truth.shape[-2:]:
        return f"prediction of shape {list(pred.shape)} does not match truth {list(truth.shape)}"
    return None


def _single_channel_squeezed(task: Mapping[str, Any]) -> Mapping[str, Any]:
    """A one-channel map task (depth: ``[n, 1, H, W]``) as ``[n, H, W]``, the drawable layout."""
    import numpy as np

    truth, pred = np.asarray(task.get("truth")), np.asarray(task.get("pred"))
    if task.get("layout") == "boxes" or truth.ndim != 4 or truth.shape[1] != 1:
        return task
    squeezed = pred[:, 0] if pred.ndim == 4 and pred.shape[1] == 1 else pred
    return {**task, "truth": truth[:, 0], "pred": squeezed}


def dense_samples(
    image: Any, tasks: Mapping[str, Mapping[str, Any]], title: str
) -> tuple[bytes, dict[str, str]]:
    """Rows of samples: the input, then each dense task's truth beside its prediction.

    Returns the PNG and, per task that is not a map of the input's size (its samples cannot be
    drawn here), the reason, for the report to say so rather than leave the task out silently.

    ``image`` is ``[n, H, W]`` or ``[n, H, W, 3]`` (or None); each task maps to ``kind``,
    ``num_classes``, ``truth`` and ``pred`` arrays with the samples first. Unlabelled pixels are
    grey; a depth-like task's truth and prediction share one colour scale (the truth's range), so
    the two panels can be compared by colour, and its prediction is shown where the truth is
    labelled only (elsewhere nothing scores it). Segmentation predictions are shown everywhere:
    background is a class.
    """
    import numpy as np

    tasks = {name: _single_channel_squeezed(task) for name, task in tasks.items()}
    skipped = {name: why for name in tasks if (why := _drawable(tasks[name])) is not None}
    names = [name for name in tasks if name not in skipped]
    n = min(len(tasks[name]["truth"]) for name in names) if names else 0
    cols = (image is not None) + 2 * len(names)
    if n == 0 or cols == 0:
        fig = new_figure(_PANEL_W, 1.5)
        _no_data(fig.add_subplot())
        return to_png(fig), skipped
    side = 1.35
    fig = new_figure(0.3 + side * cols, 0.85 + side * n)
    set_margins(fig, left=0.15, right=0.15, top=0.75, bottom=0.1, wspace=0.08, hspace=0.08,
             rows=n, cols=cols)
    axes = fig.subplots(n, cols, squeeze=False)
    scales = {}
    for name in names:
        truth = np.asarray(tasks[name]["truth"], dtype=float)
        finite = truth[np.isfinite(truth)]
        scales[name] = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    for row in range(n):
        col = 0
        if image is not None:
            axes[row, 0].imshow(image[row], cmap="gray" if image.ndim == 3 else None,
                                interpolation="nearest")
            axes[row, 0].set_xticks([])
            axes[row, 0].set_yticks([])
            col = 1
        for name in names:
            truth = np.asarray(tasks[name]["truth"], dtype=float)[row]
            for which in ("truth", "pred"):
                values = np.asarray(tasks[name][which])[row]
                if tasks[name].get("layout") == "boxes":
                    _box_panel(axes[row, col], None if image is None else image[row], values,
                               tasks[name], predicted=which == "pred")
                elif which == "pred" and tasks[name].get("kind") != "segmentation":
                    values = np.where(_labelled(truth, tasks[name]), values, np.nan)
                if tasks[name].get("layout") != "boxes":
                    _dense_panel(axes[row, col], values, tasks[name], scales[name])
                if row == 0:
                    label = "truth" if which == "truth" else "prediction"
                    axes[row, col].set_title(f"{name}\n{label}", fontsize="small")
                col += 1
    if image is not None:
        axes[0, 0].set_title("input", fontsize="small")
    fig.suptitle(title, fontsize="medium", y=1 - 0.12 / fig.get_size_inches()[1])
    return to_png(fig), skipped


def render_png(spec: figures.FigureSpec) -> bytes:
    """Draw a figure spec as a PNG: one axes for a single unnamed panel, small multiples else."""
    if isinstance(spec, figures.Lines):
        if len(spec.panels) == 1:
            (name, series), = spec.panels.items()
            return line_plot(
                series, spec.title if not name else f"{spec.title}: {name}", spec.xlabel,
                spec.ylabels.get(name, name), raw=spec.raw.get(name), vline=spec.vline,
                vline_label=spec.vline_label,
            )
        return line_panels(
            spec.panels, spec.title, spec.xlabel, ylabels=spec.ylabels, vline=spec.vline,
            vline_label=spec.vline_label,
        )
    if isinstance(spec, figures.Bars):
        return bar_panels(spec.panels, spec.title, ylabels=spec.ylabels)
    if isinstance(spec, figures.Histogram):
        return histogram(spec.values, spec.title, spec.xlabel, bins=spec.bins, ylabel=spec.ylabel)
    if isinstance(spec, figures.Heatmap):
        return heatmap(
            spec.values, spec.rows, spec.cols, spec.title, xlabel=spec.xlabel,
            ylabel=spec.ylabel, colorbar_label=spec.colorbar_label, center=spec.center,
        )
    raise TypeError(f"render_png: unknown figure spec {type(spec).__name__}")


#: Predicted boxes drawn on a sample: those scoring at least this (the rest only rank for mAP).
BOX_SCORE_SHOWN = 0.3


def _box_panel(
    ax: Axes, image: Any, boxes: Any, task: Mapping[str, Any], *, predicted: bool
) -> None:
    """Boxes on the input image: true rows ``(class, x0, y0, x1, y1)`` (padding: class -1), or
    predicted rows ``(x0, y0, x1, y1, score, class)`` scoring at least :data:`BOX_SCORE_SHOWN`,
    labelled ``class:score``. Coordinates are pixel edges, so a box hugs the pixels it covers."""
    import numpy as np
    from matplotlib.patches import Rectangle

    size = (task.get("options") or {}).get("image_size") or [1, 1]
    size = [size, size] if isinstance(size, int) else size
    if image is not None:
        ax.imshow(image, cmap="gray" if np.ndim(image) == 2 else None, interpolation="nearest")
    else:
        ax.imshow(np.zeros(size[:2]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    rows = np.asarray(boxes, dtype=float)
    if not predicted and np.isnan(rows).all():
        ax.text(0.5, 0.5, "not annotated", ha="center", va="center", color="0.7",
                fontsize="x-small", transform=ax.transAxes)
    for r in rows:
        if not np.isfinite(r).all():
            continue
        if predicted:
            (x0, y0, x1, y1), score, cls, colour = r[:4], r[4], int(r[5]), "tab:orange"
            if score < BOX_SCORE_SHOWN:
                continue
            text = f"{cls}:{score:.2f}"
        else:
            cls, (x0, y0, x1, y1), colour = int(r[0]), r[1:5], "tab:green"
            if cls < 0:
                continue
            text = str(cls)
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                               edgecolor=colour, linewidth=1.0))
        ax.text(x0 - 0.5, y0 - 0.5, text, color=colour, fontsize=5, va="bottom", ha="left")
    ax.set_xticks([])
    ax.set_yticks([])
