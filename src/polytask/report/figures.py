"""What a report figure shows, independent of how it is drawn.

Why specs rather than drawing calls: the same figure is drawn two ways, as an interactive plotly
figure (:mod:`polytask.report.interactive`, the default) or as a static PNG
(:mod:`polytask.report.plots`, for ``--static`` and for users who attach images). The sections of
the report decide *what* to show once, as one of these plain values; each renderer decides *how*.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Bars", "FigureSpec", "Heatmap", "Histogram", "Lines", "Series"]

Series = tuple[Sequence[float], Sequence[float]]
"""One line: ``(xs, ys)`` of equal length. ``NaN`` in ``ys`` leaves a gap."""


@dataclass(frozen=True)
class Lines:
    """Small multiples of named lines: ``panels[panel][line] = (xs, ys)``, one y scale per panel.

    A line name means the same thing in every panel (a task, a split, a run): it keeps one colour
    and one legend entry. ``raw`` lines (same panel and line names) are the noisy signal drawn thin
    under its smoothed version. ``vline`` marks an x position, e.g. the selected epoch.
    """

    title: str
    xlabel: str
    panels: Mapping[str, Mapping[str, Series]]
    ylabels: Mapping[str, str] = field(default_factory=dict)
    raw: Mapping[str, Mapping[str, Series]] = field(default_factory=dict)
    vline: float | None = None
    vline_label: str | None = None


@dataclass(frozen=True)
class Bars:
    """One bar axes per panel, ``panels[panel][bar] = value`` (metrics of different scales)."""

    title: str
    panels: Mapping[str, Mapping[str, float]]
    ylabels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Histogram:
    """Named samples counted on shared bins (one number per task, when tasks are many)."""

    title: str
    xlabel: str
    values: Mapping[str, Sequence[float]]
    ylabel: str = "tasks"
    bins: int = 20


@dataclass(frozen=True)
class Heatmap:
    """A matrix, ``values[row][col]``; ``center`` makes the colour scale diverge around it."""

    title: str
    values: Sequence[Sequence[float]]
    rows: Sequence[str]
    cols: Sequence[str]
    xlabel: str = ""
    ylabel: str = ""
    colorbar_label: str = ""
    center: float | None = None

    def __post_init__(self) -> None:
        n_rows, n_cols = len(self.rows), len(self.cols)
        if len(self.values) != n_rows or any(len(row) != n_cols for row in self.values):
            raise ValueError(
                f"heatmap {self.title!r}: values must be {n_rows} rows of {n_cols} columns to "
                "match the labels"
            )


FigureSpec = Lines | Bars | Histogram | Heatmap
