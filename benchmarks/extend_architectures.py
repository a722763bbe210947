"""Benchmark of `polytask extend` on the soft-sharing architectures: Tox21, 8 assays + 4 added.

For each architecture (default: cross_stitch and ple) and seed: train the 8-assay model
(examples/tox21_first8.yaml with the architecture swapped in), the 12-assay model of the same
architecture on the same split (the "all together" reference), then extend the 8-assay run with
the other 4 assays (examples/tox21_add4.yaml) in each mode: `frozen` (only the new tasks' own
columns / experts / gates / heads train) and `finetune --keep-old`. The from-scratch model of the
4 assays (same architecture) is trained once per seed by extend itself and cached.

Reported per architecture and mode, mean ± std over seeds of test ROC-AUC: the 8 old assays before
and after (and the largest single-assay drop), the 4 new ones extended, all 12 together and from
scratch. Resumable: finished runs and extensions under --out are read back.

    python benchmarks/extend_architectures.py --out /tmp/bench-extend-arch [--archs cross_stitch ple]
        [--epochs 5] [--hidden 256 128] [--seeds 0 1 2] [--features ecfp --n-bits 1024]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from polytask.config import parse_config
from polytask.experiment import run_experiment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extend_tox21 import extended_rows  # a sibling benchmark script, not the package

ROOT = Path(__file__).resolve().parents[1]
MODES = (("frozen", False), ("finetune", True))


def _config(path: str, args: argparse.Namespace, seed: int, arch: str | None) -> dict[str, Any]:
    raw = yaml.safe_load((ROOT / path).read_text())
    raw["training"].update(epochs=args.epochs, progress=False, tensorboard=False)
    raw["seeds"] = [seed]
    raw["data"]["options"].update(features=args.features, n_bits=args.n_bits)
    if arch is not None:
        raw["model"]["architecture"] = arch
        raw["model"]["trunk_options"]["hidden"] = list(args.hidden)
    return raw


def _train(raw: dict[str, Any], out: Path) -> Path:
    runs = sorted(out.glob("*/results.json"))
    if runs:
        return runs[0].parent
    return run_experiment(parse_config(raw), out, report=False, log=lambda m: None).runs[0].run_dir


def _record(rows: list[dict[str, Any]], joint: dict[str, Any]) -> dict[str, float]:
    old = [r for r in rows if r["group"] == "old"]
    new = [r for r in rows if r["group"] == "new"]
    mean = statistics.fmean
    return {
        "old_before": mean(r["test_reference"] for r in old),
        "old_after": mean(r["test_extended"] for r in old),
        "old_max_drop": max(r["test_reference"] - r["test_extended"] for r in old),
        "new_extended": mean(r["test_extended"] for r in new),
        "new_scratch": mean(r["test_reference"] for r in new),
        "new_joint12": mean(joint[r["task"]]["auroc"] for r in new),
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    records = []
    for arch in args.archs:
        for seed in args.seeds:
            first8 = _config("examples/tox21_first8.yaml", args, seed, arch)
            add4 = _config("examples/tox21_add4.yaml", args, seed, None)
            every = json.loads(json.dumps(first8))
            every["name"] = "tox21-all12"
            every["data"]["options"].pop("tasks")
            t0 = time.perf_counter()
            run8 = _train(first8, args.out / f"{arch}-first8-seed{seed}")
            run12 = _train(every, args.out / f"{arch}-all12-seed{seed}")
            joint = json.loads((run12 / "results.json").read_text())["test"]
            print(f"{arch} seed {seed}: base runs {time.perf_counter() - t0:.0f} s", flush=True)
            for mode, keep in MODES:
                target = args.out / f"{arch}-{mode}{'-keep' if keep else ''}-seed{seed}"
                rows = extended_rows(run8, add4, target, mode, keep, f"{arch} seed {seed}")
                records.append({"arch": arch, "seed": seed, "mode": mode, "keep_old": keep,
                                **_record(rows, joint)})  # fmt: skip
    return records


def table(records: list[dict[str, Any]]) -> str:
    keys = ("old_before", "old_after", "old_max_drop", "new_extended", "new_joint12", "new_scratch")
    lines = ["| architecture | mode | old 8: before | old 8: after | largest single-assay drop "
             "| new 4: extended | new 4: all 12 together | new 4: from scratch | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        label = r["mode"] + (" + keep-old" if r["keep_old"] else "")
        groups.setdefault((r["arch"], label), []).append(r)
    for (arch, label), recs in groups.items():
        cells = []
        for key in keys:
            values = [r[key] for r in recs]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.4f} ± {sd:.4f}")
        lines.append(f"| {arch} | {label} | {' | '.join(cells)} | {len(recs)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--archs", nargs="+", default=["cross_stitch", "ple"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 128])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--features", default="ecfp+rdkit2d", help="molecule features (both files)")
    parser.add_argument("--n-bits", type=int, default=2048, help="ECFP width (both files)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"machine load at start: {load}", flush=True)
    started = time.perf_counter()
    records = run(args)
    wall = time.perf_counter() - started
    payload = {"args": {k: str(v) for k, v in vars(args).items()}, "load_at_start": load,
               "records": records, "wall_s": wall}  # fmt: skip
    (args.out / "extend_architectures.json").write_text(json.dumps(payload, indent=2))
    print(table(records))
    end = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"wall {wall:.0f} s; load at end: {end}")


if __name__ == "__main__":
    main()
