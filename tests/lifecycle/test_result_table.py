"""The Markdown table every lifecycle step writes (extend.md, ensemble.md)."""

from __future__ import annotations

from polytask.lifecycle._table import markdown_table


def test_header_separator_and_one_line_per_row() -> None:
    text = markdown_table(["task", "val", "test"], [["a", "0.5000", "0.6000"], ["b", "1", "2"]])
    assert text.splitlines() == [
        "| task | val | test |",
        "|---|---|---|",
        "| a | 0.5000 | 0.6000 |",
        "| b | 1 | 2 |",
    ]


def test_no_rows_gives_the_header_only() -> None:
    assert markdown_table(["x"], []) == "| x |\n|---|"
