"""Every relative link and image in the Markdown docs points at a file that exists.

Why: the results pages are regenerated and moved (docs/results/<suite>.md with PNGs beside them);
a page that links a plot or a page that is gone reads as a result that was never measured.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # web addresses and anchors
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links missing files: {broken}"


# Pages whose Python blocks are run, in order, in one namespace (as a reader would paste them).
EXECUTED_PAGES = [
    ROOT / "docs" / "bring-your-own-data.md",
    ROOT / "docs" / "sklearn-lightning.md",
]
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """``(first line number, code)`` of each fenced Python block of ``page``."""
    text = page.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in PYTHON_BLOCK.finditer(text)]


@pytest.mark.parametrize("page", EXECUTED_PAGES, ids=[p.name for p in EXECUTED_PAGES])
def test_python_blocks_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why: a documented path that no test runs rots silently. Each block runs in a fresh working
    directory with its own cache; a block opening with ``# needs: <module>`` is skipped (and
    reported) only when that optional module is not installed."""
    import importlib.util

    blocks = python_blocks(page)
    assert blocks, f"{page.name} has no Python block"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    namespace: dict[str, object] = {"__name__": "__doc_page__"}
    skipped = []
    for line, code in blocks:
        need = re.match(r"# needs: (\w+)", code)
        if need and importlib.util.find_spec(need.group(1)) is None:
            skipped.append(f"line {line} (needs {need.group(1)})")
            continue
        # Padding with newlines makes tracebacks point at the page's own line numbers.
        exec(compile("\n" * (line - 1) + code, str(page), "exec"), namespace)
    if skipped:
        pytest.skip(f"{page.name}: blocks not run: {', '.join(skipped)}")


def test_architecture_map_names_every_package_and_module() -> None:
    """Why: docs/architecture.md is where a reader finds which file holds a concept; a package
    added without its line there is invisible to them. Every package and module directly under
    ``src/polytask/`` (and the report's templates) must have its own line in the map."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    tree = text.split("```", 2)[1]  # the first fenced block: the map
    entries = {m.group(1) for m in re.finditer(r"^ {2,4}(\S+/?)\s", tree, re.M)}
    package = ROOT / "src" / "polytask"
    expected = {
        f"{p.name}/" if p.is_dir() else p.name
        for p in package.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists())
        or (p.suffix == ".py" and p.name != "__init__.py")
    } | {"templates/"}
    missing = sorted(expected - entries)
    assert not missing, f"docs/architecture.md's map has no line for {missing}"
