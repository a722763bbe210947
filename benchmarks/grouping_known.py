"""Does the grouping search find a grouping we know? Two real MNIST digits, four derived tasks.

Four binary tasks: two read only the left digit (its parity, whether it is > 4) and two only the
right digit; the intended structure is {left_parity, left_gt4} {right_parity, right_gt4}. Two
ways to present the digits (``--structure``):

* ``overlay``: MultiMNIST images (the two digits overlaid, Sener & Koltun's recipe) and a shared
  LeNet-style CNN. The convolutions are shared across positions, so features for "parity" serve
  both digits: the structure is intended, not guaranteed for this model;
* ``side_by_side``: the same digit pairs, their 2 x 784 pixels concatenated, and a shared MLP. A
  left task needs none of the right digit's inputs (and the reverse): tasks that do not share the
  features they need, a structure the data itself fixes.

One shared model is trained with equal weights while the relationship measures are recorded
(``training.relations``); the grouping search then ranks every partition (exact: Bell(4) = 15)
from each measure, over all epochs and over the second half of training, raw and normalised per
row (``A[i, j] / A[i, i]``: the effect on j relative to the source's effect on itself) and per
column (``A[i, j] / A[j, j]``: relative to j's own step). The hit rate over the seeds is printed
per measure.

Run (sizes reduced for a shared 2-core CPU; see docs/relationships.md):

    python benchmarks/grouping_known.py --structure overlay --n 3000 --epochs 6 --seeds 0 1 2
    python benchmarks/grouping_known.py --structure side_by_side --n 3000 --epochs 6 --seeds 0 1 2

Writes ``<out>/grouping_known.json`` and prints a table per seed and the hit rates. Public API
only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from polytask.analysis import read_relations
from polytask.analysis.grouping import partition_score, search_groupings
from polytask.balancing import create_balancer
from polytask.data import load_dataset
from polytask.data.base import MultiTaskData, Splits
from polytask.data.multimnist import load_mnist_digits
from polytask.models import create_model, create_trunk
from polytask.tasks import Task
from polytask.training import TrainSettings, fit

KNOWN = [["left_parity", "left_gt4"], ["right_parity", "right_gt4"]]
SIMILARITIES = ("lookahead_affinity", "lookahead_affinity_first_order", "grad_cosine")
NORMALISATIONS = ("raw", "row", "column")


def normalised(a: np.ndarray, how: str) -> np.ndarray:
    """``a`` divided per row or per column by its diagonal (the self-affinities), or as is."""
    d = np.diag(a)
    if how == "row":
        return a / d[:, None]
    if how == "column":
        return a / d[None, :]
    return a


def side_by_side(splits: Splits) -> Splits:
    """The same digit pairs as ``splits``, as their two 784-pixel vectors concatenated."""
    images, _ = load_mnist_digits("idx")
    pixels = torch.from_numpy(images.astype(np.float32) / 255.0).reshape(len(images), -1)

    def flat(data: MultiTaskData, split: str) -> MultiTaskData:
        pairs = torch.tensor(splits.info["pairs"][split])
        inputs = torch.cat([pixels[pairs[:, 0]], pixels[pairs[:, 1]]], dim=1)
        return MultiTaskData(inputs, data.targets, data.tasks, name=data.name,
                             row_ids=data.row_ids)

    return Splits(flat(splits.train, "train"), flat(splits.val, "val"), flat(splits.test, "test"),
                  info=splits.info)


def four_tasks(splits: Splits) -> Splits:
    """The MultiMNIST splits with the four binary tasks derived from the two digits."""
    tasks = [Task(n, "binary") for n in ("left_parity", "left_gt4", "right_parity", "right_gt4")]

    def derive(data: MultiTaskData) -> MultiTaskData:
        left, right = data.targets["left"], data.targets["right"]
        targets = {
            "left_parity": (left % 2).float(), "left_gt4": (left > 4).float(),
            "right_parity": (right % 2).float(), "right_gt4": (right > 4).float(),
        }
        return MultiTaskData(data.inputs, targets, tasks, name=data.name, row_ids=data.row_ids)

    return Splits(derive(splits.train), derive(splits.val), derive(splits.test), info=splits.info)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def key(groups: list[list[str]]) -> list[list[str]]:
    return sorted(sorted(g) for g in groups)


def run(seed: int, n: int, epochs: int, out: Path, measure: str, every: int | None,
        structure: str) -> dict[str, object]:
    splits = four_tasks(load_dataset("multimnist", source="idx", n=n, seed=seed))
    torch.manual_seed(seed)
    if structure == "side_by_side":
        splits = side_by_side(splits)
        trunk = create_trunk("mlp", in_features=2 * 784, hidden=[256, 64])
    else:
        trunk = create_trunk("small_cnn")
    model = create_model("hard_sharing", trunk, splits.tasks)
    steps = -(-len(splits.train) // 64)
    settings = TrainSettings(
        epochs=epochs, batch_size=64, lr=2e-3, seed=seed, progress=False, tensorboard=False,
        relations={"every": every or max(1, steps // 8),
                   "lookahead_every": every or max(1, steps // 8)},
    )
    run_dir = out / f"seed{seed}"
    started = time.perf_counter()
    fit(model, splits, create_balancer("equal", splits.train.task_names), settings, run_dir)
    train_s = time.perf_counter() - started
    relations = read_relations(run_dir)
    names, affinity = relations.affinity(measure)
    found = search_groupings(names, affinity, k=3)
    # every similarity measure, over all epochs and over the second half, raw and normalised
    others = {}
    half = slice(len(relations.epochs) // 2, None)
    for name in SIMILARITIES:
        for label, epochs in (("all epochs", None), ("second half", half)):
            _, raw = relations.affinity(name, epochs)
            for how in NORMALISATIONS:
                best = search_groupings(names, normalised(raw, how), k=1)[0]
                others[f"{name}, {how} ({label})"] = {
                    "groups": best.groups, "found_known": key(best.groups) == key(KNOWN)}
    return {
        "seed": seed,
        "tasks": names,
        "affinity": affinity.tolist(),
        "top": [{"groups": p.groups, "score": p.score} for p in found],
        "known_score": partition_score(names, affinity, KNOWN),
        "found_known": key(found[0].groups) == key(KNOWN),
        "measures": others,
        "train_s": train_s,
        "lookahead_steps": relations.counts["lookahead_steps"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="MultiMNIST images (of the 10k)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--measure", default="lookahead_affinity")
    parser.add_argument("--every", type=int, default=None,
                        help="record every this many steps (default: 8 records per epoch)")
    parser.add_argument("--structure", choices=["overlay", "side_by_side"], default="overlay")
    parser.add_argument("--out", type=Path, default=Path("bench-results/grouping-known"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    print(f"before: {uptime()}", flush=True)
    results = []
    for seed in args.seeds:
        r = run(seed, args.n, args.epochs, args.out, args.measure, args.every, args.structure)
        results.append(r)
        print(f"seed {seed}: trained in {r['train_s']:.0f}s, {r['lookahead_steps']} lookahead "
              f"records; known grouping found: {r['found_known']}")
        names = r["tasks"]
        a = np.array(r["affinity"])
        print("  affinity (row -> column): " + "  ".join(f"{n:>12s}" for n in names))
        for name, row in zip(names, a, strict=True):
            print(f"  {name:>24s}: " + "  ".join(f"{v:+12.2e}" for v in row))
        for p in r["top"]:
            print(f"  score {p['score']:+.3e}: " + " ".join("{" + ",".join(g) + "}" for g in p["groups"]))
        print(f"  known grouping's score: {r['known_score']:+.3e}")
        for name, m in r["measures"].items():
            print(f"  best by {name}: " + " ".join("{" + ",".join(g) + "}" for g in m["groups"])
                  + f" (known: {m['found_known']})")
    rates = {m: sum(bool(r["measures"][m]["found_known"]) for r in results)
             for m in results[0]["measures"]}
    print(f"\nafter: {uptime()}\n\n| measure (epochs) | known grouping found |\n|---|---|")
    for m, hits in rates.items():
        marks = " ".join("yes" if r["measures"][m]["found_known"] else "no" for r in results)
        print(f"| {m} | {hits} of {len(results)} ({marks}) |")
    summary = {
        "structure": args.structure, "n": args.n, "epochs": args.epochs,
        "measure": args.measure, "every": args.every, "known": KNOWN, "hit_rates": rates,
        "found_known": sum(bool(r["found_known"]) for r in results), "seeds": len(results),
        "runs": results,
    }
    (args.out / "grouping_known.json").write_text(json.dumps(summary, indent=1))
    print(f"known grouping found on {summary['found_known']} of {len(results)} seeds")


if __name__ == "__main__":
    main()
