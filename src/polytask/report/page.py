"""The report as a list of plain blocks (headings, facts, tables, figures, notes), before HTML.

Why a block model: the sections (:mod:`polytask.report.sections`) decide what a reader sees from
the run's data; the Jinja2 templates decide the markup, and escape every string they print. No
section builds markup, so no value read from a run's files can reach the page unescaped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from polytask.report.figures import FigureSpec

__all__ = [
    "Block",
    "Cell",
    "Details",
    "Facts",
    "Figure",
    "Heading",
    "Image",
    "Note",
    "Page",
    "Preformatted",
    "Table",
    "Text",
    "slug",
]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


@dataclass(frozen=True)
class Heading:
    kind: ClassVar[str] = "heading"
    level: int
    title: str
    anchor: str


@dataclass(frozen=True)
class Text:
    """A paragraph; ``muted`` for secondary remarks."""

    kind: ClassVar[str] = "text"
    text: str
    muted: bool = True


@dataclass(frozen=True)
class Note:
    """A highlighted box: something the reader must not miss (incomplete run, unreadable file)."""

    kind: ClassVar[str] = "note"
    text: str


@dataclass(frozen=True)
class Facts:
    kind: ClassVar[str] = "facts"
    items: list[tuple[str, str]]


@dataclass(frozen=True)
class Cell:
    """A table cell: ``sort`` is the value a sortable table orders by (numbers sort numerically)."""

    text: str
    numeric: bool = False
    best: bool = False
    href: str | None = None
    sort: float | str | None = None


@dataclass(frozen=True)
class Table:
    kind: ClassVar[str] = "table"
    header: list[str]
    rows: list[list[Cell]]
    sortable: bool = False
    marked: frozenset[int] = frozenset()  # row indices drawn highlighted (a chosen candidate)


@dataclass(frozen=True, kw_only=True)
class _Captioned:
    """What every picture block carries: alt text for readers who cannot see it, and a caption.

    Keyword-only, so each picture's own content stays its first positional field.
    """

    alt: str
    caption: str = ""


@dataclass(frozen=True)
class Figure(_Captioned):
    """A figure spec, drawn with plotly (interactive report) or as a PNG (``--static``)."""

    kind: ClassVar[str] = "figure"
    spec: FigureSpec


@dataclass(frozen=True)
class Image(_Captioned):
    """A PNG kept as an image in every mode (dense predictions beside their truth)."""

    kind: ClassVar[str] = "image"
    png: bytes


@dataclass(frozen=True)
class Preformatted:
    kind: ClassVar[str] = "pre"
    text: str


@dataclass
class Details:
    """A collapsed group of blocks (long per-task tables, the configuration)."""

    kind: ClassVar[str] = "details"
    summary: str
    blocks: list[Block] = field(default_factory=list)


Block = Heading | Text | Note | Facts | Table | Figure | Image | Preformatted | Details


class Page:
    """Collects blocks and the headings for the table of contents (unique anchors)."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self._ids: set[str] = set()

    def heading(self, level: int, title: str, anchor: str) -> None:
        anchor = slug(anchor)
        unique, n = anchor, 1
        while unique in self._ids:
            n += 1
            unique = f"{anchor}-{n}"
        self._ids.add(unique)
        self.blocks.append(Heading(level, title, unique))

    def add(self, block: Block) -> None:
        self.blocks.append(block)

    def note(self, text: str) -> None:
        self.blocks.append(Note(text))

    def muted(self, text: str) -> None:
        self.blocks.append(Text(text))

    def figure(self, spec: FigureSpec, alt: str, caption: str = "") -> None:
        self.blocks.append(Figure(spec, alt=alt, caption=caption))

    def toc(self) -> list[Heading]:
        """Levels 2 and 3 (deeper ones are run details)."""
        return [b for b in self.blocks if isinstance(b, Heading) and b.level <= 3]

    def figures(self) -> list[Figure]:
        found: list[Figure] = []
        stack: list[Block] = list(self.blocks)
        while stack:
            block = stack.pop(0)
            if isinstance(block, Figure):
                found.append(block)
            elif isinstance(block, Details):
                stack[:0] = block.blocks
        return found
