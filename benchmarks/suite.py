"""Benchmark suites without the polytask command: run a suite, report its results.

The same two commands as ``polytask bench run`` / ``polytask bench report`` (which import
:mod:`polytask_bench.suite` from a checkout), for a checkout whose polytask is installed from a
wheel, or none at all on the path of the ``polytask`` script::

    python benchmarks/suite.py run benchmarks/quick.yaml --out bench-results/quick
    python benchmarks/suite.py run benchmarks/tox21.yaml --only balancer=stl,equal --only seed=0
    python benchmarks/suite.py report bench-results/quick --out docs/results/quick.md

A suite's format and what each cell records: :mod:`polytask_bench.suite`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

# run as a file, this folder is on sys.path: polytask_bench is an ordinary import
from polytask_bench.suite import SuiteError, report_command, run_command

PROGRAM = "python benchmarks/suite.py"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a suite's unfinished cells (resumable)")
    run.add_argument("suite", type=Path, metavar="SUITE", help="YAML suite (benchmarks/*.yaml)")
    run.add_argument("--out", type=Path, default=None,
                     help="results directory (default: bench-results/<suite name>)")
    run.add_argument("--only", action="append", default=[], metavar="KEY=V1,V2",
                     help="a subset: KEY dataset|architecture|balancer|seed (repeatable; "
                          "balancer also takes stl, equal_tuned)")
    report = commands.add_parser("report", help="Markdown tables and PNG plots of results")
    report.add_argument("results", type=Path, nargs="+", metavar="DIR",
                        help="directories written by run")
    report.add_argument("--out", type=Path, default=None,
                        help="Markdown file (default: docs/results/<DIR name>.md for one "
                             "directory, docs/results.md for several)")
    report.add_argument("--preface", type=Path, default=None,
                        help="Markdown placed at the top of the page (findings, targets)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 done, 1 some cells failed (each written as ``<cell>.failed.json``), 2 a
    suite, option or results directory that cannot be used."""
    args = _parser().parse_args(argv)
    if args.command == "run":
        try:
            summary = run_command(args.suite, args.out, args.only, program=PROGRAM, log=_log)
        except SuiteError as err:  # raised before anything trains
            return _error(err)
        return 1 if summary.failed else 0
    try:
        print(report_command(args.results, args.out, args.preface, program=PROGRAM))
    except (FileNotFoundError, ValueError, KeyError) as err:
        return _error(err)
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _error(err: Exception) -> int:
    print(f"error: {err}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
