"""Detection on MNIST scenes: alone (single-task) vs beside segmentation and depth (equal weights).

Run from the repository root (public API only; real digits from ``$POLYTASK_DATA/mnist``):

    python benchmarks/scenes_detection.py --out runs/scenes-detection

Both arms train the same model (ResNet-10 of width 8 giving a stride-8 map, the detection head
upsampling it to stride 4) on the same scenes, seeds and settings; the multi-task arm adds the
segmentation and depth decoders and sums the three losses with equal weights. The kept epoch is
chosen on validation by the detection task's mAP@0.5 in both arms (so the question is only "does
the shared training help detection"), and the test split is scored once with it. Prints and
writes (``<out>/summary.json``, ``<out>/summary.md``) test mAP@0.5 and mAP as mean ± std over the
seeds, the other tasks' test metrics and the wall time per training, with the machine's load
average beside the timings. Each training's run directory keeps its ``dense_samples.npz`` (the
first validation scenes, predicted), which ``polytask report`` draws.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from polytask.balancing import create_balancer
from polytask.data.base import Splits
from polytask.data.mnist_scenes import load_mnist_scenes
from polytask.evaluation.dense_samples import write_dense_samples
from polytask.models import create_model, create_trunk
from polytask.training import TrainSettings, fit

TASKS = ["segmentation", "depth", "detection"]


def _train(splits: Splits, seed: int, args: argparse.Namespace, run_dir: Path) -> dict:
    torch.manual_seed(seed)
    trunk = create_trunk("resnet", depth=10, width=args.width, in_channels=1, output="map")
    model = create_model("hard_sharing", trunk, splits.tasks, example_input=splits.train.example())
    settings = TrainSettings(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, device="cpu",
        progress=False, tensorboard=False, eval_batch_size=400,
        selection="detection/map_50",
    )
    started = time.perf_counter()
    result = fit(model, splits, create_balancer("equal", splits.train.task_names), settings,
                 run_dir)
    seconds = time.perf_counter() - started
    write_dense_samples(model, splits.tasks, splits.val, run_dir)
    return {"seed": seed, "test": result.test, "val": result.val,
            "best_epoch": result.best_epoch, "seconds": seconds, "load": os.getloadavg()}


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/scenes-detection"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scenes", type=int, nargs=3, default=[2000, 400, 400])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # the scenes are fixed (data seed 0); the seed varies the initialisation and batch order
    arms = {
        "stl": load_mnist_scenes(source="idx", scenes=tuple(args.scenes), tasks=["detection"]),
        "mtl": load_mnist_scenes(source="idx", scenes=tuple(args.scenes), tasks=TASKS),
    }
    rows: dict[str, list[dict]] = {"stl": [], "mtl": []}
    for seed in args.seeds:
        for arm, splits in arms.items():
            run = _train(splits, seed, args, args.out / f"{arm}-seed{seed}")
            rows[arm].append(run)
            print(f"{arm} seed {seed}: test mAP@0.5 {run['test']['detection']['map_50']:.4f}, "
                  f"mAP {run['test']['detection']['map']:.4f}, best epoch {run['best_epoch']}, "
                  f"{run['seconds']:.0f} s (load {run['load'][0]:.1f})", flush=True)
    summary = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "runs": rows}
    lines = [
        "| arm | test mAP@0.5 | test mAP | other tasks (test) | s per training | load avg (1 min) |",
        "|---|---|---|---|---|---|",
    ]
    for arm, runs in rows.items():
        det = [r["test"]["detection"] for r in runs]
        others = ""
        if arm == "mtl":
            others = (f"mIoU {_mean_std([r['test']['segmentation']['miou'] for r in runs])}, "
                      f"depth abs err {_mean_std([r['test']['depth']['abs_error'] for r in runs])}")
        lines.append(
            f"| {'detection alone' if arm == 'stl' else 'det + seg + depth, equal'} | "
            f"{_mean_std([d['map_50'] for d in det])} | {_mean_std([d['map'] for d in det])} | "
            f"{others} | {statistics.mean(r['seconds'] for r in runs):.0f} | "
            f"{', '.join(format(r['load'][0], '.1f') for r in runs)} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (args.out / "summary.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
