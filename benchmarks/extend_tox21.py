"""Benchmark of `polytask extend` on Tox21: train 8 assays, add the other 4; add ClinTox.

Part A (examples/tox21_first8.yaml + examples/tox21_add4.yaml): per seed, train the 8-assay
model, train the 12-assay model on the same split (the "all together" reference), then extend
the 8-assay run with the 4 other assays in each requested mode. Targets (docs/extend.md): the 4
new assays within 0.01 test ROC-AUC of the 12-assay model, the 8 old ones within 0.005 of before.
Part B (--clintox, --sider): the 12-assay Tox21 run extended with ClinTox's 2 tasks or SIDER's 27
side-effect classes (ECFP only, so the features are the same bits; the added set's own molecules
and random split), against a model trained on the added set alone (``test_reference``).

Sizes are CPU sizes, set from the command line (defaults: 6 epochs, hidden 512, seeds 0 1 2).

    python benchmarks/extend_tox21.py --out /tmp/bench-extend [--epochs 6] [--seeds 0 1 2]
    python benchmarks/extend_tox21.py --out /tmp/bench-extend-b --seeds 0 --sider --skip-tox21
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from polytask.config import parse_config
from polytask.experiment import run_experiment
from polytask.lifecycle.extend import extend_run

ROOT = Path(__file__).resolve().parents[1]


def _config(path: str, epochs: int, hidden: int, seed: int, **data_options: Any) -> Any:
    raw = yaml.safe_load((ROOT / path).read_text())
    raw["training"]["epochs"] = epochs
    raw["training"].update(progress=False, tensorboard=False)
    raw["seeds"] = [seed]
    if "model" in raw:
        raw["model"]["trunk_options"]["hidden"] = [hidden]
    raw["data"]["options"].update(data_options)
    return raw


def _train(raw: dict[str, Any], out: Path) -> Path:
    runs = sorted(out.glob("*/results.json"))
    if runs:  # resumable: a finished run is read back
        return runs[0].parent
    result = run_experiment(parse_config(raw), out, report=False, log=lambda m: None)
    return result.runs[0].run_dir


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def extended_rows(run: Path, add: dict[str, Any], target: Path, mode: str, keep: bool,
                  label: str) -> list[dict[str, Any]]:
    """``extend_run``'s comparison rows, read back from ``target`` when a previous call finished."""
    if (target / "extend.json").exists():
        return json.loads((target / "extend.json").read_text())["rows"]
    t0 = time.perf_counter()
    rows = extend_run(run, parse_config(add), target, mode=mode, keep_old=keep,
                      log=lambda m: None).rows  # fmt: skip
    print(f"{label}: {mode} keep_old={keep} in {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def part_a(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    records = []
    for seed in args.seeds:
        first8 = _config("examples/tox21_first8.yaml", args.epochs, args.hidden, seed)
        add4 = _config("examples/tox21_add4.yaml", args.epochs, args.hidden, seed)
        every = json.loads(json.dumps(first8))
        every["name"] = "tox21-all12"
        every["data"]["options"].pop("tasks")
        t0 = time.perf_counter()
        run8 = _train(first8, out / f"first8-seed{seed}")
        run12 = _train(every, out / f"all12-seed{seed}")
        joint = json.loads((run12 / "results.json").read_text())["test"]
        print(f"seed {seed}: base runs in {time.perf_counter() - t0:.0f} s", flush=True)
        for mode, keep in args.modes:
            target = out / f"extended-{mode}{'-keep' if keep else ''}-seed{seed}"
            rows = extended_rows(run8, add4, target, mode, keep, f"seed {seed}")
            old = [r for r in rows if r["group"] == "old"]
            new = [r for r in rows if r["group"] == "new"]
            records.append({
                "seed": seed, "mode": mode, "keep_old": keep,
                "old_before": _mean([r["test_reference"] for r in old]),
                "old_after": _mean([r["test_extended"] for r in old]),
                "old_max_drop": max(r["test_reference"] - r["test_extended"] for r in old),
                "new_extended": _mean([r["test_extended"] for r in new]),
                "new_scratch": _mean([r["test_reference"] for r in new]),
                "new_joint12": _mean([joint[r["task"]]["auroc"] for r in new]),
                "old_joint12": _mean([joint[r["task"]]["auroc"] for r in old]),
            })  # fmt: skip
    return records


def part_b(args: argparse.Namespace, out: Path, dataset: str) -> list[dict[str, Any]]:
    """The ECFP-only 12-assay Tox21 run (one per seed, shared by every added data set), extended
    with ``dataset``'s tasks, trunk frozen."""
    records = []
    for seed in args.seeds[: args.part_b_seeds]:
        every = _config("examples/tox21_first8.yaml", args.epochs, args.hidden, seed,
                        features="ecfp")  # fmt: skip
        every["name"] = "tox21-ecfp"
        every["data"]["options"].pop("tasks")
        t0 = time.perf_counter()
        run12 = _train(every, out / f"tox21-ecfp-seed{seed}")
        added = _config("examples/tox21_add4.yaml", args.epochs, args.hidden, seed,
                        features="ecfp")  # fmt: skip
        added["name"] = dataset
        added["data"] = {"dataset": dataset, "options": {"split": "random", "features": "ecfp"}}
        target = out / f"{dataset}-frozen-seed{seed}"
        if (target / "extend.json").exists():
            rows = json.loads((target / "extend.json").read_text())["rows"]
        else:
            rows = extend_run(run12, parse_config(added), target, mode="frozen",
                              log=lambda m: None).rows  # fmt: skip
        wall = time.perf_counter() - t0
        print(f"seed {seed}: Tox21 -> {dataset} in {wall:.0f} s", flush=True)
        records.append({"seed": seed, "dataset": dataset, "rows": rows, "wall_s": wall})
    return records


def _part_b_table(records: list[dict[str, Any]]) -> None:
    """Per added task: extended (frozen Tox21 trunk) and from-scratch test ROC-AUC over seeds."""
    new = [[r for r in rec["rows"] if r["group"] == "new"] for rec in records]
    tasks = [r["task"] for r in new[0]]

    def ms(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.4f} ± {sd:.4f}"

    print("| task | extended (frozen Tox21 trunk) test | from scratch test | difference |")
    print("|---|---|---|---|")
    for i, task in enumerate(tasks):
        ext = [rows[i]["test_extended"] for rows in new]
        ref = [rows[i]["test_reference"] for rows in new]
        print(
            f"| {task} | {ms(ext)} | {ms(ref)} | {ms([a - b for a, b in zip(ext, ref, strict=True)])} |"
        )
    ext_mean = [statistics.fmean(r["test_extended"] for r in rows) for rows in new]
    ref_mean = [statistics.fmean(r["test_reference"] for r in rows) for rows in new]
    wins = [sum(r["test_extended"] > r["test_reference"] for r in rows) for rows in new]
    print(f"| mean of {len(tasks)} tasks | {ms(ext_mean)} | {ms(ref_mean)} | "
          f"{ms([a - b for a, b in zip(ext_mean, ref_mean, strict=True)])} |")  # fmt: skip
    print(f"extended above scratch on {wins} of {len(tasks)} tasks (per seed)")
    old = [[r for r in rec["rows"] if r["group"] == "old"] for rec in records]
    drift = max(abs(r["test_reference"] - r["test_extended"]) for rows in old for r in rows)
    print(f"Tox21 assays kept: {len(old[0])}, largest change of test ROC-AUC {drift:.6f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--clintox", action="store_true", help="also run part B with ClinTox")
    parser.add_argument("--sider", action="store_true", help="also run part B with SIDER")
    parser.add_argument(
        "--part-b-seeds", type=int, default=1, help="how many of --seeds part B runs (default 1)"
    )
    parser.add_argument("--skip-tox21", action="store_true", help="part B only")
    args = parser.parse_args()
    args.modes = [("frozen", False), ("partial", True)]
    args.out.mkdir(parents=True, exist_ok=True)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"machine load at start: {load}", flush=True)
    started = time.perf_counter()
    records = [] if args.skip_tox21 else part_a(args, args.out)
    payload: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "out"},
                               "load_at_start": load, "part_a": records}  # fmt: skip
    for dataset in [d for d in ("clintox", "sider") if getattr(args, d)]:
        payload[f"part_b_{dataset}"] = part_b(args, args.out, dataset)
        (args.out / "extend_tox21.json").write_text(json.dumps(payload, indent=2, default=str))
        print(f"\nTox21 -> {dataset}:")
        _part_b_table(payload[f"part_b_{dataset}"])
    payload["wall_s"] = time.perf_counter() - started
    (args.out / "extend_tox21.json").write_text(json.dumps(payload, indent=2, default=str))
    for mode, keep in args.modes:
        recs = [r for r in records if r["mode"] == mode and r["keep_old"] == keep]
        if not recs:
            continue

        def ms(key: str, recs: list[dict[str, Any]] = recs) -> str:
            values = [r[key] for r in recs]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.fmean(values):.4f} ± {sd:.4f}"

        print(f"{mode} keep_old={keep}: old before {ms('old_before')} after {ms('old_after')} "
              f"(max drop {ms('old_max_drop')}); new extended {ms('new_extended')}, "
              f"joint-12 {ms('new_joint12')}, scratch {ms('new_scratch')}")  # fmt: skip
    print(
        f"wall {payload['wall_s']:.0f} s; load now: "
        f"{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}"
    )


if __name__ == "__main__":
    main()
