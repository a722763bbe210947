"""Benchmark of `polytask ensemble`: 3 seeds x 2 balancers of one data set, ensembled per task.

The six runs share one split (``data.split_seed: 0``: the seeds change the initialisation and
batch order only, so no member trains on another's test rows). Greedy (Caruana) weights and the
plain mean are chosen / computed on validation and scored once on test, against each task's best
single member by validation.

    python benchmarks/ensemble.py --out /tmp/bench-ensemble [--dataset tox21|census] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from polytask.config import parse_config
from polytask.experiment import run_experiment
from polytask.lifecycle.ensemble import build_ensemble

DATA = {
    "tox21": {"dataset": "tox21", "options": {"split": "random", "features": "ecfp"}},
    "census": {"dataset": "census", "options": {"max_rows": 20000}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dataset", choices=sorted(DATA), default="tox21")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print("load at start:", load, flush=True)
    config: dict[str, Any] = {
        "name": f"{args.dataset}-ensemble-members",
        "data": {**DATA[args.dataset], "split_seed": 0},
        "model": {"trunk": "mlp", "trunk_options": {"hidden": [args.hidden], "dropout": 0.2}},
        "balancers": [{"name": "equal"}, {"name": "uncertainty"}],
        "baselines": {"stl": False},
        "training": {"epochs": args.epochs, "batch_size": 128, "lr": 0.001, "weight_decay": 0.01,
                     "selection": "mean_primary", "progress": False, "tensorboard": False},
        "seeds": [0, 1, 2],
    }  # fmt: skip
    members = args.out / "members"
    started = time.perf_counter()
    result = run_experiment(parse_config(config), members, report=False, resume=members.exists())
    runs = [r.run_dir for r in result.runs]
    train_s = time.perf_counter() - started
    summary: dict[str, Any] = {"load_at_start": load, "train_s": train_s, "members": [str(r) for r in runs]}
    for method in ("greedy", "mean"):
        t0 = time.perf_counter()
        ens = build_ensemble(runs, args.out / method, method=method)
        print(f"\n{method}:\n{ens.table()}")
        rows = ens.rows
        summary[method] = {
            "rows": rows, "time_s": time.perf_counter() - t0,
            "mean_test_ensemble": statistics.fmean(r["ensemble_test"] for r in rows),
            "mean_test_best_member": statistics.fmean(r["member_test"] for r in rows),
            "mean_val_ensemble": statistics.fmean(r["ensemble_val"] for r in rows),
            "mean_val_best_member": statistics.fmean(r["member_val"] for r in rows),
        }  # fmt: skip
    singles = [statistics.fmean(r.test[t.name][t.primary] for t in result.tasks) for r in result.runs]
    summary["member_mean_test"] = {"mean": statistics.fmean(singles), "std": statistics.stdev(singles)}
    (args.out / "ensemble_benchmark.json").write_text(json.dumps(summary, indent=2, default=str))
    for method in ("greedy", "mean"):
        s = summary[method]
        print(f"{method}: mean test {s['mean_test_ensemble']:.4f} vs best member per task "
              f"{s['mean_test_best_member']:.4f}")  # fmt: skip
    m = summary["member_mean_test"]
    print(f"single runs, mean test over tasks: {m['mean']:.4f} ± {m['std']:.4f} (6 runs)")
    print(f"training {train_s:.0f} s; load now: "
          f"{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
