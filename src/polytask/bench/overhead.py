"""``polytask bench overhead``: finds and runs the checkout's ``benchmarks/overhead.py``.

The benchmark itself lives with the other benchmarks in the repository's ``benchmarks/`` folder,
outside the installed package. Why: it is a measuring instrument for polytask's developers, not
part of the library users install. It drives LibMTL (an extra, installed with ``--no-deps``),
builds ResNet and transformer workloads, and times private pieces of the training loop; shipping
it in the wheel would make every one of those a supported API. Keeping the CLI command means the
documented commands keep working in a checkout (``pip install -e .``), where the benchmark is run.

Where the file is looked for, in order: ``$POLYTASK_BENCHMARKS`` (a ``benchmarks`` folder), the
checkout this package was imported from (``src/polytask`` -> ``benchmarks/``), and
``./benchmarks`` under the current directory. Outside a checkout the command says so, exit
status 2, instead of failing on an import.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["BenchmarkNotFoundError", "benchmark_dirs", "load_benchmark", "main_overhead"]

_MODULE_PREFIX = "polytask_benchmarks"


class BenchmarkNotFoundError(FileNotFoundError):
    """The benchmark script is not there: polytask was installed without its repository."""


def benchmark_dirs() -> list[Path]:
    """The folders searched for benchmark scripts, in order."""
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


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` from the first folder of :func:`benchmark_dirs` holding it.

    The module is registered in ``sys.modules`` (as ``polytask_benchmarks.<name>``) before it runs,
    as a normal import would, so that its dataclasses and pickling work.
    """
    module_name = f"{_MODULE_PREFIX}.{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    searched = benchmark_dirs()
    for folder in searched:
        path = folder / f"{name}.py"
        if path.is_file():
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[module_name]
                raise
            return module
    looked = ", ".join(str(d) for d in searched)
    raise BenchmarkNotFoundError(
        f"the benchmark benchmarks/{name}.py is part of the polytask repository, not of the "
        f"installed package, and was not found (looked in: {looked}). Run the command from a "
        "checkout (git clone, then pip install -e '.[bench]'), or set POLYTASK_BENCHMARKS to "
        "the checkout's benchmarks folder"
    )


def main_overhead(argv: list[str]) -> int:
    """``polytask bench overhead [options]``; returns the process exit status."""
    try:
        module = load_benchmark("overhead")
    except BenchmarkNotFoundError as err:
        print(f"polytask bench overhead: {err}", file=sys.stderr)
        return 2
    return int(module.main(argv))
