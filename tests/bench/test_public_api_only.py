"""Benchmarks and tests use polytask's public API: no underscore name reached across packages.

Why: a benchmark must measure what a user gets, and a private name imported from another package
ties that code to internals that are free to change (the benchmarks used to import the training
loop's ``_optimizer`` and the experiment's ``_train_stl``; both are public functions now).

The rule, read from the source (an AST scan, nothing is imported):

- ``benchmarks/`` and ``tests/bench/`` (the benchmarks' tests): no private polytask name at all,
  neither ``from polytask.x import _y``, nor a private module (``polytask.x._y``), nor the
  attribute ``m._y`` of a name bound to a polytask module or object by an import.
- ``tests/<pkg>/...`` may reach private names of ``polytask.<pkg>`` (a package's tests test its
  internals); ``tests/test_<module>*.py`` those of ``polytask.<module>``. Anything else is a
  violation, except the entries of ``KNOWN``, each with its reason; an entry that no longer
  matches a violation fails too, so the list cannot outlive its cause.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STRICT = ("benchmarks", "tests/bench")

#: (file, what) -> why it is tolerated for now; its owner is told (see the module docstring)
KNOWN: dict[tuple[str, str], str] = {
    ("tests/training/test_step.py", f"from polytask.balancing.strategies.{m} import {c}"): (
        "the training step's test checks which strategy class the engine chose; the strategy "
        "classes are private to polytask.balancing (its owner: make them public or test through "
        "choose_strategy)"
    )
    for m, c in [
        ("_gramian", "GramianStrategy"),
        ("_jacobian", "JacobianStrategy"),
        ("_loss", "LossStrategy"),
        ("_representation", "RepresentationStrategy"),
        ("_representation_gramian", "RepresentationGramianStrategy"),
    ]
}


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def private_uses(source: str, filename: str = "<source>") -> list[tuple[str, str]]:
    """``(what, polytask package it belongs to)`` for each private polytask name ``source`` uses.

    The package is the first component after ``polytask`` (``""`` for ``polytask`` itself).
    """
    tree = ast.parse(source, filename)
    bound: dict[str, str] = {}  # local name -> the dotted polytask path it stands for
    found: list[tuple[str, str]] = []

    def package(dotted: str) -> str:
        parts = dotted.split(".")
        return parts[1] if len(parts) > 1 else ""

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] != "polytask":
                    continue
                if any(_private(p) for p in parts):
                    found.append((f"import {alias.name}", package(alias.name)))
                bound[alias.asname or "polytask"] = alias.name if alias.asname else "polytask"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] != "polytask":
                continue
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}"
                if any(_private(p) for p in parts) or _private(alias.name):
                    found.append((f"from {node.module} import {alias.name}", package(dotted)))
                else:
                    bound[alias.asname or alias.name] = dotted
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _private(node.attr)):
            continue
        chain = [node.attr]
        base = node.value
        while isinstance(base, ast.Attribute):
            chain.append(base.attr)
            base = base.value
        if isinstance(base, ast.Name) and base.id in bound:
            dotted = ".".join([bound[base.id], *reversed(chain)])
            found.append((dotted, package(dotted)))
    return found


def _owner(rel: Path) -> str | None:
    """The polytask package whose internals the test file may reach (``None``: none)."""
    parts = rel.parts
    if len(parts) > 2:  # tests/<pkg>/...
        return parts[1]
    stem = rel.stem.removeprefix("test_")
    return stem  # tests/test_<module>[_more].py: matched by prefix in _allowed


def _allowed(rel: Path, pkg: str) -> bool:
    if any(rel.as_posix().startswith(f"{s}/") for s in STRICT) or not pkg:
        return False
    owner = _owner(rel)
    if owner is None:
        return False
    if len(rel.parts) > 2:
        return owner == pkg
    return owner == pkg or owner.startswith(f"{pkg}_")


def _violations() -> list[tuple[str, str]]:
    files = sorted((ROOT / "benchmarks").rglob("*.py")) + sorted((ROOT / "tests").rglob("*.py"))
    out = []
    for path in files:
        rel = path.relative_to(ROOT)
        for what, pkg in private_uses(path.read_text(encoding="utf-8"), str(rel)):
            if rel.parts[0] == "benchmarks" or not _allowed(rel, pkg):
                out.append((rel.as_posix(), what))
    return out


def test_no_private_polytask_name_across_packages() -> None:
    found = _violations()
    unexpected = [f"{f}: {what}" for f, what in found if (f, what) not in KNOWN]
    assert not unexpected, (
        "private polytask names used outside their package (make the name public in polytask, "
        "or use its public API):\n" + "\n".join(unexpected)
    )
    stale = [f"{f}: {what}" for f, what in KNOWN if (f, what) not in found]
    assert not stale, "KNOWN lists uses that are gone; remove them:\n" + "\n".join(stale)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from polytask.training.loop import _optimizer",
         "from polytask.training.loop import _optimizer"),
        ("from polytask.bench._libmtl import fit", "from polytask.bench._libmtl import fit"),
        ("import polytask.experiment as e\ne._train_stl()", "polytask.experiment._train_stl"),
        ("from polytask import experiment\nexperiment._train_stl()",
         "polytask.experiment._train_stl"),
        ("import polytask.training.loop\npolytask.training.loop._jsonable(1)",
         "polytask.training.loop._jsonable"),
        ("from polytask.training import loop as l\nl._check_finite",
         "polytask.training.loop._check_finite"),
    ],
)
def test_the_scan_sees_each_form_of_private_use(source: str, expected: str) -> None:
    assert expected in [what for what, _ in private_uses(source)]


def test_the_scan_leaves_public_and_foreign_names_alone() -> None:
    source = (
        "from polytask import __version__\n"
        "from polytask.training.loop import training_optimizer\n"
        "import torch\n"
        "torch._C\n"
        "from polytask_bench.suite import _Pair\n"
        "self._private = 1\n"
    )
    assert private_uses(source) == []


def test_a_package_may_test_its_own_internals_only() -> None:
    assert _allowed(Path("tests/data/test_files.py"), "data")
    assert not _allowed(Path("tests/training/test_step.py"), "balancing")
    assert _allowed(Path("tests/test_experiment_stl_cache.py"), "experiment")
    assert not _allowed(Path("tests/test_api.py"), "experiment")
    assert not _allowed(Path("tests/bench/test_suite.py"), "bench")
