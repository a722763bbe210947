"""Benchmark of `polytask meta` on Tox21: held-out assays adapted from k labelled molecules each.

Runs examples/meta_tox21.yaml (optionally reduced with --iterations, --mtl-epochs, --seeds,
--episodes) and prints the summary table, the ROC-AUC of every held-out assay per method and k,
and the adaptation settings chosen on the validation assays, with the machine load.

    python benchmarks/meta_tox21.py --out /tmp/bench-meta-tox21 [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path

import yaml

from polytask.lifecycle.meta import MetaConfig, run_meta

ROOT = Path(__file__).resolve().parents[1]


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--mtl-epochs", type=int, default=None)
    parser.add_argument("--episodes", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    args = parser.parse_args()
    raw = yaml.safe_load((ROOT / "examples" / "meta_tox21.yaml").read_text())
    if args.iterations is not None:
        raw["meta"]["iterations"] = args.iterations
    if args.mtl_epochs is not None:
        raw["mtl"]["epochs"] = args.mtl_epochs
    if args.episodes is not None:
        raw["episodes"] = args.episodes
    if args.seeds is not None:
        raw["seeds"] = args.seeds
    config = MetaConfig.model_validate(raw)
    print("load at start:", _uptime(), flush=True)
    started = time.perf_counter()
    result = run_meta(config, args.out)
    print(result.table())
    print("\nper held-out assay (ROC-AUC, mean over episodes):")
    auroc = {(r["method"], r["seed"], r["task"], r["k"]): r["auroc"] for r in result.per_task()}
    methods = list(dict.fromkeys(m for m, *_ in auroc))
    keys = list(dict.fromkeys(tuple(key) for _, *key in auroc))
    print("| seed | assay | k | " + " | ".join(methods) + " |")
    print("|---|---|---|" + "---|" * len(methods))
    for seed, task, k in keys:
        cells = " | ".join(f"{auroc[(m, seed, task, k)]:.4f}" for m in methods)
        print(f"| {seed} | {task} | {k} | {cells} |")
    print("\nper (seed, assay, k), each method against scratch and against mtl:")
    for m in methods:
        for ref in ("scratch", "mtl"):
            if m == ref or ref not in methods:
                continue
            diffs = [auroc[(m, *key)] - auroc[(ref, *key)] for key in keys]
            print(
                f"{m} vs {ref}: higher on {sum(d > 0 for d in diffs)} of {len(diffs)}, "
                f"mean difference {statistics.fmean(diffs):+.4f}"
            )
    print("\nchosen on the validation assays:")
    for c in result.chosen:
        print(c)
    print(f"\nwall {time.perf_counter() - started:.0f} s; load now: {_uptime()}")
    print("initialisation times (s):", {k: round(v, 1) for k, v in result.times.items()})


if __name__ == "__main__":
    main()
