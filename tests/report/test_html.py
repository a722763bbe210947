"""The HTML report, static mode (PNG figures): synthetic run and experiment directories.

The directories follow the on-disk format the training loop writes (``conftest.py``), so these
tests pin the reader to the format, and check properties a reader of the report relies on: one
file with nothing to fetch, every figure a decodable PNG, the numbers and the bold "best" cells in
the right places, and clear failures for a malformed or missing record. The interactive mode is
tested in ``test_interactive.py`` and, in a real browser, ``test_browser.py``.
"""

from __future__ import annotations

import base64
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest

from polytask.report import plots, render_report, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMG_PREFIX = '<img src="data:image/png;base64,'


# ------------------------------------------------------------------------------------ helpers
def images(text: str) -> list[bytes]:
    payloads = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    return [base64.b64decode(p, validate=True) for p in payloads]


def assert_self_contained(text: str) -> None:
    """Nothing to fetch: no external source, link or import; scripts only inline, without src."""
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I)
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.I)
    assert "<link" not in text.lower()
    assert "@import" not in text and "url(" not in text
    assert "http://" not in text and "https://" not in text


def static_report(directory: Path) -> Path:
    return write_report(directory, static=True)


class _TableParser(HTMLParser):
    """Rows of the first table: each cell as ``(text, bold)``."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[tuple[str, bool]]]] = []
        self._cell: list[str] | None = None
        self._bold = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell, self._bold = [], False
        elif tag == "strong" and self._cell is not None:
            self._bold = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(("".join(self._cell).strip(), self._bold))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def first_table(text: str) -> list[list[tuple[str, bool]]]:
    parser = _TableParser()
    parser.feed(text)
    return parser.tables[0]


# ----------------------------------------------------------------- shared reports (drawn once)
@pytest.fixture(scope="module")
def run_report(
    tmp_path_factory: pytest.TempPathFactory, files: SimpleNamespace
) -> tuple[Path, Path]:
    """A finished two-task run with experts: (run directory, path write_report returned)."""
    run = files.write_run(
        tmp_path_factory.mktemp("report") / "run", [files.LEFT, files.DEPTH], name="two-tasks"
    )
    return run, static_report(run)


@pytest.fixture(scope="module")
def experiment_report(
    tmp_path_factory: pytest.TempPathFactory, files: SimpleNamespace
) -> tuple[Path, Path]:
    experiment = files.write_experiment(tmp_path_factory.mktemp("report") / "demo")
    return experiment, static_report(experiment)


# -------------------------------------------------------------------------------------- tests
def test_run_report_is_self_contained_with_every_section(run_report: tuple[Path, Path]) -> None:
    run, path = run_report
    assert path == run / "report.html"
    assert path.is_file()
    text = path.read_text(encoding="utf-8")
    assert_self_contained(text)
    # losses, validation metrics, lr/epoch time, task weights, expert heatmap, expert lines
    assert text.count(IMG_PREFIX) == 6
    pngs = images(text)
    assert len(pngs) == 6
    assert all(png.startswith(PNG_SIGNATURE) for png in pngs)
    for task in ("left", "depth"):
        assert task in text
    assert "+3.14%" in text  # test Δm from results.json, signed, 2 decimals
    assert "val delta_m" in text  # the selection rule
    assert "val (epoch 2)" in text  # the best epoch heads the val column
    assert "Incomplete run" not in text
    for section in ("Losses", "Validation metrics", "Task weights", "Expert usage", "Warnings"):
        assert f">{section}</h2>" in text
        assert f">{section}</a>" in text  # listed in the contents
    assert "nan_loss" in text
    # the config is shown collapsed and escaped, never as live markup
    assert "<details>" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "a&lt;b &amp; " in text


def test_final_table_has_val_and_test_per_metric(run_report: tuple[Path, Path]) -> None:
    text = run_report[1].read_text(encoding="utf-8")
    table = first_table(text.split('id="final"', 1)[1])
    header = [cell for cell, _ in table[0]]
    assert header == ["task", "metric", "val (epoch 2)", "test", "single-task reference"]
    rows = {(r[0][0], r[1][0]): [c for c, _ in r[2:]] for r in table[1:]}
    assert set(rows) == {
        ("left", "auroc (primary)"),
        ("left", "accuracy"),
        ("depth", "mae (primary)"),
        ("depth", "mse"),
    }
    assert rows[("left", "auroc (primary)")] == ["0.7000", "0.7400", "0.8000"]
    assert rows[("depth", "mse")][2] == "—"


def test_experiment_report_is_self_contained_with_a_section_per_run(
    experiment_report: tuple[Path, Path],
) -> None:
    experiment, path = experiment_report
    assert path == experiment / "report.html"
    text = path.read_text(encoding="utf-8")
    assert_self_contained(text)
    # the bar chart and the validation curves by run, then per run: 6 (with experts) + 4 + 4 + 4
    assert text.count(IMG_PREFIX) == 2 + 6 + 4 + 4 + 4
    assert all(png.startswith(PNG_SIGNATURE) for png in images(text))
    assert "Demo: &lt;left&gt; &amp; depth" in text  # the title, escaped
    assert "Δm is relative to the stl rows." in text  # the notes
    for task in ("left", "depth"):
        assert task in text
    for i, label in enumerate(("equal", "uncertainty", "stl:left", "stl:depth"), start=1):
        anchor = f"run-{i}-{label.replace(':', '-')}"
        assert f'<h3 id="{anchor}">{label}</h3>' in text  # a section per run ...
        assert (
            text.count(f'<a href="#{anchor}">{label}</a>') == 2
        )  # ... linked from contents, table
    assert text.count(">Overview</h4>") == 4


def test_run_without_experts_skips_that_section_silently(
    experiment_report: tuple[Path, Path],
) -> None:
    text = experiment_report[1].read_text(encoding="utf-8")
    sections = text.split(">Overview</h4>")  # [before, equal, uncertainty, stl:left, stl:depth]
    with_experts, without = sections[1], sections[2]
    assert with_experts.count(IMG_PREFIX) == 6 and "Expert usage" in with_experts
    assert without.count(IMG_PREFIX) == 4
    assert "Expert usage" not in without
    assert "experts.csv" not in without  # truly optional: not even a "missing" note
    assert 'class="note"' not in without


def test_experiment_table_bolds_the_best_per_column(experiment_report: tuple[Path, Path]) -> None:
    text = experiment_report[1].read_text(encoding="utf-8")
    assert "-1.50%" in text and "+2.00%" in text
    table = first_table(text)
    header = [cell for cell, _ in table[0]]
    assert header == ["method", "kind", "left auroc ↑", "depth mae ↓", "Δm ↓", "time ↓"]
    body = {row[0][0]: row for row in table[1:]}
    assert list(body) == ["equal", "uncertainty", "stl:left", "stl:depth"]

    def bold_rows(column: str) -> list[str]:
        i = header.index(column)
        return [label for label, row in body.items() if row[i][1]]

    assert bold_rows("left auroc ↑") == ["uncertainty"]  # highest AUROC
    assert bold_rows("depth mae ↓") == ["stl:depth"]  # lowest MAE
    assert bold_rows("Δm ↓") == ["equal"]  # lowest Δm, even though it is negative
    assert bold_rows("time ↓") == ["stl:depth"]
    assert body["stl:left"][header.index("depth mae ↓")][0] == "—"
    assert body["uncertainty"][header.index("left auroc ↑")][0] == "0.8500"


def test_incomplete_run_reports_what_exists_with_a_note(
    tmp_path: Path, files: SimpleNamespace
) -> None:
    run = files.write_run(
        tmp_path / "killed", [files.LEFT, files.DEPTH], results=False, experts=False
    )
    with (run / "metrics.csv").open("a", encoding="utf-8") as f:
        f.write("3,val,left,accu")  # the row being written when the run was killed
    text = static_report(run).read_text(encoding="utf-8")

    assert "Incomplete run" in text
    assert "results.json not found" in text
    assert "up to epoch 3" in text
    assert "last recorded" in text
    assert text.count(IMG_PREFIX) == 4
    assert all(png.startswith(PNG_SIGNATURE) for png in images(text))


def test_run_with_only_an_empty_metrics_file_still_reports(tmp_path: Path) -> None:
    run = tmp_path / "just-started"
    run.mkdir()
    (run / "metrics.csv").write_text("", encoding="utf-8")
    text = static_report(run).read_text(encoding="utf-8")
    assert "Incomplete run" in text
    assert "Missing from" in text and "weights.csv" in text
    # config.yaml is optional (fit() called directly writes none): said, but not as a warning
    assert "No configuration recorded" in text
    assert "config.yaml" not in text.split("Missing from", 1)[1].split("</p>", 1)[0]


def test_malformed_metrics_csv_names_the_file_and_column(
    tmp_path: Path, files: SimpleNamespace
) -> None:
    run = files.write_run(tmp_path / "run", [files.LEFT])
    (run / "metrics.csv").write_text("epoch,split,task,metric\n0,train,left,loss\n")
    with pytest.raises(ValueError, match=r"metrics\.csv.*'value'"):
        write_report(run)


def test_malformed_weights_csv_names_the_file_and_column(
    tmp_path: Path, files: SimpleNamespace
) -> None:
    run = files.write_run(tmp_path / "run", [files.LEFT])
    (run / "weights.csv").write_text("step,task,weight\n0,left,1.0\n")
    with pytest.raises(ValueError, match=r"weights\.csv.*'epoch'"):
        write_report(run)


def test_directory_without_a_record_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*summary\.json.*results\.json"):
        write_report(empty)
    assert not (empty / "report.html").exists()


def test_experiment_with_a_missing_run_directory_notes_it(
    tmp_path: Path, files: SimpleNamespace
) -> None:
    experiment = files.write_experiment(tmp_path / "demo")
    summary = json.loads((experiment / "summary.json").read_text())
    summary["rows"] = summary["rows"][:1]
    summary["rows"][0]["run_dir"] = "runs/gone"
    (experiment / "summary.json").write_text(json.dumps(summary))
    text = render_report(experiment, static=True)
    assert "runs/gone not found" in text
    assert text.count(IMG_PREFIX) == 1  # the bar chart; no run has curves to draw


def test_plots_return_png_bytes_and_leave_no_open_figure() -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    outputs = [
        plots.line_plot({"a": ([0, 1, 2], [1.0, 0.5, math.nan])}, "t", "x", "y", vline=1),
        plots.line_panels({"p": {"a": ([0, 1], [1.0, 2.0])}, "q": {}}, "t", "x"),
        plots.bar_plot({"g1": {"a": 1.0, "b": 2.0}, "g2": {"a": 0.5}}, "t", "y"),
        plots.bar_panels({"p": {"a": 1.0, "b": math.nan}}, "t"),
        plots.heatmap([[0.1, 0.9], [0.5, math.nan]], ["r1", "r2"], ["c1", "c2"], "t"),
    ]
    assert all(png.startswith(PNG_SIGNATURE) for png in outputs)
    assert plt.get_fignums() == before
    with pytest.raises(ValueError, match="heatmap"):
        plots.heatmap([[1.0]], ["r1", "r2"], ["c1"], "t")


# --------------------------------------------------------------------------------- many tasks
def test_many_tasks_are_summarised_quickly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: SimpleNamespace
) -> None:
    """60 tasks: summary figures (not one panel per task), a note saying so, a bounded size."""

    from polytask.report import MANY_TASKS

    n = 60
    assert n > MANY_TASKS
    tasks: list[dict[str, object]] = [
        {
            "name": f"t{i:02d}",
            "kind": "regression",
            "primary_metric": "mae",
            "higher_is_better": False,
        }
        for i in range(n)
    ]
    for task in tasks:
        monkeypatch.setitem(files.TASK_METRICS, str(task["name"]), ("mae", "mse"))
    rows = []
    for j, label in enumerate(("equal", "uncertainty")):
        files.write_run(tmp_path / "runs" / label, tasks, name=label, offset=0.01 * j, epochs=5)
        rows.append(
            {
                "label": label,
                "run_dir": f"runs/{label}",
                "kind": "mtl",
                "test": {str(t["name"]): {"mae": 0.5 + 0.01 * i + j} for i, t in enumerate(tasks)},
                "delta_m": None,
                "time_s": 3.0,
                "summary_metrics": {"test": {"pooled_explained_variance": 37.0 + j}},
            }
        )
    summary = {"title": "many", "tasks": tasks, "rows": rows}
    (tmp_path / "summary.json").write_text(json.dumps(summary), encoding="utf-8")

    # The cost is bounded by the number of figures (checked below), not by a wall-clock limit.
    text = static_report(tmp_path).read_text(encoding="utf-8")
    assert_self_contained(text)
    assert f"{n} tasks (more than {MANY_TASKS})" in text
    assert "Summarised" in text
    assert "3 best and worst tasks" in text
    # bounded figures: per experiment one histogram; per run a histogram, losses, validation,
    # learning rate, weights, expert heatmap and expert means; never one per task
    pngs = images(text)
    assert all(png.startswith(PNG_SIGNATURE) for png in pngs)
    assert len(pngs) <= 1 + 2 * 7
    header = first_table(text)[0]
    columns = [cell for cell, _ in header]
    assert any(c.startswith(f"mean mae over {n} tasks") for c in columns)
    assert "pooled_explained_variance (test)" in columns
    assert not any(c.startswith("t00 ") for c in columns)  # no column per task
    assert "best (t00, t01, t02) and worst (t57, t58, t59)" in text
