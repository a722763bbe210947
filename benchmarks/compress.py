"""Compression of a Tox21 and a Census model: size, CPU latency and every task's metric change.

Run from the repository root (public API only):

    python benchmarks/compress.py                 # trains the two runs if needed (one seed)
    python benchmarks/compress.py --finetune-epochs 3

The runs are those of ``benchmarks/export_latency.py`` (``runs/lifecycle-bench``; trained there
or here with ``examples/tox21.yaml`` and the shared-bottom entry of ``examples/census.yaml``, one
seed). Each recipe is applied to the run's selected model by ``polytask.lifecycle.compress_run``:

* ``int8-torchao``: dynamic int8 Linear layers with torchao
  (``Int8DynamicActivationInt8WeightConfig``);
* ``int8-torch``: the same with ``torch.ao.quantization.quantize_dynamic``;
* ``prune50-ft-int8``: L1 pruning of half of every trunk weight matrix, fine-tuned, then int8;
* ``structured50-ft``: half of the trunk's output channels pruned (L2), fine-tuned, float.

Targets (issue 14): int8 size <= 0.3x of the float model, every task's primary metric within 1 %
(relative) of the float model's. The per-task changes, misses included, are printed as Markdown
and written to ``runs/lifecycle-bench/compress.json`` with the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from polytask.experiment import load_data
from polytask.inference import load_run
from polytask.lifecycle import compress_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_latency import ensure_runs  # the same runs, trained once

SIZE_TARGET = 0.3
METRIC_TARGET_PCT = 1.0


def recipes(finetune_epochs: int) -> dict[str, dict[str, Any]]:
    return {
        "int8-torchao": {"quantize": "int8", "quantizer": "torchao"},
        "int8-torch": {"quantize": "int8", "quantizer": "torch"},
        "prune50-ft-int8": {"quantize": "int8", "prune": 0.5, "finetune_epochs": finetune_epochs},
        "structured50-ft": {
            "quantize": None, "prune": 0.5, "structured": True, "finetune_epochs": finetune_epochs,
        },
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/lifecycle-bench"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="recipe names to run (default: all)")
    args = parser.parse_args()
    runs = ensure_runs(args.runs, args.seed)
    load_before = os.getloadavg()
    report: dict[str, Any] = {"finetune_epochs": args.finetune_epochs, "data": {}}
    every = recipes(args.finetune_epochs)
    chosen = {k: v for k, v in every.items() if not args.only or k in args.only}
    for name, run_dir in runs.items():
        run = load_run(run_dir)
        splits = load_data(run.config, run.seed)  # once per data set, for every recipe
        report["data"][name] = {}
        for label, recipe in chosen.items():
            print(f"{name}: {label}", flush=True)
            result = compress_run(
                run_dir, splits=splits, out=args.runs / "compressed" / name / label,
                log=lambda message: None, **recipe,
            )  # fmt: skip
            print(result.table(), flush=True)
            report["data"][name][label] = result.to_json()
    report["load_average"] = {"before": load_before, "after": os.getloadavg()}
    report["torch"] = torch.__version__
    report["threads"] = torch.get_num_threads()
    (args.runs / "compress.json").write_text(json.dumps(report, indent=2, default=str))
    print_markdown(report)


def print_markdown(report: dict[str, Any]) -> None:
    la = report["load_average"]
    print(
        f"\nload average before / after: {' '.join(f'{v:.2f}' for v in la['before'])} / "
        f"{' '.join(f'{v:.2f}' for v in la['after'])}; {report['threads']} thread(s), "
        f"torch {report['torch']}\n"
    )
    print("| data | recipe | size (bytes) | size ratio | latency ms/batch | worst task (test Δ%) "
          "| tasks within 1 % (val / test) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, by_recipe in report["data"].items():
        for label, r in by_recipe.items():
            s, lat = r["size_bytes"], r["latency_ms_per_batch"]
            test = r["primary_change"]["test"]
            val = r["primary_change"]["val"]
            worst = min(test, key=lambda t: test[t]["relative_pct"])
            ok_val = sum(c["relative_pct"] >= -METRIC_TARGET_PCT for c in val.values())
            ok_test = sum(c["relative_pct"] >= -METRIC_TARGET_PCT for c in test.values())
            size_mark = "" if s["after"] / s["before"] <= SIZE_TARGET else " (miss)"
            print(
                f"| {name} | {label} | {s['before']:,} -> {s['after']:,} | "
                f"{s['after'] / s['before']:.3f}x{size_mark if 'int8' in label else ''} | "
                f"{lat['before']:.2f} -> {lat['after']:.2f} | {worst} "
                f"({test[worst]['relative_pct']:+.2f} %) | {ok_val}/{len(val)} / "
                f"{ok_test}/{len(test)} |"
            )
    for name, by_recipe in report["data"].items():
        labels = list(by_recipe)
        tasks = list(next(iter(by_recipe.values()))["primary_change"]["test"])
        print(f"\n{name}: primary metric per task, float -> relative change (test; val)\n")
        print("| task | float test | " + " | ".join(labels) + " |")
        print("|---|---|" + "---|" * len(labels))
        for task in tasks:
            first = by_recipe[labels[0]]["primary_change"]
            cells = []
            for label in labels:
                c = by_recipe[label]["primary_change"]
                test, val = c["test"][task]["relative_pct"], c["val"][task]["relative_pct"]
                cells.append(f"{test:+.2f} %; {val:+.2f} %")
            print(f"| {task} | {first['test'][task]['before']:.4f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
