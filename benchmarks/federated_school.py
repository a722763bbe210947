"""Federated School vs centralised training: explained variance (%) mean ± std over seeds.

    python benchmarks/federated_school.py --out bench-results/federated_school [--seeds 0 1 2]

Runs, on the same per-school splits (seed = split seed) and the same model / optimiser settings
(examples/school.yaml):

* ``federated``: examples/school_federated.yaml: 139 clients (one school each), FedAvg over the
  shared trunk, each school's head private (personal_heads: true);
* ``federated_global_head``: the same with personal_heads: false (one global model);
* ``centralised``: ``polytask train examples/school.yaml`` (139 heads, all data in one place).

Writes ``results.json`` and prints a Markdown table (pooled test explained variance, selected
round / epoch, wall time). Uses the public API only. Note ``uptime`` next to the timings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from polytask.config import load_config
from polytask.experiment import run_experiment
from polytask.federated import load_federated_config, parse_federated_config, run_federated

ROOT = Path(__file__).resolve().parents[1]


def _mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {sd:.2f}"


def federated(out: Path, seeds: list[int], personal: bool, rounds: int | None) -> dict[str, Any]:
    raw = load_federated_config(ROOT / "examples" / "school_federated.yaml").model_dump(mode="json")
    raw["seeds"] = seeds
    raw["federated"]["personal_heads"] = personal
    if rounds is not None:
        raw["federated"]["rounds"] = rounds
    started = time.perf_counter()
    result = run_federated(parse_federated_config(raw), out)
    ev = [r["summary_metrics"]["test"]["pooled_explained_variance"] for r in result.runs]
    return {
        "ev": ev, "selected": [r["selected_round"] for r in result.runs],
        "wall_s": time.perf_counter() - started,
    }


def centralised(out: Path, seeds: list[int]) -> dict[str, Any]:
    config = load_config(ROOT / "examples" / "school.yaml", overrides={"seeds": seeds})
    started = time.perf_counter()
    result = run_experiment(config, out, report=False)
    runs = [r for r in result.runs if r.kind == "mtl"]
    return {
        "ev": [r.summary["test"]["pooled_explained_variance"] for r in runs],
        "wall_s": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=None, help="override federated.rounds")
    parser.add_argument(
        "--only", nargs="+", default=["federated", "federated_global_head", "centralised"]
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    for name in args.only:
        if name in results:
            continue
        if name == "centralised":
            results[name] = centralised(args.out / name, args.seeds)
        else:
            personal = name == "federated"
            results[name] = federated(args.out / name, args.seeds, personal, args.rounds)
        path.write_text(json.dumps(results, indent=2))
    print("| setting | seeds | test explained variance (%) | selected round | wall s |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {len(r['ev'])} | {_mean_std(r['ev'])} | {r.get('selected', '—')} | "
            f"{r['wall_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
