"""What recording task relationship measures (``training.relations``) adds to a training epoch.

Run from the repository root (public API only; Tox21 needs ``pip install 'polytask[chem]'``):

    python benchmarks/relations_cost.py --rounds 2 --epochs 1

Each data set is trained as its example config says (``examples/tox21.yaml``: 12 assays, ECFP4 +
RDKit descriptors, MLP [1024] with dropout 0.5, batch 128, AdamW; ``examples/census.yaml``: its
first model, the shared-bottom MLP [64, 32], batch 256), equal weights, seed 0, for ``--epochs``
epochs, once per variant:

* ``off``: no recording;
* ``default``: ``relations: true`` (gradient measures every 10 steps, lookahead every max(10, 40·T));
* ``no-lookahead``: ``{lookahead: false}`` (gradient cosines and conflicts only);
* ``lookahead-10``: ``{lookahead_every: 10}`` (TAG at every record);
* ``every-20``: ``{every: 20}`` (gradient measures half as often, lookahead max(20, 40·T)).

Two clocks, one torch thread:

* CPU seconds of the process during ``fit`` (``time.process_time``), divided by the epochs: the
  compute the recording adds, which the other processes of a shared machine barely disturb (it
  includes the final validation and test pass, the same in every variant, so the overhead it shows
  is slightly diluted);
* wall seconds per epoch, ``epoch_time_s`` of ``metrics.csv`` (training steps plus the
  validation pass): what a user waits, which swings with the machine load.

After one untimed warm-up run (imports and first calls), variants run in interleaved rounds, so that each round sees about the same load; the figures are
medians over rounds (and epochs, for the wall clock), the overhead the ratio of medians. The
machine load (``uptime``) is printed before and after: write it next to the figures
(docs/relationships.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from polytask.balancing import create_balancer
from polytask.config import load_config
from polytask.experiment import build_model, load_data
from polytask.training import TrainSettings, fit

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"tox21": ROOT / "examples" / "tox21.yaml", "census": ROOT / "examples" / "census.yaml"}
VARIANTS: dict[str, Any] = {
    "off": None,
    "default": True,
    "no-lookahead": {"lookahead": False},
    "lookahead-10": {"lookahead_every": 10},
    "every-20": {"every": 20},
}


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def _epoch_times(run_dir: Path) -> list[float]:
    with (run_dir / "metrics.csv").open() as fh:
        return [float(r["value"]) for r in csv.DictReader(fh) if r["metric"] == "epoch_time_s"]


def measure(name: str, rounds: int, epochs: int, variants: list[str]) -> dict[str, Any]:
    config = load_config(CONFIGS[name])
    splits = load_data(config, seed=0)
    tasks = splits.tasks
    steps = -(-len(splits.train) // config.training.batch_size)
    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}

    def train(variant: str) -> tuple[float, list[float]]:
        """CPU seconds per epoch and wall seconds of each epoch of one run of ``variant``."""
        torch.manual_seed(0)
        model = build_model(config, tasks, splits.train.example(), None, splits.info)
        balancer = create_balancer("equal", [t.name for t in tasks])
        settings: TrainSettings = config.training.settings(0)
        settings = settings.model_copy(update={
            "epochs": epochs, "patience": None, "progress": False, "tensorboard": False,
        })
        settings.relations = VARIANTS[variant]  # validated on assignment
        with tempfile.TemporaryDirectory() as tmp:
            started = time.process_time()
            fit(model, splits, balancer, settings, Path(tmp) / "run")
            return (time.process_time() - started) / epochs, _epoch_times(Path(tmp) / "run")

    train(variants[-1])  # warm-up, not timed: lazy imports and first calls (vmap, functional_call)
    for r in range(rounds):
        for variant in variants:
            c, wall = train(variant)
            cpu[variant].append(c)
            times[variant] += wall
            print(
                f"{name} round {r} {variant}: cpu {cpu[variant][-1]:.2f} s/epoch, wall "
                f"{times[variant][-epochs:]}", flush=True,
            )
    base, base_cpu = statistics.median(times["off"]), statistics.median(cpu["off"])
    return {
        "data set": name,
        "tasks": len(tasks),
        "steps per epoch": steps,
        "variants": {
            v: {
                "cpu_s": statistics.median(cpu[v]),
                "cpu_overhead": statistics.median(cpu[v]) / base_cpu - 1,
                "median_s": statistics.median(t),
                "min_s": min(t),
                "overhead": statistics.median(t) / base - 1,
                "epochs_timed": len(t),
            }
            for v, t in times.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args()
    if "off" not in args.variants:
        parser.error("the variants must include 'off' (the reference)")
    torch.set_num_threads(1)
    os.environ.setdefault("MPLBACKEND", "Agg")
    before = _uptime()
    results = [measure(d, args.rounds, args.epochs, args.variants) for d in args.datasets]
    after = _uptime()
    print(f"\nload before: {before}\nload after:  {after}\n")
    print(
        "| data set | tasks | steps/epoch | variant | CPU s/epoch | CPU overhead "
        "| wall s/epoch median (min) | wall overhead |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for res in results:
        for v, f in res["variants"].items():
            print(
                f"| {res['data set']} | {res['tasks']} | {res['steps per epoch']} | {v} | "
                f"{f['cpu_s']:.1f} | {f['cpu_overhead']:+.1%} | "
                f"{f['median_s']:.1f} ({f['min_s']:.1f}) | {f['overhead']:+.1%} |"
            )
    if args.out is not None:
        args.out.write_text(json.dumps({"uptime": [before, after], "results": results}, indent=2))


if __name__ == "__main__":
    main()
