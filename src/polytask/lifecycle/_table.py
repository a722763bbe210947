"""The Markdown result table that the lifecycle steps write (``extend.md``, ``ensemble.md``).

Why one helper: each step reports one row per task with reference and new figures side by side;
building the header, the separator and the rows in one place keeps the files of every step
alike, and a change of layout happens once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["markdown_table"]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub Markdown table: ``header``, the ``|---|`` line, then one line per row of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)
