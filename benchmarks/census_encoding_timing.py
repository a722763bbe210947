"""Seconds per epoch on Census: one-hot inputs + ``mlp`` vs embedding codes + ``tabular``.

Run from the repository root (public API only):

    python benchmarks/census_encoding_timing.py --repeats 5

Why a separate timing next to ``benchmarks/census_embedding.yaml``: on a shared machine the
suite's seconds per epoch swing by 10x or more with the other processes' load, and its cells run
one after another, so one encoding can get a quiet minute and the other a busy one. Here the four
models (hard sharing and MMoE with 4 experts, each with both encodings; the suite's hidden sizes,
batch size and learning rate, equal weights) are trained for one epoch each in *interleaved
rounds*, so each round sees about the same load for all four; the figure is the median over the
rounds of ``epoch_time_s`` (the training steps plus the validation pass, as in the suite), with the
lowest round beside it (the closest to an idle machine). One torch thread, as in the suites.
"""

from __future__ import annotations

import argparse
import copy
import csv
import statistics
import tempfile
from pathlib import Path

import torch

from polytask.balancing import create_balancer
from polytask.data import load_census
from polytask.data.base import Splits
from polytask.models import create_model, create_trunk
from polytask.models.base import MultiTaskModel
from polytask.training import TrainSettings, fit

HIDDEN = [128, 64]


def _model(splits: Splits, encoding: str, arch: str) -> MultiTaskModel:
    example = splits.train.example()
    if encoding == "onehot":
        assert isinstance(example, torch.Tensor)
        trunk = create_trunk("mlp", in_features=int(example.shape[1]), hidden=HIDDEN)
    else:
        cards = splits.info["cardinalities"]
        trunk = create_trunk("tabular", cardinalities=cards, example_input=example, hidden=HIDDEN)
    options = {"num_experts": 4} if arch == "mmoe" else {}
    return create_model(arch, trunk, splits.tasks, example_input=example, **options)


def _epoch_time(model: MultiTaskModel, splits: Splits) -> float:
    settings = TrainSettings(
        epochs=1, batch_size=512, lr=1e-3, device="cpu", progress=False, tensorboard=False, seed=0
    )
    with tempfile.TemporaryDirectory() as tmp:
        fit(copy.deepcopy(model), splits, create_balancer("equal", splits.train.task_names), settings, tmp)
        with open(Path(tmp) / "metrics.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["metric"] == "epoch_time_s"]
    return float(rows[-1]["value"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = {
        enc: load_census(seed=args.seed, categorical_encoding=enc) for enc in ("onehot", "embedding")
    }
    cells = [(arch, enc) for arch in ("hard_sharing", "mmoe") for enc in ("onehot", "embedding")]
    models = {}
    for arch, enc in cells:
        torch.manual_seed(0)
        models[arch, enc] = _model(data[enc], enc, arch)
    _epoch_time(models[cells[0]], data["onehot"])  # warm-up: first-use imports and allocations
    times: dict[tuple[str, str], list[float]] = {c: [] for c in cells}
    for r in range(args.repeats):
        for cell in cells:
            times[cell].append(_epoch_time(models[cell], data[cell[1]]))
        print(f"round {r + 1}: " + ", ".join(f"{a}/{e} {times[a, e][-1]:.2f}s" for a, e in cells))
    print()
    print("| architecture | inputs | input width | parameters | s / epoch (median) | s / epoch (min) |")
    print("|---|---|---|---|---|---|")
    for arch, enc in cells:
        model = models[arch, enc]
        example = data[enc].train.example()
        width = (
            int(example.shape[1])
            if isinstance(example, torch.Tensor)
            else f"{example['numeric'].shape[1]} + {example['categorical'].shape[1]} codes"
        )
        params = sum(p.numel() for p in model.parameters())
        ts = times[arch, enc]
        print(
            f"| {arch} | {enc} | {width} | {params:,} | {statistics.median(ts):.3f} | {min(ts):.3f} |"
        )


if __name__ == "__main__":
    main()
