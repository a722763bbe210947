"""One self-contained ``report.html`` for a training run or for an experiment comparing runs.

Why a single file: a report gets mailed, attached to an issue or opened from a cluster's scratch
disk weeks later. Everything is inline: the stylesheet, the figures and, for the interactive
figures, plotly.js itself (once per page, minified, from the installed plotly package), so the
file renders the same offline and after the run directory is gone. Nothing is fetched.

Three steps, one module each: :mod:`~polytask.report.data` reads the directory,
:mod:`~polytask.report.sections` turns it into blocks and figure specs, and this module renders
them with the Jinja2 templates in ``templates/`` (autoescaped: a task name or a config line is
text, never markup). Figures are drawn by plotly in the browser (default) or as PNGs
(``static=True``, for users who attach images or need a page without scripts beyond the small
table-sorting one).
"""

from __future__ import annotations

import base64
import re
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from polytask.report.data import (
    EXPERIMENT_FILE,
    METRICS_FILE,
    RESULTS_FILE,
    is_run_directory,
    load_experiment,
    load_run,
)
from polytask.report.page import Figure, Page
from polytask.report.sections import MANY_TASKS, experiment_page, run_page

__all__ = ["MANY_TASKS", "REPORT_FILE", "render_report", "script_safe", "write_report"]

REPORT_FILE = "report.html"


def write_report(directory: str | Path, *, static: bool = False) -> Path:
    """Write ``report.html`` into a run or experiment directory and return its path.

    A directory with ``summary.json`` is an experiment (a comparison of runs); one with
    ``results.json`` is a finished run; one with only ``metrics.csv`` is a run that has not finished
    (or was killed) and is reported as incomplete. ``static``: PNG figures instead of interactive
    plotly figures (no plotly.js in the file: about 4.6 MB smaller).

    Raises:
        FileNotFoundError: the directory does not exist or holds none of those files.
        ValueError: a file is malformed (the message names the file and what is wrong).
    """
    directory = Path(directory)
    text = render_report(directory, static=static)
    path = directory / REPORT_FILE
    tmp = path.with_name(f".{REPORT_FILE}.partial")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a report
    return path


def render_report(directory: str | Path, *, static: bool = False) -> str:
    """The HTML text :func:`write_report` writes, without writing it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"report: {directory} is not a directory")
    if (directory / EXPERIMENT_FILE).is_file():
        experiment = load_experiment(directory)
        title, page = experiment.title, experiment_page(experiment)
    elif is_run_directory(directory):
        run = load_run(directory)
        title, page = f"Run {run.name}", run_page(run)
    else:
        raise FileNotFoundError(
            f"report: {directory} is neither an experiment directory ({EXPERIMENT_FILE}) nor a run "
            f"directory ({RESULTS_FILE}, or {METRICS_FILE} for an unfinished run)"
        )
    return render_page(page, title, source=directory, static=static)


def render_page(page: Page, title: str, *, source: Path, static: bool = False) -> str:
    """A page of blocks as one HTML document (figures drawn as plotly JSON or PNG)."""
    rendered = {id(f): _render_figure(f, i, static) for i, f in enumerate(page.figures())}
    template = _environment().get_template("report.html.j2")
    return template.render(
        title=title,
        source=str(source.resolve()),
        toc=page.toc(),
        blocks=page.blocks,
        figure=lambda block: rendered[id(block)],
        png_uri=_png_uri,
        static=static,
        plotly_js=Markup(_plotly_js()) if not static and rendered else None,
    )


def _render_figure(block: Figure, index: int, static: bool) -> dict[str, Any]:
    if static:
        from polytask.report.plots import render_png

        return {"uri": _png_uri(render_png(block.spec))}
    from polytask.report.interactive import figure_json

    return {"id": f"figure-{index + 1}", "json": Markup(script_safe(figure_json(block.spec)))}


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


_UNSAFE_IN_SCRIPT = re.compile(r"[<>&\u2028\u2029]")


def script_safe(text: str) -> str:
    """JSON text made safe inside ``<script>``: ``</script>`` or ``<!--`` in a name cannot end it.

    The escapes are JSON string escapes, so the parsed value is unchanged.
    """
    return _UNSAFE_IN_SCRIPT.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


@cache
def _plotly_js() -> str:
    from polytask.report.interactive import plotly_js

    js = plotly_js()
    if "</script" in js.lower():  # would end the inline <script> early; never true for plotly.min
        raise RuntimeError("report: the installed plotly.js contains '</script' and cannot be inlined")
    return js


@cache
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("polytask.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,  # a misspelt variable is an error, not an empty string
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
