"""Multi-process training with ``torch.distributed``: the communicator, set-up and the launcher.

``polytask train CONFIG --nproc N`` calls :func:`launch`, which starts ``N`` workers with torchrun::

    python -m torch.distributed.run --standalone --nproc_per_node N \\
        -m polytask.training.distributed CONFIG [--out OUT]

Each worker (:func:`main`) joins the process group (:func:`init_from_env`: gloo on CPU, nccl on
CUDA), wraps it in a :class:`~polytask.collectives.TorchDistributedCommunicator` and runs the whole
experiment with it. This module is the set-up only: every collective call a training step makes
lives in :mod:`polytask.collectives` (see ``docs/distributed.md``).

Conventions:

* ``training.batch_size`` is the batch size **per rank**; one optimizer step sees the global batch
  of ``batch_size * N`` rows, each rank a disjoint shard of it.
* Every rank builds its model and balancer with the same seed (``run_experiment`` seeds before
  building them), and the engine checks at construction that all ranks hold identical values.
* Only rank 0 writes the run directory and prints. The other ranks train in a throw-away scratch
  directory, deleted at the end.
* Single-task baselines are trained once, by rank 0, single-process (so they are the very same
  baselines, from the same cache, as a single-process run of the same config), before the
  multi-task runs; every other rank then reads them from the cache. All ranks therefore select
  models with identical baselines, which keeps their early-stopping and scheduler decisions in
  step.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from polytask.collectives import Communicator, TorchDistributedCommunicator

__all__ = ["TorchDistributedCommunicator", "init_from_env", "launch", "main"]


def _default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_from_env(backend: str | None = None) -> Communicator:
    """The communicator for this process, from the environment torchrun sets.

    With ``WORLD_SIZE`` > 1 (``RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set too) the default
    process group is initialised if needed (``backend``: gloo on CPU, nccl when CUDA is available;
    with nccl each process uses GPU ``LOCAL_RANK``) and a :class:`TorchDistributedCommunicator` is
    returned; otherwise the single-process :class:`Communicator`.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Communicator()
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed support")
    if not dist.is_initialized():
        backend = backend or _default_backend()
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return TorchDistributedCommunicator()


def launch(config_path: str | Path, nproc: int, out: str | Path | None = None) -> int:
    """Run the experiment of ``config_path`` on ``nproc`` processes (torchrun); the exit code.

    The configuration is validated here first, so a typo fails before any process starts.
    """
    from polytask.config import load_config

    if nproc < 1:
        print(f"error: --nproc must be >= 1, got {nproc}", file=sys.stderr)
        return 2
    try:
        load_config(config_path)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc_per_node", str(nproc),
        "-m", "polytask.training.distributed", str(config_path),
    ]  # fmt: skip
    if out is not None:
        cmd += ["--out", str(out)]
    env = dict(os.environ)
    # torchrun would set 1 thread per worker (and warn); share the cores out instead
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.run(cmd, env=env, check=False).returncode


# ---------------------------------------------------------------------------------- the worker
def _backend_for(device: str) -> str:
    if device.startswith("cpu") or not torch.cuda.is_available():
        return "gloo"
    return "nccl"


def _train_baselines(config: Any, out: Path, log: Callable[[str], None]) -> None:
    """Rank 0: train (or find in the cache) every single-task baseline run_experiment will ask."""
    from polytask.experiment import load_sources, train_single_task_baseline

    for seed in config.seeds:
        splits, sources = load_sources(config, seed)
        splits.validate()
        for task in splits.tasks:
            train_single_task_baseline(config, splits, copy.copy(task), seed, out, log, sources)


def _private_cache(scratch: Path) -> Path:
    """A cache for a rank > 0 that sees rank 0's finished baselines but never writes beside it.

    Each finished entry of the shared ``stl`` cache is linked in; anything this rank would have to
    train itself (which should not happen) goes to its own directory, so no two processes ever
    write the same cache entry.
    """
    from polytask.experiment import cache_dir

    private = scratch / "cache"
    (private / "stl").mkdir(parents=True)
    shared = cache_dir() / "stl"
    if shared.is_dir():
        for entry in shared.iterdir():
            if entry.is_dir() and (entry / "results.json").exists():
                (private / "stl" / entry.name).symlink_to(entry.resolve(), target_is_directory=True)
    return private


def run_worker(config_path: str | Path, out: str | Path | None, comm: Communicator) -> Any:
    """Run the experiment as one rank of ``comm``; rank 0's :class:`ExperimentResult`, else None."""
    from polytask.config import load_config
    from polytask.experiment import format_table, run_experiment

    config = load_config(config_path)
    out_dir = Path(out) if out is not None else Path(config.output_dir) / config.name
    main_rank = comm.rank == 0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def quiet(msg: str) -> None:
        pass

    # The other ranks wait for rank 0's baselines, which may take longer than the default
    # collective timeout (30 min): wait in a gloo group of its own with a long timeout.
    wait_group = None
    if isinstance(comm, TorchDistributedCommunicator):
        wait_group = dist.new_group(backend="gloo", timeout=timedelta(days=7))

    def handoff(ok: bool) -> None:
        """Rank 0 tells every rank whether its baselines succeeded; a failure fails every rank.

        A plain barrier would leave the other ranks waiting (for days) when rank 0 raises.
        """
        flag = torch.tensor([1 if ok else 0], dtype=torch.int64)
        if wait_group is not None:
            dist.broadcast(flag, src=0, group=wait_group)
            dist.destroy_process_group(wait_group)
        else:
            flag = comm.sum(flag if main_rank else torch.zeros(1, dtype=torch.int64))
        if not main_rank and int(flag.item()) != 1:
            raise RuntimeError(
                "rank 0 failed while training the single-task baselines (see its error above)"
            )

    if main_rank:
        log(f"distributed training on {comm.world_size} processes (batch_size is per rank)")
        try:
            if config.baselines.stl:
                _train_baselines(config, out_dir, log)
        except BaseException:
            handoff(False)
            raise
        handoff(True)
        result = run_experiment(config, out_dir, log=log, communicator=comm)
        print(format_table(result))
        print(f"\nrun directory: {result.out_dir}\nreport: {result.out_dir / 'report.html'}")
        return result
    scratch = Path(tempfile.mkdtemp(prefix=f"polytask-rank{comm.rank}-"))
    previous = os.environ.get("POLYTASK_CACHE")
    try:
        handoff(True)  # returns once rank 0 has finished the baselines; raises if it failed
        os.environ["POLYTASK_CACHE"] = str(_private_cache(scratch))
        run_experiment(config, scratch / "run", log=quiet, communicator=comm)
    finally:
        if previous is None:
            os.environ.pop("POLYTASK_CACHE", None)
        else:
            os.environ["POLYTASK_CACHE"] = previous
        shutil.rmtree(scratch, ignore_errors=True)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of each torchrun worker: ``python -m polytask.training.distributed CONFIG``."""
    parser = argparse.ArgumentParser(
        prog="python -m polytask.training.distributed",
        description="One worker of a distributed polytask experiment (started by torchrun).",
    )
    parser.add_argument("config", help="YAML experiment file")
    parser.add_argument("--out", default=None, help="run directory (default: output_dir/name)")
    args = parser.parse_args(argv)
    from polytask.config import load_config

    try:
        device = load_config(args.config).training.device
        comm = init_from_env(_backend_for(device))
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        run_worker(args.config, args.out, comm)
    except (ValueError, RuntimeError, ImportError, KeyError) as err:
        print(f"error (rank {comm.rank}): {err}", file=sys.stderr, flush=True)
        return 2
    finally:
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
