"""Where one configuration of the overhead benchmark spends its step: a ``torch.profiler`` table.

The overhead table says how much a method costs relative to equal weighting; this says why, for
the targets it misses (docs/benchmarks/overhead.md quotes its output). Same workloads and the same
step as ``benchmarks/overhead.py``::

    python benchmarks/overhead_profile.py --trunk resnet18 --tasks 12 --batch-size 16 \\
        --config polytask:mgda:gramian --config polytask:equal:jacobian --sort cpu_memory_usage
    python benchmarks/overhead_profile.py --trunk mlp --tasks 2 \\
        --config polytask:equal:jacobian --config libmtl:equal:default --steps 50

Each ``--config LIBRARY:METHOD:MODE`` is warmed up (``--warmup`` steps), then ``--steps`` steps
run under the profiler (one thread, CPU; ``--device cuda`` adds the CUDA activity). The table
lists the operators by ``--sort`` (``self_cpu_time_total``, ``cpu_time_total``,
``self_cpu_memory_usage``, ``cpu_memory_usage``; the memory columns count the bytes each operator
allocated, a peak's ingredients rather than the peak), and a header line gives the mean step time
and the number of operator calls per step: the quantity that dominates small models.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

# run as a file, this folder is on sys.path: the overhead benchmark is an ordinary import
from polytask_bench import overhead as bench


def _runner(config: str, work: Any, warmup: int) -> Any:
    library, method, mode = config.split(":")
    if library == "libmtl":
        return bench.libmtl_runner(method, mode, work)
    losses = None
    if "+" in mode:  # e.g. jacobian+per-task: a forced loss function (--losses of the benchmark)
        mode, losses = mode.split("+", 1)
    return bench.PolytaskRunner(method, mode, work, warmup, losses)


def profile_config(config: str, work: Any, warmup: int, steps: int, sort: str, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    runner = _runner(config, work, warmup)
    for i in range(warmup):
        runner.step(i)
    activities = [ProfilerActivity.CPU]
    if work.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize(work.device)
    start = time.process_time()
    with profile(activities=activities, profile_memory=True, record_shapes=False) as prof:
        for i in range(steps):
            runner.step(warmup + i)
        if work.device.type == "cuda":
            torch.cuda.synchronize(work.device)
    elapsed = (time.process_time() - start) / steps
    averages = prof.key_averages()
    calls = sum(e.count for e in averages if not e.key.startswith("[")) / steps
    head = (
        f"=== {config} (T={len(work.tasks)}, {work.trunk}, batch {work.x.shape[0]}): "
        f"{elapsed * 1e3:.2f} ms CPU per profiled step, {calls:.0f} operator calls per step"
    )
    return head + "\n" + averages.table(sort_by=sort, row_limit=rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trunk", default="mlp", choices=bench.TRUNKS)
    p.add_argument("--tasks", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--config", action="append", required=True, help="LIBRARY:METHOD:MODE")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--sort", default="self_cpu_time_total")
    p.add_argument("--rows", type=int, default=15)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    batch = args.batch_size or bench.DEFAULT_BATCH[args.trunk]
    width = args.width or bench.DEFAULT_WIDTH[args.trunk]
    work = bench.make_workload(
        args.trunk, args.tasks, batch, width, 0, args.device, args.image_size, args.seq_len
    )
    for config in args.config:
        print(profile_config(config, work, args.warmup, args.steps, args.sort, args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
