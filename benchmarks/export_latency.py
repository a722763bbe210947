"""ONNX export of a Tox21 and a Census model: onnxruntime vs PyTorch CPU latency, and agreement.

Run from the repository root (public API only):

    python benchmarks/export_latency.py                     # trains the two runs if needed
    python benchmarks/export_latency.py --threads 2 --repeats 100

The runs (``runs/lifecycle-bench/{tox21,census}``, reused when they exist;
``benchmarks/compress.py`` reads the same ones): Tox21 with ``examples/tox21.yaml`` (ECFP4 + RDKit
2-D descriptors, MLP 1024, 12 epochs, patience 5) and Census with the shared-bottom entry of
``examples/census.yaml`` (MLP 64-32, 4 epochs), one seed each (``--seed``), no single-task
baselines.

For each run: ``export_model(run, "onnx")`` (which verifies on 256 validation + 256 test rows + one
row), then the latency per row of PyTorch (``torch.inference_mode``) and onnxruntime (CPU
provider) at batch 1 (the median over ``--repeats`` validation rows, one at a time) and batch 256
(the median over ``--repeats`` passes of the first 256 validation rows, divided by 256), both
with ``--threads`` intra-op threads. The machine's load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from polytask.config import parse_config
from polytask.data.batch import slice_inputs
from polytask.experiment import run_experiment
from polytask.lifecycle import export_model, load_run_model

ROOT = Path(__file__).resolve().parents[1]


def bench_configs(seed: int) -> dict[str, dict[str, Any]]:
    """The two experiments, from the examples, reduced to one seed and no baselines."""
    tox21 = yaml.safe_load((ROOT / "examples" / "tox21.yaml").read_text())
    census = yaml.safe_load((ROOT / "examples" / "census.yaml").read_text())
    census["models"] = census["models"][:1]  # the shared-bottom MLP
    for raw in (tox21, census):
        raw["seeds"] = [seed]
        raw["baselines"] = {"stl": False}
        raw.setdefault("training", {}).update(progress=False, tensorboard=False)
    return {"tox21": tox21, "census": census}


def ensure_runs(runs: Path, seed: int) -> dict[str, Path]:
    """The run directory of each benchmark model, trained here unless already finished."""
    found = {}
    for name, raw in bench_configs(seed).items():
        out = runs / name
        done = sorted(out.glob(f"*-seed{seed}/checkpoints/best.pt"))
        if done:
            found[name] = done[0].parents[1]
            continue
        print(f"training {name} into {out}", flush=True)
        started = time.perf_counter()
        result = run_experiment(parse_config(raw), out, report=False, overwrite=True)
        found[name] = next(r.run_dir for r in result.runs if r.kind == "mtl")
        print(f"  {time.perf_counter() - started:.0f} s", flush=True)
    return found


def median_time(fn: Callable[[Any], Any], items: list[Any], repeats: int, warmup: int = 5) -> float:
    """Median seconds of ``fn(item)`` over ``repeats`` calls, cycling through ``items``."""
    for i in range(warmup):
        fn(items[i % len(items)])
    times = []
    for i in range(repeats):
        item = items[i % len(items)]
        start = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(run_dir: Path, out: Path, threads: int, repeats: int) -> dict[str, Any]:
    import onnxruntime as ort

    result = export_model(run_dir, "onnx", out / "model.onnx")
    loaded = load_run_model(run_dir)
    assert loaded.splits is not None
    model = loaded.model.eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(result.path), options, providers=["CPUExecutionProvider"])
    names = result.input_names
    rows = loaded.splits.val.example(max(256, repeats))

    def feed(x: Any) -> dict[str, np.ndarray]:
        tensors = [x] if isinstance(x, torch.Tensor) else [x[n] for n in names]
        return {n: t.numpy() for n, t in zip(names, tensors, strict=True)}

    figures: dict[str, Any] = {"export": result.to_json(), "latency_us_per_row": {}}
    torch.set_num_threads(threads)
    for batch in (1, 256):
        if batch == 1:  # different rows, one at a time
            xs = [slice_inputs(rows, slice(i, i + 1)) for i in range(repeats)]
        else:
            xs = [slice_inputs(rows, slice(0, 256))]
        feeds = [feed(x) for x in xs]
        with torch.inference_mode():
            t = median_time(model, xs, repeats)
        o = median_time(lambda f: session.run(None, f), feeds, repeats)
        figures["latency_us_per_row"][str(batch)] = {
            "torch": 1e6 * t / batch, "onnxruntime": 1e6 * o / batch,
        }  # fmt: skip
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/lifecycle-bench"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    runs = ensure_runs(args.runs, args.seed)
    load_before = os.getloadavg()
    report: dict[str, Any] = {"threads": args.threads, "repeats": args.repeats, "data": {}}
    for name, run_dir in runs.items():
        print(f"exporting and timing {name} ({run_dir})", flush=True)
        out = args.runs / "exports" / name
        report["data"][name] = measure(run_dir, out, args.threads, args.repeats)
    report["load_average"] = {"before": load_before, "after": os.getloadavg()}
    report["torch"] = torch.__version__
    (args.runs / "export_latency.json").write_text(json.dumps(report, indent=2))
    print(
        f"\nload average before / after: {' '.join(f'{v:.2f}' for v in load_before)} / "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; {args.threads} thread(s), "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}\n"
    )
    print("| data | batch | PyTorch µs/row | onnxruntime µs/row | PyTorch / onnxruntime |")
    print("|---|---|---|---|---|")
    for name, figures in report["data"].items():
        for batch, lat in figures["latency_us_per_row"].items():
            print(
                f"| {name} | {batch} | {lat['torch']:.1f} | {lat['onnxruntime']:.1f} | "
                f"{lat['torch'] / lat['onnxruntime']:.2f}x |"
            )
    print("\n| data | tasks | rows verified | max abs diff, worst task | opset | file size |")
    print("|---|---|---|---|---|---|")
    for name, figures in report["data"].items():
        e = figures["export"]
        worst = max(e["max_abs_diff"], key=e["max_abs_diff"].get)
        print(
            f"| {name} | {len(e['output_names'])} | {sum(e['rows'].values())} | "
            f"{e['max_abs_diff'][worst]:.2e} ({worst}) | {e['opset']} | {e['bytes']:,} B |"
        )
        print("  per task: " + ", ".join(f"{t} {d:.1e}" for t, d in e["max_abs_diff"].items()))


if __name__ == "__main__":
    main()
