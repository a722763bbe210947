"""`polytask bench overhead` on a tiny configuration: the report's structure, not its numbers."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from polytask.bench._libmtl import libmtl_version
from polytask.bench.overhead import main_overhead

RATIO = re.compile(r"^(?:[A-Za-z]+: )?(\d+\.\d+) \((\d+\.\d+)\)$")
TINY = ["--tasks", "2", "--repeats", "1", "--warmup", "1", "--batch-size", "8", "--width", "16"]


def _rows(text: str, section: str) -> dict[str, list[str]]:
    """Table rows (method -> cells) of one ``### T = ...`` section."""
    body = text.split(f"### {section}\n", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in body.splitlines():
        if line.startswith("| ") and not line.startswith("| method"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def _ratios(cell: str) -> tuple[float, float]:
    match = RATIO.match(cell)
    assert match, f"not a 'time (memory)' ratio cell: {cell!r}"
    return float(match.group(1)), float(match.group(2))


def test_tiny_run_writes_a_table_with_finite_ratios(tmp_path: Path) -> None:
    out = tmp_path / "overhead.md"
    argv = [*TINY, "--methods", "equal,mgda", "--modes", "jacobian,representation"]
    assert main_overhead([*argv, "--no-libmtl", "--out", str(out)]) == 0
    text = out.read_text()
    assert "polytask bench overhead" in text and "## Targets" in text
    rows = _rows(text, "T = 2")
    assert set(rows) == {"equal", "mgda"}
    # columns: method, family, jacobian, representation (no LibMTL columns)
    assert len(rows["mgda"]) == 4
    assert _ratios(rows["equal"][2]) == (1.0, 1.0)
    assert rows["equal"][3].startswith("n/a (refused:")
    for cell in rows["mgda"][2:]:
        time_ratio, mem_ratio = _ratios(cell)
        assert math.isfinite(time_ratio) and time_ratio > 0
        assert math.isfinite(mem_ratio) and mem_ratio > 0


def test_bad_option_is_an_error_not_a_crash(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_overhead(["--tasks", "1"]) == 2
    assert main_overhead(["--methods", "nope"]) == 2
    assert "unknown method" in capsys.readouterr().err


@pytest.mark.skipif(
    libmtl_version() is None, reason="LibMTL is not installed (pip install --no-deps libmtl==1.1.5)"
)
def test_tiny_libmtl_row(tmp_path: Path) -> None:
    out = tmp_path / "overhead.md"
    argv = [*TINY, "--methods", "equal,mgda", "--modes", "jacobian,representation"]
    assert main_overhead([*argv, "--no-memory", "--out", str(out)]) == 0
    text = out.read_text()
    rows = _rows(text, "T = 2")
    # columns: method, family, jacobian, representation, LibMTL rep_grad=False / True
    mgda = rows["mgda"]
    assert len(mgda) == 6
    for cell in mgda[4:]:
        assert cell.startswith("MGDA: ")
        time_ratio = float(cell.removeprefix("MGDA: ").split()[0])
        assert math.isfinite(time_ratio) and time_ratio > 0
    assert "Speed-up over LibMTL" in text
