"""Where ``polytask bench`` finds the benchmarks: in the source repository, not in this package.

The benchmark machinery (suites, their report, the overhead benchmark, LibMTL driven side by
side) lives in the repository's ``benchmarks/polytask_bench`` package and uses polytask's public
API only. Why not here: it is a measuring instrument for polytask's developers, carrying benchmark
targets and optional third-party libraries; shipped in the wheel, every piece of it would be a
supported API. The ``polytask bench`` commands stay for a checkout (``pip install -e .``), where
benchmarks are run: this module finds its ``benchmarks/`` folder and imports from it.

Where it is looked for, in order: ``$POLYTASK_BENCHMARKS`` (a ``benchmarks`` folder), the
checkout this package was imported from (``src/polytask`` -> ``benchmarks/``), and
``./benchmarks`` under the current directory. Not found, :class:`BenchmarksNotFoundError` says
where it looked and what to run instead.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["PACKAGE", "BenchmarksNotFoundError", "benchmark_dirs", "import_benchmarks"]

#: the package under ``benchmarks/`` that holds the benchmark machinery
PACKAGE = "polytask_bench"


class BenchmarksNotFoundError(FileNotFoundError):
    """No ``benchmarks/polytask_bench``: polytask was installed without its repository."""


def benchmark_dirs() -> list[Path]:
    """The folders searched for ``polytask_bench``, in order, without duplicates."""
    dirs = []
    env = os.environ.get("POLYTASK_BENCHMARKS")
    if env:
        dirs.append(Path(env))
    package = Path(__file__).resolve().parents[1]  # .../src/polytask
    dirs.append(package.parents[1] / "benchmarks")  # the checkout's root / benchmarks
    dirs.append(Path.cwd() / "benchmarks")
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def import_benchmarks(module: str) -> ModuleType:
    """``polytask_bench.<module>`` from the first folder of :func:`benchmark_dirs` holding it.

    The folder is appended to ``sys.path`` (appended: the scripts beside the package must not
    shadow an installed module of the same name). A ``polytask_bench`` already imported is used
    as it is.
    """
    name = f"{PACKAGE}.{module}"
    if PACKAGE not in sys.modules:
        searched = benchmark_dirs()
        found = next((d for d in searched if (d / PACKAGE / "__init__.py").is_file()), None)
        if found is None:
            looked = ", ".join(str(d) for d in searched)
            raise BenchmarksNotFoundError(
                "the benchmarks are part of the polytask source repository (benchmarks/), not of "
                f"the installed package, and were not found (looked in: {looked}). From a "
                "checkout: pip install -e . there, or run python benchmarks/suite.py run SUITE "
                "(python benchmarks/overhead.py for step overhead); or set POLYTASK_BENCHMARKS "
                "to the checkout's benchmarks folder"
            )
        if str(found) not in sys.path:
            sys.path.append(str(found))
    return importlib.import_module(name)
