"""The interactive report: plotly.js embedded once, one JSON figure per plot, sortable tables.

Every figure's JSON is checked against plotly's own schema (``plotly.graph_objects.Figure``
raises on an unknown property), so a figure the browser would silently drop fails here. That the
figures really draw offline is ``test_browser.py``'s job.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import plotly.graph_objects as go
import pytest
from hypothesis import given
from hypothesis import strategies as st

from polytask.report import figures, render_report
from polytask.report.html import script_safe
from polytask.report.interactive import figure_json

PLOTLY_HEADER = re.compile(r"\* plotly\.js v\d+\.\d+\.\d+")
FIGURE_DATA = re.compile(
    r'<script type="application/json" class="plot-data" data-target="([^"]+)">(.*?)</script>', re.S
)


def figures_of(text: str) -> dict[str, dict[str, object]]:
    return {target: json.loads(body) for target, body in FIGURE_DATA.findall(text)}


def without_scripts(text: str) -> str:
    return re.sub(r"<script\b[^>]*>.*?</script>", "", text, flags=re.S | re.I)


@pytest.fixture(scope="module")
def run_text(tmp_path_factory: pytest.TempPathFactory, files: SimpleNamespace) -> str:
    run = files.write_run(
        tmp_path_factory.mktemp("interactive") / "run", [files.LEFT, files.DEPTH], name="two"
    )
    return render_report(run)


def test_plotly_js_is_embedded_once_and_each_figure_is_valid_plotly(run_text: str) -> None:
    assert len(PLOTLY_HEADER.findall(run_text)) == 1  # once per page, not per figure
    found = figures_of(run_text)
    # losses, validation metrics, lr/epoch time, task weights, expert heatmap, expert lines
    assert len(found) == 6
    for target, figure in found.items():
        assert f'<div class="plot" id="{target}"' in run_text
        go.Figure(figure)  # raises ValueError on a property plotly does not know
    assert '<img src="data:image/png' not in run_text  # no PNG figures in interactive mode
    html = without_scripts(run_text)
    assert "http://" not in html and "https://" not in html  # nothing to fetch
    assert not re.search(r"<script[^>]*\bsrc\s*=", run_text, re.I)


def test_curves_hold_the_recorded_values(run_text: str) -> None:
    found = list(figures_of(run_text).values())
    losses = next(f for f in found if f["layout"]["title"]["text"] == "Loss per task")
    traces = {(t["name"], t["xaxis"]): t for t in losses["data"]}
    # conftest writes val loss 1/(epoch+1) + 0.05 for every task; panels: total, left, depth
    val_left = traces[("val", "x2")]
    assert val_left["x"] == [0, 1, 2, 3]
    assert val_left["y"] == pytest.approx([1.0 / (e + 1) + 0.05 for e in range(4)])
    assert "%{y" in val_left["hovertemplate"]  # hover shows the value
    # the best epoch is marked in every panel
    assert {s["x0"] for s in losses["layout"]["shapes"]} == {2}
    assert len(losses["layout"]["shapes"]) == 3
    weights = next(f for f in found if "Task weights" in f["layout"]["title"]["text"])
    smooth = [
        t for t in weights["data"] if t.get("showlegend") is not False or t["mode"] != "lines"
    ]
    assert {t["legendgroup"] for t in weights["data"]} == {"left", "depth"}
    assert smooth


def test_names_cannot_escape_the_script_or_become_markup(
    tmp_path: Path, files: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    evil = "</script><img src=x onerror=alert(1)>"
    monkeypatch.setitem(files.TASK_METRICS, evil, ("accuracy", "auroc"))
    task = {**files.LEFT, "name": evil}
    text = render_report(files.write_run(tmp_path / "run", [task, files.DEPTH]))
    assert evil not in text
    assert "<img src=x" not in text
    groups = {
        t.get("legendgroup")
        for f in figures_of(text).values()
        for t in f["data"]  # type: ignore[union-attr]
    }
    assert evil in groups  # the name survives as data, escaped only on the way into the page


def test_comparison_and_seed_tables_sort_by_number(tmp_path: Path, files: SimpleNamespace) -> None:
    experiment = files.write_experiment(tmp_path / "demo")
    summary = json.loads((experiment / "summary.json").read_text())
    summary["aggregate"] = [
        {
            "label": "equal",
            "kind": "mtl",
            "seeds": 3,
            "left": [0.81, 0.01],
            "depth": [0.6, 0.02],
            "delta_m": [-1.5, 0.25],
            "time_s": 30.0,
        },
        {
            "label": "uncertainty",
            "kind": "mtl",
            "seeds": 3,
            "left": [0.85, 0.03],
            "depth": [0.55, 0.01],
            "delta_m": [2.0, 0.5],
            "time_s": 31.0,
        },
    ]
    (experiment / "summary.json").write_text(json.dumps(summary))
    text = render_report(experiment)
    tables = re.findall(r'<table class="sortable">.*?</table>', text, re.S)
    assert len(tables) == 2  # the comparison and the results over seeds
    comparison, seeds = tables
    # Δm column: the numbers sort, the missing ones (single-task rows) carry an empty key
    keys = [
        re.findall(r'data-sort="([^"]*)"', row)
        for row in re.findall(r"<tr>(.*?)</tr>", comparison.split("<tbody>")[1], re.S)
    ]
    delta_m = [row[-2] for row in keys]
    assert delta_m == ["-1.5", "2.0", "", ""]
    assert "0.8100 ± 0.0100" in seeds and "+2.00% ± 0.5000" in seeds
    assert "<strong>0.8500 ± 0.0300</strong>" in seeds  # best mean left auroc (higher is better)
    assert "<strong>-1.50% ± 0.2500</strong>" in seeds  # best mean Δm (lower is better)
    assert "sortBy" in text  # the inline sorting script


def test_nan_is_a_gap_not_invalid_json() -> None:
    spec = figures.Lines("t", "epoch", {"": {"a": ([0, 1, 2], [1.0, math.nan, 3.0])}})
    figure = json.loads(figure_json(spec))
    assert figure["data"][0]["y"] == [1.0, None, 3.0]
    go.Figure(figure)


def test_heatmap_spec_must_match_its_labels() -> None:
    with pytest.raises(ValueError, match="2 rows of 1 columns"):
        figures.Heatmap("bad", [[1.0, 2.0]], ["r1", "r2"], ["c1"])


@given(st.text())
def test_script_safe_json_round_trips_and_cannot_end_the_script(name: str) -> None:
    text = script_safe(json.dumps({"name": name}, ensure_ascii=False))
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"name": name}
