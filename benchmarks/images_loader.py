"""Throughput of reading an image folder through ``ImageTableDataset`` vs. one in-memory tensor.

Why: the lazy image path pays a PNG decode, a tensor conversion and a collate per sample, where
the in-memory path (what every built-in data set uses) pays an index slice per batch. This script
measures what that costs per epoch, and how much DataLoader workers win back, so that a user can
decide when to decode once and keep a tensor instead.

It writes ``--n`` real MNIST digits, upscaled to ``--size`` pixels, as PNGs into a temporary
folder (:func:`polytask.data.images.write_digit_folder`), then times full epochs (shuffled,
``--batch-size``) for DataLoader ``num_workers`` in ``--workers`` and for index slices of the same
images stacked into one tensor. Each configuration runs ``--repeats`` times in an interleaved
order; the table gives the median epoch and the best one (on a shared machine the best is
the least disturbed by other processes). Worker start-up is part of an epoch (the workers are not
persistent), as it is in a training loop that builds a fresh iterator per epoch.

Only the public API is used. Run from the project root::

    POLYTASK_DATA=../shared/data python benchmarks/images_loader.py --out docs/benchmarks/images.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from polytask.data.batch import MultiTaskCollate
from polytask.data.images import ImageTableDataset, write_digit_folder

READING = """## Reading the table

The in-memory row is the cost floor: an index slice per batch, no decoding. Every lazy row pays
a PNG decode, a uint8-to-float conversion and a per-sample collate, in Python. Workers decode in
parallel but pay a start-up per epoch (non-persistent workers) and send every batch back through
shared memory; they help only when free cores outnumber the work they add, which a small, shared
2-core machine does not offer. When a data set's decoded images fit in memory, decode once
(`torch.stack([ds.load_image(i) for i in range(len(ds))])`, as this script does) and train from
the tensor; keep `ImageTableDataset` in a DataLoader for folders that do not fit, or for random
augmentations that must differ per epoch."""


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def loader_epoch(ds: ImageTableDataset, workers: int, batch_size: int, seed: int) -> int:
    """One shuffled epoch through a DataLoader; returns the number of samples seen."""
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=MultiTaskCollate(ds.tasks),
        generator=torch.Generator().manual_seed(seed),
    )
    seen = 0
    for inputs, _ in loader:
        seen += int(inputs.shape[0])
    return seen


def memory_epoch(
    images: torch.Tensor, targets: dict[str, torch.Tensor], batch_size: int, seed: int
) -> int:
    """One shuffled epoch of index slices of an in-memory tensor (the built-in data sets' path)."""
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    seen = 0
    for start in range(0, images.shape[0], batch_size):
        idx = order[start : start + batch_size]
        batch = images[idx]
        _ = {k: v[idx] for k, v in targets.items()}
        seen += int(batch.shape[0])
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="number of digit images")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", default="0,1,2", help="DataLoader num_workers to time")
    parser.add_argument("--repeats", type=int, default=3, help="epochs per configuration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write a Markdown page here")
    args = parser.parse_args(argv)
    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    started = datetime.now(timezone.utc)
    load_start = _load()

    with tempfile.TemporaryDirectory(prefix="polytask-images-") as tmp:
        t0 = time.perf_counter()
        csv_path = write_digit_folder(tmp, args.n, args.seed, size=args.size)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds = ImageTableDataset(csv_path, channels=1)
        build_s = time.perf_counter() - t0
        ds.load_image(0)  # warm-up: Pillow loads its PNG plugin on the first image
        t0 = time.perf_counter()
        images = torch.stack([ds.load_image(i) for i in range(len(ds))])
        decode_s = time.perf_counter() - t0
        targets = ds.targets

        runs: dict[str, Callable[[int], int]] = {
            f"DataLoader(ImageTableDataset), num_workers={w}": (
                lambda seed, w=w: loader_epoch(ds, w, args.batch_size, seed)
            )
            for w in worker_counts
        }
        runs["in-memory tensor, index slices"] = lambda seed: memory_epoch(
            images, targets, args.batch_size, seed
        )
        times: dict[str, list[float]] = {name: [] for name in runs}
        for rep in range(args.repeats):
            for name, run in runs.items():  # interleaved: machine noise hits every row alike
                t0 = time.perf_counter()
                seen = run(args.seed + rep)
                times[name].append(time.perf_counter() - t0)
                assert seen == args.n, (name, seen)

    memory_epoch_s = statistics.median(times["in-memory tensor, index slices"])
    lines = [
        f"| loader | epoch s, median of {args.repeats} (best) | samples/s, median (best) "
        "| median epoch / in-memory |",
        "|---|---|---|---|",
    ]
    for name, ts in times.items():
        epoch, best = statistics.median(ts), min(ts)
        lines.append(
            f"| {name} | {epoch:.3f} ({best:.3f}) | {args.n / epoch:,.0f} ({args.n / best:,.0f}) "
            f"| {epoch / memory_epoch_s:.1f}x |"
        )
    table = "\n".join(lines)
    setup = (
        f"- {args.n} real MNIST test digits upscaled to {args.size}x{args.size} (bilinear), "
        f"greyscale PNGs in a temporary folder (written in {write_s:.1f} s); batch size "
        f"{args.batch_size}, shuffled, `MultiTaskCollate` over 2 tasks (`digit` multiclass, "
        f"`is_even` binary, ~10% missing labels each).\n"
        f"- Constructing the `ImageTableDataset` (CSV parse, label encoding, one stat per file): "
        f"{build_s * 1000:.0f} ms. Decoding every image once into the in-memory tensor "
        f"({tuple(images.shape)}, {images.numel() * 4 / 2**20:.1f} MiB): {decode_s:.2f} s.\n"
        f"- Machine: {_cpu_name()}, {os.cpu_count()} logical cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} intra-op threads), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}. Load average (1 min) {load_start} at start, "
        f"{_load()} at end: the machine was shared with other processes. "
        f"{started:%Y-%m-%d %H:%M} UTC."
    )
    print(setup)
    print()
    print(table)
    if args.out is not None:
        command = "POLYTASK_DATA=../shared/data python benchmarks/images_loader.py " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        page = (
            "# Image folder loading: `ImageTableDataset` through a DataLoader vs. an in-memory "
            "tensor\n\n"
            "Generated by `benchmarks/images_loader.py`; re-run the command below to reproduce "
            "it. Numbers depend on the machine and on its load: compare rows, not absolute "
            "rates, across machines.\n\n"
            f"```bash\n{command.strip()}\n```\n\n## Setup\n\n{setup}\n\n## Results\n\n{table}\n\n"
            f"{READING}\n"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(page, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
