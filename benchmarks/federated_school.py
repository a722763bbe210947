"""Federated School vs centralised training: explained variance (%) mean ± std over seeds.

    python benchmarks/federated_school.py --out bench-results/federated_school [--seeds 0 1 2]

Runs, on the same per-school splits (seed = split seed) and the same model / optimiser settings
(examples/school.yaml):

* ``federated``: examples/school_federated.yaml: 139 clients (one school each), FedAvg over the
  shared trunk, each school's head private (personal_heads: true);
* ``federated_global_head``: the same with personal_heads: false (one global model);
* ``centralised``: ``polytask train examples/school.yaml`` (139 heads, all data in one place);
* ``alone``: each school by itself: the model a client builds (same features, trunk, head,
  initialisation and optimiser settings) trained exactly as a client trains, by the client's own
  ``local_train``, on that school's training students only, with nothing averaged: ``rounds``
  blocks of ``local_epochs``; its target scaled with its own training students; the block
  selected on its own validation loss (as the federation selects its round); scored on its test
  students. Explained variance is pooled over every school's test students exactly as the
  federated arms pool it (``evaluation_record``'s n, sum y, sum y^2, SSE; 1 - SSE / SST).

Writes ``results.json`` and prints a Markdown table (pooled test explained variance, selected
round / epoch, wall time). Uses the public API only. Note ``uptime`` next to the timings.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from polytask.balancing import create_balancer
from polytask.config import load_config
from polytask.data import MultiTaskData, Splits
from polytask.experiment import build_model, run_experiment
from polytask.federated import (
    ClientData,
    FederatedConfig,
    load_federated_config,
    parse_federated_config,
    partition_clients,
    run_federated,
)
from polytask.federated.client import evaluation_record, local_train

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
        "ev": ev,
        "selected": [r["selected_round"] for r in result.runs],
        "wall_s": time.perf_counter() - started,
    }


def _own_task(client: ClientData) -> Splits:
    """The client's three splits with a task object of its own (its scaler is fitted on its own
    training students and must not leak into another school's)."""
    task = dataclasses.replace(client.train.tasks[0])

    def relabel(data: MultiTaskData) -> MultiTaskData:
        return MultiTaskData(
            inputs=data.inputs, targets=dict(data.targets), tasks=[task], name=data.name,
            row_ids=data.row_ids, info=data.info,
        )  # fmt: skip

    splits = Splits(relabel(client.train), relabel(client.val), relabel(client.test))
    return splits.validate().fit_target_scalers("per_task")


def _school_alone(
    config: FederatedConfig, client: ClientData, index: int, seed: int
) -> tuple[dict[str, float], int]:
    """One school trained alone, exactly as a client trains in the federation but with nothing
    averaged: ``rounds`` blocks of ``local_epochs`` through the client's own local training
    (``local_train``: polytask's training step, fresh optimizer per block), its validation loss
    after each block, the best block's weights scored on its test students. Returns the sums
    that pool explained variance (``evaluation_record``, as the federated arms send them)."""
    splits = _own_task(client)
    task = splits.tasks[0]
    torch.manual_seed(seed)
    model = build_model(
        config.experiment(), [task], splits.train.example(), config.model, splits.train.info
    )
    balancer = create_balancer(config.balancer.name, [task.name], **config.balancer.options)
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    for block in range(1, config.federated.rounds + 1):
        local_seed = (seed * 1_000_003 + index * 10_007 + block) % (2**31)
        local_train(model, balancer, splits.train, config, seed=local_seed,
                    where=f"alone, seed {seed}: {client.name}, block {block}")  # fmt: skip
        val_loss = float(evaluation_record(model, [task], splits.val, config)["loss"][0])  # type: ignore[index]
        if not math.isfinite(val_loss):
            raise ValueError(f"alone, seed {seed}: {client.name}: validation loss {val_loss}")
        if best is None or val_loss < best[0]:
            best = (val_loss, block, copy.deepcopy(model.state_dict()))
    assert best is not None
    model.load_state_dict(best[2])
    record = evaluation_record(model, [task], splits.test, config)
    sums = {k: float(record[f"ev-{k}"]) for k in ("n", "sum", "sumsq", "sse")}  # type: ignore[arg-type]
    return sums, best[1]


def alone(seeds: list[int], rounds: int | None) -> dict[str, Any]:
    raw = load_federated_config(ROOT / "examples" / "school_federated.yaml").model_dump(mode="json")
    if rounds is not None:
        raw["federated"]["rounds"] = rounds
    config = parse_federated_config(raw)
    started = time.perf_counter()
    ev, best_epochs = [], []
    for seed in seeds:
        federation = partition_clients(config, seed)
        total = {"n": 0.0, "sum": 0.0, "sumsq": 0.0, "sse": 0.0}
        epochs = []
        for index, client in enumerate(federation.clients):
            sums, best = _school_alone(config, client, index, seed)
            total = {k: total[k] + sums[k] for k in total}
            epochs.append(best)
        sst = total["sumsq"] - total["sum"] ** 2 / total["n"]
        ev.append(100.0 * (1.0 - total["sse"] / sst))
        best_epochs.append(statistics.median(epochs))
        print(f"alone, seed {seed}: {ev[-1]:.2f} % ({time.perf_counter() - started:.0f} s)",
              flush=True)  # fmt: skip
    return {"ev": ev, "selected": best_epochs, "wall_s": time.perf_counter() - started}


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
        "--only",
        nargs="+",
        default=["federated", "federated_global_head", "centralised", "alone"],
        choices=["federated", "federated_global_head", "centralised", "alone"],
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
        elif name == "alone":
            results[name] = alone(args.seeds, args.rounds)
        else:
            personal = name == "federated"
            results[name] = federated(args.out / name, args.seeds, personal, args.rounds)
        path.write_text(json.dumps(results, indent=2))
    print(f"load: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print("| setting | seeds | test explained variance (%) | per seed | selected round "
          "(alone: median selected block of local_epochs) | wall s |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {len(r['ev'])} | {_mean_std(r['ev'])} | "
            f"{' / '.join(f'{v:.2f}' for v in r['ev'])} | {r.get('selected', '—')} | "
            f"{r['wall_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
