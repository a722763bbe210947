"""Self-contained HTML reports of a training run or of an experiment comparing runs.

The report is read from what training wrote to disk (see :mod:`polytask.report.data` for the
files), so it can be built for any run directory, on any machine, finished or not. Figures are
interactive (plotly.js embedded once) or, with ``static=True``, PNGs:

    >>> from polytask.report import write_report
    >>> write_report("runs/my-run")  # doctest: +SKIP
    PosixPath('runs/my-run/report.html')
"""

from polytask.report.html import MANY_TASKS, render_report, write_report

__all__ = ["MANY_TASKS", "render_report", "write_report"]
