"""Benchmarks of ``polytask advise`` and ``polytask fit --auto`` (not tests: minutes of CPU).

Two measurements (docs/relationships.md, "Grouping and advice"):

* ``advise``: ``polytask advise`` on a Census slice (three binary tasks) within a budget; then the
  recommended configuration is trained on 3 seeds and its *test* Δm% against the single-task
  baselines reported (mean ± std), beside the all-shared equal-weights model. The advice itself
  looked at validation only; the test split is read here, after the decision.

      python benchmarks/advise.py advise --max-rows 4000 --budget 4m --epochs 8 --out /tmp/adv

* ``fit-auto``: ``polytask fit TABLE --auto`` on a 2,000-molecule, 14-target QM8 table (RDKit 2-D
  descriptors as features; QM8's repeated PBE0 columns included) — wall time of the whole command
  and budget adherence.

      python benchmarks/advise.py fit-auto --rows 2000 --epochs 5 --out /tmp/fa

Both print ``uptime`` before and after: the machine is shared, timings depend on its load.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from polytask.config import load_config
from polytask.experiment import run_experiment


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def polytask(*args: str) -> tuple[int, float, str]:
    """Run the ``polytask`` command line; exit code, wall seconds (start-up included), output."""
    started = time.perf_counter()
    command = [str(Path(sys.executable).with_name("polytask")), *args]
    proc = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return proc.returncode, time.perf_counter() - started, proc.stdout + proc.stderr


def test_delta_m(configs: list[str], seeds: list[int], out: Path) -> list[float]:
    """Test Δm% of a recommendation per seed: Σ_g |g| Δm_g / T over its models."""
    per_seed = {s: 0.0 for s in seeds}
    total = 0
    for path in configs:
        config = load_config(path)
        config = config.model_copy(update={
            "seeds": seeds, "baselines": config.baselines.model_copy(update={"stl": True}),
        })
        result = run_experiment(config, out / Path(path).stem, log=lambda _: None, report=False,
                                overwrite=True)
        size = len(result.tasks)
        total += size
        for r in result.runs:
            if r.kind == "mtl":
                assert r.delta_m is not None
                per_seed[r.seed] += size * r.delta_m
    return [v / total for _, v in sorted(per_seed.items())]


def mean_std(values: list[float]) -> str:
    return f"{statistics.fmean(values):+.2f} ± {statistics.stdev(values):.2f}"


def bench_advise(args: argparse.Namespace) -> None:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "name": "census-advise",
        # the split fixed (as the advice fixes it): seeds vary the initialisation only
        "data": {"dataset": "census", "options": {"max_rows": args.max_rows, "three_tasks": True},
                 "split_seed": 0},
        "model": {"trunk": "mlp", "trunk_options": {"hidden": [64, 32]}},
        "training": {"epochs": args.epochs, "batch_size": 128, "lr": 1e-3, "progress": False},
        "output_dir": str(out / "runs"),
    }
    import yaml

    path = out / "census.yaml"
    path.write_text(yaml.safe_dump(config))
    print(f"before: {uptime()}")
    code, wall, text = polytask("advise", str(path), "--budget", args.budget,
                                "--out", str(out / "advice"))
    print(text[-4000:])
    if code != 0:
        raise SystemExit(f"polytask advise failed ({code})")
    advice = json.loads((out / "advice" / "advice.json").read_text())
    seeds = [0, 1, 2]
    recommended = test_delta_m(advice["configs"], seeds, out / "test")
    shared = test_delta_m([str(path)], seeds, out / "test-shared")
    print(f"after: {uptime()}")
    summary = {
        "budget_s": advice["budget_s"], "advice_elapsed_s": advice["elapsed_s"],
        "advise_wall_s": wall, "structure": advice["structure"], "groups": advice["groups"],
        "hyper_parameters": advice["hyper_parameters"],
        "val_delta_m": advice["val_delta_m"], "val_delta_m_std": advice["val_delta_m_std"],
        "test_delta_m_recommended": recommended, "test_delta_m_all_shared_equal": shared,
    }
    (out / "advise_bench.json").write_text(json.dumps(summary, indent=1))
    print(f"advise: wall {wall:.0f}s for a {advice['budget_s']:.0f}s budget "
          f"({100 * wall / advice['budget_s']:.0f}%); recommended {advice['structure']} "
          f"{advice['groups']} {advice['hyper_parameters']}")
    print(f"test Δm% (3 seeds, split fixed): recommended {mean_std(recommended)}; "
          f"all-shared equal (config defaults) {mean_std(shared)}")


def qm8_table(path: Path, rows: int, data_dir: Path) -> list[str]:
    """2,000 QM8 molecules as a table: RDKit 2-D descriptors + 14 of the 16 targets."""
    from polytask.data.molecules import featurize_descriptors

    with gzip.open(data_dir / "moleculenet" / "qm8.csv.gz", "rt") as f:
        frame = pd.read_csv(f, nrows=rows)  # pandas names the repeated columns E1-PBE0.1, ...
    frame = frame.rename(columns=lambda c: c.replace(".", "_"))  # task names hold no "."
    targets = [c for c in frame.columns if c != "smiles"][:14]
    if path.exists():  # the descriptors take minutes on a loaded machine: reuse the table
        return targets
    values, names, valid = featurize_descriptors(frame["smiles"].tolist())
    keep = np.isfinite(values).all(axis=0) & (np.nanstd(values, axis=0) > 0)
    features = pd.DataFrame(values[:, keep], columns=[f"d_{n}" for n, k in zip(names, keep,
                                                                               strict=True) if k])
    table = pd.concat([features, frame[targets]], axis=1)[valid]
    table.to_csv(path, index=False)
    return targets


def bench_fit_auto(args: argparse.Namespace) -> None:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(os.environ.get("POLYTASK_DATA", "../shared/data"))
    table = out / "qm8_2000.csv"
    targets = qm8_table(table, args.rows, data_dir)
    print(f"table {table}: {args.rows} molecules, {len(targets)} targets: {targets}")
    print(f"before: {uptime()}")
    cmd = ["fit", str(table), *[x for t in targets for x in ("-t", t)], "--auto",
           *(["--budget", args.budget] if args.budget else []),  # "": fit --auto's default
           "--epochs", str(args.epochs), "--out", str(out / "auto")]
    code, wall, text = polytask(*cmd)
    print(text[-4000:])
    print(f"after: {uptime()}")
    if code != 0:
        raise SystemExit(f"polytask fit --auto failed ({code})")
    advice = json.loads((out / "auto" / "advice.json").read_text())
    budget = advice["budget_s"]
    summary = {"wall_s": wall, "budget_s": budget, "advice_elapsed_s": advice["elapsed_s"],
               "within_10_percent": wall <= 1.1 * budget, "structure": advice["structure"],
               "groups": advice["groups"], "val_delta_m": advice["val_delta_m"]}
    (out / "fit_auto_bench.json").write_text(json.dumps(summary, indent=1))
    print(f"fit --auto: wall {wall:.0f}s (process start to exit) for a {budget:.0f}s budget "
          f"({100 * wall / budget:.0f}%); advisor's own clock {advice['elapsed_s']:.0f}s; "
          f"target < 180s: {'met' if wall < 180 else 'missed'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("advise")
    a.add_argument("--max-rows", type=int, default=4000)
    a.add_argument("--budget", default="4m")
    a.add_argument("--epochs", type=int, default=8)
    a.add_argument("--out", type=Path, default=Path("bench-results/advise"))
    f = sub.add_parser("fit-auto")
    f.add_argument("--rows", type=int, default=2000)
    f.add_argument("--budget", default="", help="default: fit --auto's own (2m)")
    f.add_argument("--epochs", type=int, default=10)
    f.add_argument("--out", type=Path, default=Path("bench-results/fit-auto"))
    args = parser.parse_args()
    bench_advise(args) if args.what == "advise" else bench_fit_auto(args)


if __name__ == "__main__":
    main()
