"""Benchmark of `polytask meta` on School: held-out schools adapted from k students each.

Runs examples/meta_school.yaml, optionally reduced for a loaded CPU (--iterations, --mtl-epochs,
--seeds), and prints the table written to docs/meta-learning.md with the machine load.

    python benchmarks/meta_school.py --out /tmp/bench-meta [--iterations 500] [--mtl-epochs 10]
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import yaml

from polytask.lifecycle.meta import MetaConfig, run_meta

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--mtl-epochs", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    args = parser.parse_args()
    raw = yaml.safe_load((ROOT / "examples" / "meta_school.yaml").read_text())
    if args.iterations is not None:
        raw["meta"]["iterations"] = args.iterations
    if args.mtl_epochs is not None:
        raw["mtl"]["epochs"] = args.mtl_epochs
    if args.seeds is not None:
        raw["seeds"] = args.seeds
    config = MetaConfig.model_validate(raw)
    print("load at start:", subprocess.run(["uptime"], capture_output=True, text=True).stdout)
    started = time.perf_counter()
    result = run_meta(config, args.out)
    print(result.table())
    print(f"\nwall {time.perf_counter() - started:.0f} s; load now: "
          f"{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print("initialisation times (s):", {k: round(v, 1) for k, v in result.times.items()})


if __name__ == "__main__":
    main()
