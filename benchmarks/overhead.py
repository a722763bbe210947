"""What each balancer costs per training step, relative to equal weighting (and LibMTL's).

Run from a checkout; the benchmark itself is :mod:`polytask_bench.overhead` (its docstring says
what is timed and how; ``--help`` lists the options)::

    python benchmarks/overhead.py --trunk resnet18 --tasks 12 --out bench-results/resnet18.md
    python benchmarks/overhead.py --trunk resnet18 --device cuda --batch-size 128 --tasks 2,12,40

Results, targets and their verdicts: docs/benchmarks/overhead.md.
"""

from __future__ import annotations

# run as a file, this folder is on sys.path: polytask_bench is an ordinary import
from polytask_bench.overhead import main

if __name__ == "__main__":
    raise SystemExit(main())
