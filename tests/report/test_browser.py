"""The report in a real browser: headless Chromium, offline, draws every plotly figure.

``--dump-dom`` prints the DOM after the page's scripts ran, so the ``.main-svg`` elements that
plotly.js creates at load time prove that the embedded plotly.js ran with nothing to fetch (the
test sandbox has no network, and the page names no URL). A screenshot is taken as well and must be
a non-blank PNG. Skipped, saying so, where no Chromium binary is on PATH (scripts/test.sh tries to
install one with apt-get).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from polytask.report import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((path for name in BROWSERS if (path := shutil.which(name))), None)

pytestmark = pytest.mark.skipif(
    BROWSER is None,
    reason=f"no Chromium binary on PATH (looked for {', '.join(BROWSERS)}); "
    "install one, e.g. apt-get install chromium",
)


def _chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert BROWSER is not None
    command = [
        BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--hide-scrollbars", f"--user-data-dir={cwd / 'profile'}",
        "--virtual-time-budget=20000", *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=cwd)


@pytest.fixture(scope="module")
def experiment_report(tmp_path_factory: pytest.TempPathFactory, files: SimpleNamespace) -> Path:
    """An experiment (4 runs, one with mixture experts) with relations and a grouping search."""
    import json

    directory = files.write_experiment(tmp_path_factory.mktemp("browser") / "demo")
    relations = files.relations_payload(["left", "depth"])
    (directory / "runs" / "equal" / "relations.json").write_text(json.dumps(relations))
    grouping = {
        "tasks": ["left", "depth"],
        "candidates": [
            {"groups": [["left", "depth"]], "score": 0.4, "val_delta_m": 1.0,
             "val_delta_m_std": 0.2, "time_per_epoch_s": 2.0},
            {"groups": [["left"], ["depth"]], "score": 0.1, "val_delta_m": 0.0,
             "val_delta_m_std": 0.0, "time_per_epoch_s": 3.0},
        ],
        "chosen": 1,
    }  # fmt: skip
    (directory / "grouping.json").write_text(json.dumps(grouping))
    return write_report(directory)


def test_chromium_draws_every_figure_offline(experiment_report: Path) -> None:
    text = experiment_report.read_text(encoding="utf-8")
    expected = text.count('class="plot-data"')
    assert expected > 10
    done = _chromium("--dump-dom", experiment_report.as_uri(), cwd=experiment_report.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    # plotly.js turns each <div class="plot"> into a drawn figure: class js-plotly-plot and SVGs
    drawn = re.findall(r'<div class="plot js-plotly-plot"[^>]*\bid="(figure-\d+)"', dom)
    assert len(set(drawn)) == expected, (len(set(drawn)), expected)
    assert dom.count('class="main-svg"') >= 2 * expected  # plotly draws two layers per figure
    assert dom.count('class="hm"') >= 3  # gate weights, grad cosine, conflict, lookahead
    assert dom.count('class="legendtext"') > 0
    # the tables arrived, the comparison and the grouping sortable, the chosen grouping marked
    assert dom.count('<table class="sortable">') == 2
    assert '<tr class="marked">' in dom
    assert "Gradient cosine similarity" in dom


def test_chromium_screenshot_is_not_blank(experiment_report: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "report.png"
    done = _chromium(
        f"--screenshot={shot}", "--window-size=1300,2400", experiment_report.as_uri(), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    image = Image.open(shot).convert("L")
    assert image.size == (1300, 2400)
    lo, hi = image.getextrema()
    assert hi - lo > 100  # text and drawn figures, not an empty page
    colours = len(Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20) or [])
    assert colours > 50  # coloured plot lines and bars, beyond black text on white


def test_clicking_a_header_sorts_the_comparison_by_delta_m(
    experiment_report: Path, tmp_path: Path
) -> None:
    """Clicks the Δm header once (ascending), or twice (descending): empty cells stay last."""
    text = experiment_report.read_text(encoding="utf-8")
    click = """<script>
    var table = document.querySelectorAll("table.sortable")[0];
    var th = Array.from(table.querySelectorAll("th")).find(function (h) {
      return h.textContent.startsWith("Δm");
    });
    function labels() {
      return Array.from(table.tBodies[0].rows).map(function (r) { return r.cells[0].textContent; });
    }
    th.click();
    document.body.setAttribute("data-ascending", labels().join("|"));
    th.click();
    document.body.setAttribute("data-descending", labels().join("|"));
    </script>"""
    page = tmp_path / "clicked.html"
    page.write_text(text.replace("</body>", click + "</body>"), encoding="utf-8")
    done = _chromium("--dump-dom", page.as_uri(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    ascending = re.search(r'data-ascending="([^"]*)"', done.stdout)
    descending = re.search(r'data-descending="([^"]*)"', done.stdout)
    assert ascending is not None and descending is not None
    # Δm: equal -1.5, uncertainty 2.0; the single-task rows have none and stay last
    assert ascending.group(1).split("|") == ["equal", "uncertainty", "stl:left", "stl:depth"]
    assert descending.group(1).split("|") == ["uncertainty", "equal", "stl:left", "stl:depth"]
