"""Interactive figures: a :mod:`polytask.report.figures` spec as plotly figure JSON.

Why plotly: a reader hovers a curve to read the exact value at an epoch, zooms into the steps
around a spike of a task weight, and clicks a task in the legend to hide it in every panel at
once. The figures are plotly figure dicts (``{"data": [...], "layout": {...}}``, checked against
plotly's schema by the tests) serialised to JSON; the page embeds plotly.js once and draws
each figure from its JSON at load time (:mod:`polytask.report.html`), so the report stays one
file that opens offline.

Why no plotly theme: the default template is several kilobytes of JSON per figure. Figures carry
only the few layout settings they need; the colours follow matplotlib's tab10,
the same as the static PNGs, so a task keeps its colour in either mode.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from polytask.report import figures

__all__ = ["PALETTE", "figure_json", "plotly_js"]

PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
_COLS = 3
_PANEL_HEIGHT = 300
_MARKER_POINTS = 30  # lines with at most this many points get markers (epochs), not steps
_ANNOTATE_CELLS = 200


def plotly_js() -> str:
    """The minified plotly.js bundled with the installed plotly package (no network)."""
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


def _colors(keys: Iterable[str]) -> dict[str, str]:
    unique = list(dict.fromkeys(keys))
    return {key: PALETTE[i % len(PALETTE)] for i, key in enumerate(unique)}


def _numbers(values: Sequence[float]) -> list[float | None]:
    """Six significant digits (what a reader can use; keeps the file small); None for gaps."""
    out: list[float | None] = []
    for v in values:
        f = float(v)
        out.append(float(f"{f:.6g}") if math.isfinite(f) else None)
    return out


def _hover_text(text: str) -> str:
    """A label inside a hover template: plotly reads ``%{...}`` there as a field reference."""
    return _html_text(text).replace("%", "%%")


def _axis(title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title, "standoff": 6}, "showgrid": True, "gridcolor": "#e5e7eb",
        "zeroline": False, "showline": True, "linecolor": "#9ca3af", "ticks": "outside",
        "automargin": True, **extra,
    }


def _layout(title: str, height: int) -> dict[str, Any]:
    return {
        "title": {"text": _html_text(title), "x": 0.01, "xanchor": "left"},
        "height": height,
        "margin": {"l": 60, "r": 20, "t": 60, "b": 50},
        "font": {"family": "-apple-system, Segoe UI, Helvetica, Arial, sans-serif", "size": 12},
        "paper_bgcolor": "white",
        "plot_bgcolor": "white",
        "hovermode": "closest",
        "annotations": [],
        "shapes": [],
    }


class _Grid:
    """Panels in rows of up to three: each panel its own x/y axes, its title an annotation.

    Why by hand rather than ``make_subplots``: plotly's figure objects validate every property on
    every call, which made building a run's figures take seconds; the tests validate the JSON
    made here against plotly's schema instead (``plotly.graph_objects.Figure(json)``).
    """

    def __init__(self, names: Sequence[str], title: str, layout: dict[str, Any]) -> None:
        self.names = list(names) or [""]
        n = len(self.names)
        self.cols = max(1, min(_COLS, n))
        self.rows = math.ceil(n / self.cols)
        height = _PANEL_HEIGHT * self.rows + 90
        self.layout = layout or _layout(title, height)
        self.layout.setdefault("height", height)
        titled = not (n == 1 and not self.names[0])
        gap_x = 0.07
        gap_y = min(0.25, 85 / height) if self.rows > 1 else 0.0
        width = (1 - gap_x * (self.cols - 1)) / self.cols
        panel_h = (1 - gap_y * (self.rows - 1)) / self.rows
        for i, name in enumerate(self.names):
            r, c = divmod(i, self.cols)
            x0 = c * (width + gap_x)
            y1 = 1 - r * (panel_h + gap_y)
            suffix = self.suffix(i)
            self.layout[f"xaxis{suffix}"] = _axis("", domain=[x0, x0 + width], anchor=f"y{suffix}")
            self.layout[f"yaxis{suffix}"] = _axis(
                "", domain=[max(0.0, y1 - panel_h), y1], anchor=f"x{suffix}"
            )
            if titled:
                self.layout["annotations"].append(
                    {"text": f"<b>{_html_text(name)}</b>", "x": x0 + width / 2, "y": y1,
                     "xref": "paper", "yref": "paper", "xanchor": "center", "yanchor": "bottom",
                     "showarrow": False, "font": {"size": 13}}
                )

    @staticmethod
    def suffix(i: int) -> str:
        return "" if i == 0 else str(i + 1)

    def axes(self, i: int) -> dict[str, str]:
        return {"xaxis": f"x{self.suffix(i)}", "yaxis": f"y{self.suffix(i)}"}

    def axis(self, which: str, i: int) -> dict[str, Any]:
        axis: dict[str, Any] = self.layout[f"{which}axis{self.suffix(i)}"]
        return axis


def _html_text(text: str) -> str:
    """Plotly renders annotation text as a small HTML subset: a task named ``<b>`` stays text."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _lines(spec: figures.Lines) -> dict[str, Any]:
    grid = _Grid(list(spec.panels), spec.title, {})
    colors = _colors([key for series in spec.panels.values() for key in series])
    data: list[dict[str, Any]] = []
    shown: set[str] = set()
    xs_all = [float(x) for s in spec.panels.values() for xs, _ in s.values() for x in xs]
    integer_x = bool(xs_all) and all(x.is_integer() for x in xs_all)
    step = max(1, math.ceil((max(xs_all) - min(xs_all)) / 8)) if integer_x else 1
    for i, name in enumerate(grid.names):
        for key, (xs, ys) in spec.raw.get(name, {}).items():
            data.append(
                {"type": "scatter", "x": _numbers(xs), "y": _numbers(ys), "mode": "lines",
                 "name": _html_text(key), "legendgroup": key, "showlegend": False, "hoverinfo": "skip",
                 "opacity": 0.3, "line": {"width": 0.8, "color": colors.get(key, "#9ca3af")},
                 **grid.axes(i)}
            )
        for key, (xs, ys) in spec.panels.get(name, {}).items():
            if not len(xs):
                continue
            data.append(
                {"type": "scatter", "x": _numbers(xs), "y": _numbers(ys),
                 "name": _html_text(key), "legendgroup": key, "showlegend": key not in shown,
                 "mode": "lines+markers" if len(xs) <= _MARKER_POINTS else "lines",
                 "line": {"width": 2, "color": colors[key]}, "marker": {"size": 5},
                 "hovertemplate": (
                     f"{_hover_text(key)}<br>{_hover_text(spec.xlabel)} %{{x}}: "
                     f"%{{y:.4g}}<extra>{_hover_text(name)}</extra>"
                 ),
                 **grid.axes(i)}
            )
            shown.add(key)
        grid.axis("x", i)["title"]["text"] = _html_text(spec.xlabel)
        grid.axis("y", i).update(
            title={"text": _html_text(spec.ylabels.get(name, ""))}, tickformat="~g",
            **_flat_range(spec.panels.get(name, {}).values()),
        )
        if integer_x:  # epochs, steps: no tick at "1.5"
            grid.axis("x", i).update(tickformat="d", tick0=0, dtick=step)
        if spec.vline is not None:
            x, y = grid.axes(i)["xaxis"], grid.axes(i)["yaxis"]
            grid.layout["shapes"].append(
                {"type": "line", "xref": x, "yref": f"{y} domain", "x0": spec.vline,
                 "x1": spec.vline, "y0": 0, "y1": 1,
                 "line": {"dash": "dash", "color": "#6b7280", "width": 1}}
            )
            if spec.vline_label and i == 0:
                grid.layout["annotations"].append(
                    {"text": _html_text(spec.vline_label), "xref": x, "yref": f"{y} domain",
                     "x": spec.vline, "y": 1, "xanchor": "left", "yanchor": "top",
                     "showarrow": False, "font": {"size": 10, "color": "#6b7280"}}
                )
    return {"data": data, "layout": grid.layout}


def _flat_range(series: Iterable[figures.Series]) -> dict[str, Any]:
    """A y range around a constant line (a fixed learning rate): plotly would centre it in
    [-1, 1] whatever its value, and show 0.002 at the tick labelled 0."""
    ys = [float(y) for _, values in series for y in values if math.isfinite(float(y))]
    if not ys or max(ys) != min(ys):
        return {}
    half = abs(ys[0]) * 0.5 or 1.0
    return {"range": [ys[0] - half, ys[0] + half]}


def _bars(spec: figures.Bars) -> dict[str, Any]:
    grid = _Grid(list(spec.panels), spec.title, {})
    colors = _colors([bar for panel in spec.panels.values() for bar in panel])
    data: list[dict[str, Any]] = []
    for i, name in enumerate(grid.names):
        panel = {b: v for b, v in spec.panels.get(name, {}).items() if math.isfinite(v)}
        data.append(
            {"type": "bar", "x": list(panel), "y": _numbers(list(panel.values())),
             "showlegend": False, "marker": {"color": [colors[b] for b in panel]},
             "hovertemplate": f"%{{x}}: %{{y:.4g}}<extra>{_hover_text(name)}</extra>",
             **grid.axes(i)}
        )
        grid.axis("y", i)["title"]["text"] = _html_text(spec.ylabels.get(name, ""))
        grid.axis("x", i)["type"] = "category"
    return {"data": data, "layout": grid.layout}


def _histogram(spec: figures.Histogram) -> dict[str, Any]:
    clean = {k: [float(v) for v in vs if math.isfinite(v)] for k, vs in spec.values.items()}
    clean = {k: vs for k, vs in clean.items() if vs}
    grid = _Grid([""], spec.title, _layout(spec.title, 380))
    colors = _colors(list(clean))
    lo = min((min(vs) for vs in clean.values()), default=0.0)
    hi = max((max(vs) for vs in clean.values()), default=1.0)
    size = (hi - lo) / spec.bins if hi > lo else 1.0
    data = [
        {"type": "histogram", "x": _numbers(vs), "name": _html_text(name), "opacity": 0.55,
         "marker": {"color": colors[name]},
         "xbins": {"start": lo, "end": hi + size * 1e-9, "size": size},
         "hovertemplate": f"{_hover_text(name)}: %{{y}} in %{{x}}<extra></extra>"}
        for name, vs in clean.items()
    ]
    grid.layout["barmode"] = "overlay"
    grid.axis("x", 0)["title"]["text"] = _html_text(spec.xlabel)
    grid.axis("y", 0)["title"]["text"] = _html_text(spec.ylabel)
    return {"data": data, "layout": grid.layout}


def _heatmap(spec: figures.Heatmap) -> dict[str, Any]:
    height = min(900, 170 + 34 * max(1, len(spec.rows)))
    grid = _Grid([""], spec.title, _layout(spec.title, height))
    values = [_numbers(row) for row in spec.values]
    found = [v for row in values for v in row if v is not None]
    colors: dict[str, Any] = {"colorscale": "Viridis"}
    if spec.center is not None:
        spread = max((abs(v - spec.center) for v in found), default=1.0) or 1.0
        colors = {"colorscale": "RdBu", "reversescale": True, "zmid": spec.center,
                  "zmin": spec.center - spread, "zmax": spec.center + spread}
    small = len(spec.rows) * len(spec.cols) <= _ANNOTATE_CELLS
    trace: dict[str, Any] = {
        "type": "heatmap", "z": values, "x": list(spec.cols), "y": list(spec.rows), **colors,
        "colorbar": {"title": {"text": _html_text(spec.colorbar_label)}},
        "hovertemplate": (
            f"{_hover_text(spec.ylabel or 'row')} %{{y}}, {_hover_text(spec.xlabel or 'column')}"
            " %{x}: %{z:.4f}<extra></extra>"
        ),
    }
    if small:
        trace["texttemplate"] = "%{z:.2f}"
    grid.axis("x", 0).update(type="category", showgrid=False, title={"text": _html_text(spec.xlabel)})
    grid.axis("y", 0).update(
        type="category", showgrid=False, autorange="reversed", title={"text": _html_text(spec.ylabel)}
    )
    return {"data": [trace], "layout": grid.layout}


def figure_json(spec: figures.FigureSpec) -> str:
    """The spec as plotly figure JSON text (``{"data": [...], "layout": {...}}``)."""
    builders: Mapping[type, Any] = {
        figures.Lines: _lines,
        figures.Bars: _bars,
        figures.Histogram: _histogram,
        figures.Heatmap: _heatmap,
    }
    build = builders.get(type(spec))
    if build is None:
        raise TypeError(f"figure_json: unknown figure spec {type(spec).__name__}")
    figure = build(spec)
    return json.dumps(figure, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
