"""What each balancer costs per training step, relative to equal weighting, on the trunks users train.

Run from a checkout (``benchmarks/overhead.py`` is the entry point; this module is the
benchmark, importable by the tests and by the other benchmarks that share its meters)::

    python benchmarks/overhead.py --trunk resnet18 --tasks 12 --out bench-results/resnet18.md
    python benchmarks/overhead.py --trunk transformer --tasks 12 --batch-size 16
    python benchmarks/overhead.py --trunk resnet18 --device cuda --batch-size 128 --tasks 2,12,40

Workloads (``--trunk``), each a hard-sharing model with one head per task and one fixed batch:

``mlp``          the two-layer MLP of the earlier table (64 inputs, width 256, ~82k shared
                 parameters), one regression head per task (MSE).
``resnet18``     :class:`polytask.models.resnet.ResNet`, depth 18, width 64, GroupNorm, ImageNet
                 stem, on 64x64 RGB images (11.2M shared parameters); one binary head per task
                 (BCE with logits), like CelebA's attributes.
``transformer``  :class:`polytask.models.transformer.TransformerEncoderTrunk`: 4 pre-norm layers of
                 width 256, 8 heads, sequences of 64 tokens (3.2M shared parameters), dropout 0;
                 one binary head per task on the CLS token, like Tox21 from SMILES.

For every number of tasks ``T`` and every (method, engine mode), and for LibMTL's same method in
its two modes, the benchmark builds its own copy of the model (same seed: the same initial
weights), balancer, engine and optimizer. A step is the training loop's step,
:func:`polytask.training.step.train_step` (full precision, no clipping): ``zero_grad``, forward,
masked task losses, what the balancer needs, balancer, gradients, the loop's finiteness check,
``optimizer.step()`` and the balancer's extra forward if it asked for one (``after_step``).

Timing. After ``--warmup`` steps of every configuration, ``--repeats`` rounds run one step of
every configuration each (a block of steps, averaged, for configurations faster than
``BLOCK_TARGET_S``), in a fresh random order per round, so that load from other processes hits all
configurations alike; a configuration's figure is its median over rounds.

* ``--device cpu``: the process CPU time of the step (``time.process_time``). With one torch thread
  (``--threads 1``) that is the step's own compute, much less disturbed by other processes on a
  shared machine than wall-clock time (recorded too, in ``--json``).
* ``--device cuda``: wall-clock time between two ``torch.cuda.synchronize()`` calls (kernels are
  asynchronous: without the synchronisation a step would be timed by its launches only).

Memory: one extra (untimed) step of every configuration, after the warm-up, measures the step's
working memory: the peak, during the step, of the bytes held by torch tensors minus those held when
the step began (the model, its optimizer and balancer state, and the batch are already there).

* ``--device cuda``: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus
  ``torch.cuda.memory_allocated`` at the start of the step.
* ``--device cpu``: the same quantity from ``torch.profiler``'s allocation and free events (the
  running sum of their sizes). The profiler reports the release of a block only if it saw its
  allocation, so the step before the memory step (the last warm-up step) runs under the profiler
  too: then the previous step's gradients, freed by ``zero_grad``, are subtracted as on CUDA.
  Why this and not the alternatives: ``tracemalloc`` does not
  see tensor storage (it is allocated by c10, not Python's allocator); torch has no CPU
  counterpart of the CUDA allocator statistics; and the process's peak resident size
  (``resource.getrusage``) is a high-water mark over the process's whole life that counts
  allocator caching and fragmentation and can only grow, so it would need a fresh process per
  configuration whose first step, with its one-time allocations, is the one measured. The
  profiler's figure is per step and has the CUDA figure's definition. Memory held outside torch
  tensors (the numpy/scipy arrays of some methods' solvers: at most T x T here) is not counted.

LibMTL 1.1.5 runs in the same rounds through :mod:`polytask_bench.libmtl_side` (its ``Trainer``
hard-codes CUDA): same trunk, heads, batch, loss and optimizer; ``rep_grad=False`` (its default:
per-task gradients of the shared parameters, our ``jacobian`` mode's exactness) and
``rep_grad=True`` (gradients of the shared representation, our ``representation`` mode's).

``--losses per-task`` / ``batched`` make every polytask configuration compute its task losses
task by task (each task's ``sample_losses``, with its host synchronisation) or with
:func:`polytask.losses.normalized_sample_losses` (one kernel per group of alike tasks), whatever
the engine itself calls; ``--losses both`` adds both as extra equal-weights configurations beside
the engine's own EW, for a before/after in the same rounds.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import math
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from polytask.balancing import available, create_balancer
from polytask.balancing.engine import EngineError, GradientEngine
from polytask.losses import normalized_sample_losses
from polytask.models import create_trunk
from polytask.models.base import HardSharing
from polytask.tasks import Task

# The training loop's own pieces, so that a timed step is the loop's step: its optimizer, its
# finiteness check, and train_step itself.
from polytask.training.loop import check_finite_losses, training_optimizer
from polytask.training.precision import Precision
from polytask.training.settings import TrainSettings
from polytask.training.step import train_step
from polytask_bench.libmtl_side import LIBMTL_METHODS, LibMTLRunner, libmtl_version

__all__ = [
    "BenchConfig",
    "Cell",
    "CpuMeter",
    "CudaMeter",
    "libmtl_runner",
    "main",
    "make_workload",
    "render",
    "run_overhead",
]

#: how the benchmark is run (the reproduction line of every section)
COMMAND = "python benchmarks/overhead.py"
TRUNKS = ("mlp", "resnet18", "transformer")
MODES = ("jacobian", "gramian", "representation")
LIBMTL_MODES = ("default", "rep_grad")
#: which polytask mode computes at the same exactness as which LibMTL setting
SAME_EXACTNESS = {"default": "jacobian", "rep_grad": "representation"}
#: batch size and width when not given: the scale users train at (a CPU run may ask for less)
DEFAULT_BATCH = {"mlp": 128, "resnet18": 64, "transformer": 64}
DEFAULT_WIDTH = {"mlp": 256, "resnet18": 64, "transformer": 256}
MLP_INPUTS = 64
VOCAB = 100
LR = 1e-3
#: the epoch of the timed steps (the warm-up steps go through epochs 0 .. LAST_EPOCH - 1).
LAST_EPOCH = 6
REFERENCE = "equal"
#: a round's sample of a cheap configuration is the mean of a block of steps of about this length
BLOCK_TARGET_S = 0.025
MAX_BLOCK = 8
#: a configuration this many times slower than EW in the warm-up is "slow" (``--slow-repeats``)
SLOW_FACTOR = 4.0
#: the targets stated in docs/benchmarks/overhead.md (ratios to EW at T = 12), each report checks
TARGET_LOSS, TARGET_FAMO, TARGET_GRADIENT, TARGET_LIBMTL, TARGET_GRAMIAN_MEMORY = (
    1.05, 1.15, 1.5, 2.0, 1.5
)


@dataclass
class BenchConfig:
    """One run: a trunk, its sizes, the numbers of tasks, methods and modes, and the device."""

    trunk: str = "mlp"
    tasks: list[int] = field(default_factory=lambda: [2, 12, 40])
    methods: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=lambda: list(MODES))
    #: whether gradient methods run in jacobian mode (EW and loss-based methods always do: it is
    #: their only computation); False when --modes leaves jacobian out
    gradient_jacobian: bool = True
    libmtl_modes: list[str] = field(default_factory=lambda: list(LIBMTL_MODES))
    repeats: int = 30
    #: timed rounds of configurations whose warm-up step took over SLOW_FACTOR x EW's (None: all
    #: configurations run ``repeats`` rounds)
    slow_repeats: int | None = None
    warmup: int = 8
    batch_size: int = 128
    width: int = 256
    image_size: int = 64
    seq_len: int = 64
    threads: int = 1
    seed: int = 0
    device: str = "cpu"
    losses: str = "engine"
    #: ``all`` configurations share rounds, or one ``method`` at a time with its own EW reference
    interleave: str = "all"
    libmtl: bool = True
    memory: bool = True
    out: Path | None = None
    json_out: Path | None = None
    argv: list[str] = field(default_factory=list)


@dataclass
class Cell:
    """One configuration: a library, a method, a mode, a number of tasks (and a variant)."""

    library: str
    method: str
    mode: str
    tasks: int
    variant: str = ""
    status: str = "ok"
    times: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    #: the task weights of the first step (every configuration starts from the same state)
    first_weights: list[float] | None = None
    #: its library's EW samples from the same rounds (``--interleave method``)
    ref_times: list[float] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def median(self) -> float:
        """Median time of a step (seconds): CPU time on the CPU, synchronised wall time on CUDA."""
        return statistics.median(self.times) if self.times else math.nan

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall) if self.wall else math.nan


# ---------------------------------------------------------------------------- workloads
@dataclass
class Workload:
    """A trunk kind, its tasks and one fixed batch on the run's device."""

    trunk: str
    tasks: list[Task]
    x: Tensor
    targets: dict[str, Tensor]
    width: int
    seed: int
    device: torch.device
    image_size: int = 64
    seq_len: int = 64

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def build_trunk(self) -> nn.Module:
        if self.trunk == "mlp":
            return create_trunk("mlp", in_features=MLP_INPUTS, hidden=(self.width, self.width))
        if self.trunk == "resnet18":
            return create_trunk(
                "resnet", depth=18, width=self.width, in_channels=3, small_input=False,
                norm="group",
            )
        # dropout 0: every configuration computes the same function of the same batch, so the
        # first step's weights can be compared across modes (dropout costs alike everywhere)
        return create_trunk(
            "transformer", vocab_size=VOCAB, width=self.width, depth=4, heads=8,
            max_len=self.seq_len, dropout=0.0,
        )

    def model(self) -> HardSharing:
        """The fixed model on the device; every call returns the same initial weights."""
        torch.manual_seed(self.seed)
        model = HardSharing(self.build_trunk(), self.tasks)
        model.check_ownership()
        return model.to(self.device)

    def libmtl_loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """The plain loss a LibMTL user writes (all labels present): MSE or BCE with logits."""
        if self.trunk == "mlp":
            return F.mse_loss(pred, target)
        return F.binary_cross_entropy_with_logits(pred, target)

    def describe(self) -> str:
        if self.trunk == "mlp":
            return (
                f"trunk `MLP({MLP_INPUTS}, hidden=({self.width}, {self.width}))`, one linear "
                "regression head per task (MSE)"
            )
        if self.trunk == "resnet18":
            return (
                f"trunk ResNet-18 (width {self.width}, GroupNorm, ImageNet stem) on "
                f"{self.image_size}x{self.image_size} RGB images, one linear binary head per task "
                "(BCE with logits) on the pooled features"
            )
        return (
            f"trunk Transformer encoder (4 pre-norm layers, width {self.width}, 8 heads, dropout 0) "
            f"on sequences of {self.seq_len} tokens (vocabulary {VOCAB}), one linear binary head per "
            "task (BCE with logits) on the CLS token"
        )


def _related(g: torch.Generator, features: Tensor, num_tasks: int) -> list[Tensor]:
    """Per-task scores of related but different linear functions, so task gradients partly
    conflict (a common direction plus a task's own)."""
    d = features.shape[1]
    common = torch.randn(d, 1, generator=g)
    return [
        features @ (common + torch.randn(d, 1, generator=g)) / math.sqrt(d)
        for _ in range(num_tasks)
    ]


def make_workload(
    trunk: str,
    num_tasks: int,
    batch_size: int,
    width: int,
    seed: int,
    device: str | torch.device = "cpu",
    image_size: int = 64,
    seq_len: int = 64,
) -> Workload:
    """The fixed batch of ``trunk``'s workload with ``num_tasks`` learnable targets."""
    if trunk not in TRUNKS:
        raise ValueError(f"unknown trunk {trunk!r}; choose from {list(TRUNKS)}")
    g = torch.Generator().manual_seed(seed + num_tasks)
    names = [f"t{i:02d}" for i in range(num_tasks)]
    if trunk == "mlp":
        tasks = [Task(n, "regression", standardize=False) for n in names]
        x = torch.randn(batch_size, MLP_INPUTS, generator=g)
        scores = _related(g, x, num_tasks)
        values = [s + 0.1 * torch.randn(batch_size, 1, generator=g) for s in scores]
    elif trunk == "resnet18":
        tasks = [Task(n, "binary") for n in names]
        x = torch.randn(batch_size, 3, image_size, image_size, generator=g)
        coarse = F.adaptive_avg_pool2d(x, 4).reshape(batch_size, -1)
        values = [(s > 0).float() for s in _related(g, coarse, num_tasks)]
    else:
        tasks = [Task(n, "binary") for n in names]
        x = torch.randint(1, VOCAB, (batch_size, seq_len), generator=g)
        counts = F.one_hot(x, VOCAB).sum(dim=1).float()
        values = [(s > s.median()).float() for s in _related(g, counts, num_tasks)]
    dev = torch.device(device)
    targets = {n: v.to(dev) for n, v in zip(names, values, strict=True)}
    return Workload(trunk, tasks, x.to(dev), targets, width, seed, dev, image_size, seq_len)


# ---------------------------------------------------------------------------- runners
#: ``--losses`` variants: how a configuration's task losses are computed
LOSS_VARIANTS = ("per-task", "batched")


class _LossSwitch:
    """Which loss function the engine runs while a configuration steps (``None``: its own).

    Set only during a forced configuration's step, so that one run times the engine's own losses,
    the per-task loop and :func:`polytask.losses.normalized_sample_losses` in the same rounds.
    """

    mode: str | None = None


def per_task_losses(
    tasks: Sequence[Task], outputs: dict[str, Tensor], targets: dict[str, Tensor]
) -> tuple[Tensor, Tensor]:
    """The engine's losses task by task (its loop before :mod:`polytask.losses`).

    Each task's ``sample_losses`` (with its ``int(mask.sum())`` host synchronisation) on float32
    outputs, divided by its count, stacked: the values of
    :func:`polytask.losses.normalized_sample_losses`.
    """
    cols, counts = [], []
    for task in tasks:
        per, count = task.sample_losses(outputs[task.name].float(), targets[task.name])
        cols.append(per / max(count, 1))
        counts.append(count)
    device = cols[0].device
    return torch.stack(cols, dim=1), torch.tensor(counts, dtype=torch.float64, device=device)


def batched_losses(
    tasks: Sequence[Task], outputs: dict[str, Tensor], targets: dict[str, Tensor]
) -> tuple[Tensor, Tensor]:
    """:func:`polytask.losses.normalized_sample_losses` on float32 outputs, as the engine calls it."""
    floats = {t.name: outputs[t.name].float() for t in tasks}
    return normalized_sample_losses(tasks, floats, targets)


#: the names under which the engine module has held its loss function
_ENGINE_LOSS_NAMES = ("sample_losses", "normalized_sample_losses")


def _install_loss_switch() -> None:
    """Route the engine module's loss function through :class:`_LossSwitch` (idempotent)."""
    import polytask.balancing.engine as engine_module

    for name in _ENGINE_LOSS_NAMES:
        current = getattr(engine_module, name, None)
        if callable(current):
            break
    else:
        raise RuntimeError(
            "polytask.balancing.engine computes its losses under none of the names "
            f"{_ENGINE_LOSS_NAMES}: --losses cannot force a loss function on it; update "
            "_ENGINE_LOSS_NAMES in benchmarks/overhead.py"
        )
    if getattr(current, "_overhead_switch", False):
        return
    own = current
    forced = {"per-task": per_task_losses, "batched": batched_losses}

    def switch(
        tasks: Sequence[Task], outputs: dict[str, Tensor], targets: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        return forced.get(_LossSwitch.mode or "", own)(tasks, outputs, targets)

    switch._overhead_switch = True  # type: ignore[attr-defined]
    setattr(engine_module, name, switch)


class Runner(Protocol):
    def step(self, index: int) -> None: ...


class PolytaskRunner:
    """A model, balancer, engine and optimizer; ``step`` is the training loop's step."""

    def __init__(
        self, method: str, mode: str, work: Workload, warmup: int, losses: str | None = None
    ) -> None:
        self.warmup = warmup
        self.model = work.model()
        self.balancer = create_balancer(method, work.names).to(work.device)
        self.engine = GradientEngine(
            self.model, work.tasks, self.balancer, mode=mode, seed=work.seed  # type: ignore[arg-type]
        )
        self.losses = losses  # None: the engine's own loss function; else a LOSS_VARIANTS entry
        if losses is not None:
            _install_loss_switch()
        settings = TrainSettings(lr=LR, optimizer="adamw", progress=False, tensorboard=False)
        self.optimizer = training_optimizer(self.model, self.balancer, settings)
        self.precision = Precision.of(False, work.device)
        self.model.train()
        self.work = work
        self._nowhere = Path(os.devnull)
        self.first_weights: list[float] | None = None

    def step(self, index: int) -> None:
        x, y = self.work.x, self.work.targets
        # epochs advance during the warm-up (past the warm-up phases of STCH, DWA), then stay
        epoch = LAST_EPOCH if index >= self.warmup else index * LAST_EPOCH // max(self.warmup, 1)
        names = self.model.task_names

        def check(out: Any) -> None:  # the loop's check, without a checkpoint to name
            check_finite_losses(out.losses, out.present, names, index, epoch, self._nowhere)

        _LossSwitch.mode = self.losses
        try:
            out = train_step(
                self.engine, self.optimizer, (x, y), index, epoch,
                device=self.work.device, precision=self.precision, check=check,
            )  # fmt: skip
        finally:
            _LossSwitch.mode = None
        if out is None:
            return
        if self.first_weights is None:
            self.first_weights = out.weights.detach().double().cpu().tolist()


def libmtl_runner(method: str, mode: str, work: Workload) -> LibMTLRunner:
    """LibMTL's ``method`` in ``mode`` (``default`` / ``rep_grad``) on ``work``'s model, batch."""
    template = work.model()
    heads = nn.ModuleDict(dict(template.heads.items()))
    return LibMTLRunner(
        method, mode == "rep_grad", template.trunk, heads, work.x, work.targets, work.libmtl_loss,
        LR, device=work.device,
    )


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    for sep in (";", ": "):
        head = text.split(sep)[0]
        if len(head) >= 20:
            text = head
            break
    return text if len(text) <= 100 else text[:97] + "..."


# ---------------------------------------------------------------------------- measuring
class Meter(Protocol):
    """How a step is timed and its working memory measured on one kind of device."""

    name: str

    def time(self, step: Callable[[], None]) -> tuple[float, float]:
        """(the step's time as the table reports it, its wall-clock time), in seconds."""
        ...

    def peak(self, step: Callable[[], None]) -> int:
        """Peak bytes of torch tensors during ``step`` above those held when it began."""
        ...

    def prime(self, step: Callable[[], None]) -> None:
        """Run ``step`` so that the following :meth:`peak` is exact (the step before it)."""
        ...


@contextmanager
def _no_gc() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block, after one collection.

    Why: a collection that happens to run during a profiled step frees tensors of earlier
    garbage (allocated while an earlier profiler recorded, so their release is reported) and
    would lower the step's peak by memory that is not the step's.
    """
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class CpuMeter:
    """Process CPU time; peak tensor memory from the profiler's allocation and free events.

    The memory figure is the peak, during the step, of the bytes allocated minus those freed
    (the running sum of the events): exact when the step before ran under :meth:`prime`.
    """

    name = "cpu"

    def time(self, step: Callable[[], None]) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        return time.process_time() - cpu, time.perf_counter() - wall

    def prime(self, step: Callable[[], None]) -> None:
        """Run ``step`` under the memory profiler, so that the next :meth:`peak` is exact.

        The profiler reports the release of a block only if the block was allocated while a
        profiler recorded memory: the previous step's gradients, freed by ``zero_grad``, would
        otherwise never be subtracted, and the figure would exceed CUDA's
        (``max_memory_allocated`` above the start) by the size of everything the step replaces.
        """
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True), _no_gc():
            step()

    def peak(self, step: Callable[[], None]) -> int:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, _no_gc():
            step()
        events = prof.profiler.kineto_results.events()  # type: ignore[union-attr]
        mem = sorted(
            (e.start_ns(), i, int(e.nbytes()))
            for i, e in enumerate(events)
            if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")
        )
        current = peak = 0
        # frees are negative; a block allocated while no profiler recorded is never reported
        for _, _, nbytes in mem:
            current += nbytes
            peak = max(peak, current)
        return peak


class CudaMeter:
    """Wall time between device synchronisations; ``max_memory_allocated`` above the start.

    The CUDA functions are injectable so that everything but the device itself is tested on a
    machine without a GPU.
    """

    name = "cuda"

    def __init__(
        self,
        device: torch.device,
        synchronize: Callable[[torch.device], None] | None = None,
        reset_peak: Callable[[torch.device], None] | None = None,
        allocated: Callable[[torch.device], int] | None = None,
        max_allocated: Callable[[torch.device], int] | None = None,
    ) -> None:
        self.device = device
        self.synchronize = synchronize or torch.cuda.synchronize
        self.reset_peak = reset_peak or torch.cuda.reset_peak_memory_stats
        self.allocated = allocated or torch.cuda.memory_allocated
        self.max_allocated = max_allocated or torch.cuda.max_memory_allocated

    def time(self, step: Callable[[], None]) -> tuple[float, float]:
        self.synchronize(self.device)  # nothing queued before the step is counted
        start = time.perf_counter()
        step()
        self.synchronize(self.device)  # every kernel of the step has finished
        elapsed = time.perf_counter() - start
        return elapsed, elapsed

    def prime(self, step: Callable[[], None]) -> None:
        """Nothing to prepare: the CUDA allocator's statistics see every block."""
        step()

    def peak(self, step: Callable[[], None]) -> int:
        self.synchronize(self.device)
        self.reset_peak(self.device)
        base = self.allocated(self.device)
        step()
        self.synchronize(self.device)
        return int(self.max_allocated(self.device)) - int(base)


def make_meter(device: torch.device) -> Meter:
    return CudaMeter(device) if device.type == "cuda" else CpuMeter()


def peak_step_bytes(step: Callable[[], None]) -> int:
    """Peak bytes of torch CPU tensors allocated during ``step`` (profiler events)."""
    return CpuMeter().peak(step)


def _cells(work: Workload, cfg: BenchConfig) -> list[Cell]:
    """Every configuration of this workload, in table order; those not to run are marked."""
    cells: list[Cell] = []
    t = len(work.tasks)
    info = available()
    for method in cfg.methods:
        for mode in cfg.modes:
            cell = Cell("polytask", method, mode, t)
            if info[method].family == "loss" and mode == "gramian" and method != REFERENCE:
                # The engine ignores the mode for loss-based methods: the same computation as
                # jacobian mode (EW runs it anyway, as the run's noise control).
                cell.status = "same as jacobian"
            elif info[method].family == "gradient" and mode == "jacobian" and not cfg.gradient_jacobian:
                cell.status = "not run"
            cells.append(cell)
    if cfg.losses == "both":
        cells += [
            Cell("polytask", REFERENCE, "jacobian", t, variant=f"{v} losses") for v in LOSS_VARIANTS
        ]
    if cfg.libmtl:
        for method in cfg.methods:
            if method in LIBMTL_METHODS:
                cells += [
                    Cell("libmtl", method, mode, t)
                    if mode in cfg.libmtl_modes or method == REFERENCE
                    else Cell("libmtl", method, mode, t, status="not run")
                    for mode in LIBMTL_MODES
                ]
    return cells


def _is_reference(cell: Cell) -> bool:
    mode = "jacobian" if cell.library == "polytask" else "default"
    return (cell.method, cell.mode, cell.variant) == (REFERENCE, mode, "")


def _groups(cells: Sequence[Cell], cfg: BenchConfig) -> list[list[int]]:
    """Which configurations share rounds (and so are alive at the same time).

    ``all``: every configuration, for the most even exposure to machine noise; fine for small
    models. ``method``: one method's configurations (its modes, its LibMTL counterpart) with a
    fresh EW reference of each library in the same rounds: a ResNet-18 with its AdamW state is
    ~180 MB per configuration, and 60 of them at once do not fit beside other work.
    """
    runnable = [i for i, c in enumerate(cells) if c.ok]
    if cfg.interleave == "all":
        return [runnable]
    refs = {c.library: i for i, c in enumerate(cells) if _is_reference(c)}
    groups: list[list[int]] = []
    for method in cfg.methods:
        members = [i for i in runnable if cells[i].method == method]
        for library in sorted({cells[i].library for i in members}):
            ref = refs.get(library)
            if ref is not None and ref not in members:
                members.append(ref)
        groups.append(sorted(members))
    return groups


def _runner(cell: Cell, work: Workload, cfg: BenchConfig) -> Any:
    """The configuration's runner, or ``None`` (and the cell marked) when it cannot be built."""
    try:
        if cell.library == "libmtl":
            return libmtl_runner(cell.method, cell.mode, work)
        losses = cell.variant.removesuffix(" losses") or None
        if cfg.losses in LOSS_VARIANTS:
            losses = cfg.losses
        return PolytaskRunner(cell.method, cell.mode, work, cfg.warmup, losses)
    except EngineError as err:
        cell.status = f"n/a (refused: {_short(err)})"
    except Exception as err:
        if cell.library == "polytask":
            raise
        cell.status = f"n/a (failed: {_short(err)})"
    return None


class _Call:
    """A runner whose ``step(index)`` calls a prepared function (a primed warm-up step)."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn

    def step(self, index: int) -> None:
        self.fn()


def _run_step(
    meter: Meter, cell: Cell, runner: Any, index: int, runners: dict[int, Any], key: int
) -> tuple[float, float]:
    """One step; its (reported, wall) seconds. A step that raises marks the cell n/a."""
    try:
        return meter.time(lambda: runner.step(index))
    except Exception as err:
        verb = "refused" if "No support" in str(err) else "failed"
        cell.status = f"n/a ({verb}: {_short(err)})"
        runners.pop(key, None)
        return math.nan, math.nan


def _rounds(cells: Sequence[Cell], estimate: dict[int, float], cfg: BenchConfig) -> dict[int, int]:
    """Timed rounds per configuration: ``slow_repeats`` for those far slower than EW.

    Why: on a CPU a deep trunk's Jacobian-mode step at T = 12 takes 10-20 EW steps, and its ratio
    to EW needs no 5 % precision, while the cheap configurations (where the targets sit within
    5-50 % of EW) need every round they can get.
    """
    rounds = dict.fromkeys(estimate, cfg.repeats)
    if cfg.slow_repeats is None or not cfg.warmup:
        return rounds
    ref = next(
        (k for k in estimate if cells[k].library == "polytask" and _is_reference(cells[k])), None
    )
    if ref is None:
        return rounds
    for key, est in estimate.items():
        if est > SLOW_FACTOR * estimate[ref] and not _is_reference(cells[key]):
            rounds[key] = min(cfg.repeats, cfg.slow_repeats)
    return rounds


def _measure_group(
    work: Workload, cfg: BenchConfig, cells: list[Cell], group: Sequence[int], meter: Meter,
    rng: random.Random, log: Callable[[str], None],
) -> None:
    """Warm-up, memory step and timed rounds of one group; samples go into the cells."""
    runners: dict[int, Any] = {}
    for key in group:
        runner = _runner(cells[key], work, cfg)
        if runner is not None:
            runners[key] = runner
    steps = dict.fromkeys(runners, 0)
    t0 = time.perf_counter()
    seen: dict[int, list[float]] = {key: [] for key in runners}
    for w in range(cfg.warmup):
        # The last warm-up step runs under the memory meter (see CpuMeter.prime); its time is
        # kept only when it is the only warm-up step (it then includes the profiler's overhead).
        prime = cfg.memory and w == cfg.warmup - 1
        for key in list(runners):
            runner = runners[key]
            if prime:
                step = lambda r=runner, i=steps[key]: meter.prime(lambda: r.step(i))  # noqa: E731
                cpu, _ = _run_step(meter, cells[key], _Call(step), steps[key], runners, key)
            else:
                cpu, _ = _run_step(meter, cells[key], runner, steps[key], runners, key)
            steps[key] += 1
            if not prime or cfg.warmup == 1:
                seen[key].append(cpu)
    if cfg.memory and not cfg.warmup:
        for key in list(runners):
            _run_step(meter, cells[key], _Call(lambda r=runners[key], i=steps[key]: meter.prime(
                lambda: r.step(i))), steps[key], runners, key)
            steps[key] += 1
    if cfg.memory:
        # After the warm-up (optimizer state and lazily built buffers exist), before the timing.
        for key in list(runners):
            runner, index = runners[key], steps[key]
            try:
                cells[key].peak_bytes = meter.peak(lambda r=runner, i=index: r.step(i))
            except Exception as err:
                cells[key].status = f"n/a (failed: {_short(err)})"
                runners.pop(key)
            steps[key] += 1
    # Cheap configurations run a block of consecutive steps per round (their mean is the round's
    # sample), so that a sample is never a sub-millisecond blip.
    block, estimate = {}, {}
    for key in runners:
        est = statistics.median(seen[key][1:] or seen[key] or [BLOCK_TARGET_S])
        estimate[key] = est if math.isfinite(est) else BLOCK_TARGET_S
        block[key] = max(1, min(MAX_BLOCK, round(BLOCK_TARGET_S / max(estimate[key], 1e-6))))
    rounds = _rounds(cells, estimate, cfg)
    samples: dict[int, list[float]] = {key: [] for key in runners}
    for r in range(cfg.repeats):
        order = [key for key in runners if rounds[key] > r]
        rng.shuffle(order)
        gc.collect()
        for key in order:
            if key not in runners:
                continue
            cpu = wall = 0.0
            for _ in range(block[key]):
                c, w = _run_step(meter, cells[key], runners[key], steps[key], runners, key)
                steps[key] += 1
                cpu, wall = cpu + c, wall + w
            if math.isfinite(cpu):
                samples[key].append(cpu / block[key])
                cells[key].wall.append(wall / block[key])
    for key, values in samples.items():
        cells[key].times += values
    # Each configuration's EW reference: the samples of its library's EW in the same rounds.
    refs = {cells[k].library: samples[k] for k in runners if _is_reference(cells[k])}
    for key, runner in runners.items():
        cell = cells[key]
        if isinstance(runner, PolytaskRunner) and cell.first_weights is None:
            cell.first_weights = runner.first_weights
        if not _is_reference(cell) and refs.get(cell.library):
            cell.ref_times = list(refs[cell.library])
    names = sorted({cells[k].method for k in group} - {REFERENCE}) or [REFERENCE]
    log(
        f"T={len(work.tasks)} {', '.join(names)}: {len(group)} configurations, "
        f"{time.perf_counter() - t0:.0f}s"
    )


def measure_workload(work: Workload, cfg: BenchConfig, log: Callable[[str], None]) -> list[Cell]:
    meter = make_meter(work.device)
    cells = _cells(work, cfg)
    rng = random.Random(cfg.seed * 7919 + len(work.tasks))
    for group in _groups(cells, cfg):
        _measure_group(work, cfg, cells, group, meter, rng, log)
        gc.collect()
        if work.device.type == "cuda":
            torch.cuda.empty_cache()
    for cell in cells:
        if cell.ok and not cell.times:
            cell.status = "n/a (failed: no completed step)"
    return cells


# ---------------------------------------------------------------------------- reporting
def _reference(cells: Sequence[Cell], library: str) -> Cell | None:
    mode = "jacobian" if library == "polytask" else "default"
    for c in cells:
        if (c.library, c.method, c.mode, c.variant) == (library, REFERENCE, mode, "") and c.ok:
            return c
    return None


def ratios(cells: Sequence[Cell], cell: Cell) -> tuple[float, float]:
    """(time, memory) of ``cell`` relative to its library's EW on the same workload."""
    ref = _reference([c for c in cells if c.tasks == cell.tasks], cell.library)
    if ref is None or not cell.ok:
        return math.nan, math.nan
    ref_median = statistics.median(cell.ref_times) if cell.ref_times else ref.median
    time_ratio = cell.median / ref_median
    mem_ratio = math.nan
    if cell.peak_bytes is not None and ref.peak_bytes:
        mem_ratio = cell.peak_bytes / ref.peak_bytes
    return time_ratio, mem_ratio


def _find(cells: Sequence[Cell], library: str, method: str, mode: str, t: int) -> Cell | None:
    for c in cells:
        if (c.library, c.method, c.mode, c.tasks, c.variant) == (library, method, mode, t, ""):
            return c
    return None


def _fmt_cell(cells: Sequence[Cell], cell: Cell | None) -> str:
    if cell is None:
        return ""
    if not cell.ok:
        return cell.status.replace("|", "/")
    tr, mr = ratios(cells, cell)
    mem = f" ({mr:.2f})" if math.isfinite(mr) else ""
    return f"{tr:.2f}{mem}"


def _mb(nbytes: int | None) -> str:
    return "?" if nbytes is None else f"{nbytes / 2**20:.1f} MB"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}" if seconds >= 0.1 else f"{seconds * 1e3:.2f}"


def _machine(device: torch.device) -> dict[str, str]:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "os": f"{platform.system()} {platform.release()}",
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["torchjd"] = importlib.metadata.version("torchjd")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a dependency
        info["torchjd"] = "?"
    return info


def _result_table(cells: Sequence[Cell], cfg: BenchConfig, t: int) -> list[str]:
    ours = [c for c in cells if c.library == "polytask" and c.tasks == t]
    theirs = [c for c in cells if c.library == "libmtl" and c.tasks == t]
    ref, lref = _reference(ours, "polytask"), _reference(theirs, "libmtl")
    unit = "ms CPU" if cfg.device == "cpu" else "ms (synchronised)"
    lines = [f"#### T = {t}", ""]
    if ref is not None:
        text = (
            f"polytask EW: {_ms(ref.median)} {unit} per step, peak step memory "
            f"{_mb(ref.peak_bytes)}."
        )
        if lref is not None:
            text += f" LibMTL EW: {_ms(lref.median)} {unit}, {_mb(lref.peak_bytes)}."
        lines += [text, ""]
    info = available()
    head = ["method", "family", *cfg.modes]
    libmtl_cols = cfg.libmtl and bool(theirs)
    if libmtl_cols:
        head += ["LibMTL rep_grad=False", "LibMTL rep_grad=True"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" for _ in head) + "|")
    for method in cfg.methods:
        row = [method, info[method].family]
        row += [_fmt_cell(ours, _find(ours, "polytask", method, m, t)) for m in cfg.modes]
        if libmtl_cols:
            if method in LIBMTL_METHODS:
                name = LIBMTL_METHODS[method][0]
                untrained = info[method].family == "loss"
                row += [
                    f"{name}: " + _fmt_cell(theirs, _find(theirs, "libmtl", method, m, t))
                    + (" †" if untrained and m == "rep_grad" else "")
                    for m in LIBMTL_MODES
                ]
            else:
                row += ["", ""]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    return lines


def _floor_table(cells: Sequence[Cell], cfg: BenchConfig) -> list[str]:
    """polytask's EW step against LibMTL's at every T, with each forced loss variant run."""
    unit = "ms CPU" if cfg.device == "cpu" else "ms"
    variants = [v for v in (f"{x} losses" for x in LOSS_VARIANTS) if any(c.variant == v for c in cells)]
    head = ["T", f"polytask EW ({unit})", *(f"EW, {v} ({unit})" for v in variants)]
    head += [f"LibMTL EW ({unit})", "polytask / LibMTL", *(f"{v} / LibMTL" for v in variants)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for t in cfg.tasks:
        ours = _find(cells, "polytask", REFERENCE, "jacobian", t)
        theirs = _find(cells, "libmtl", REFERENCE, "default", t)
        if ours is None or theirs is None or not (ours.ok and theirs.ok):
            continue
        forced = [
            next((c for c in cells if c.tasks == t and c.variant == v and c.ok), None)
            for v in variants
        ]
        row = [str(t), _ms(ours.median), *(_ms(c.median) if c else "–" for c in forced)]
        row += [_ms(theirs.median), f"{ours.median / theirs.median:.2f}"]
        row += [f"{c.median / theirs.median:.2f}" if c else "–" for c in forced]
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""] if len(lines) > 2 else []


def _speedup_table(cells: Sequence[Cell], cfg: BenchConfig, t: int) -> list[str]:
    ours = [c for c in cells if c.library == "polytask" and c.tasks == t]
    theirs = [c for c in cells if c.library == "libmtl" and c.tasks == t]
    unit = "CPU ms" if cfg.device == "cpu" else "ms"
    lines = [
        f"#### Speed-up over LibMTL at T = {t} (median {unit} per step; speed-up = LibMTL / "
        "polytask at the same exactness)",
        "",
        "| method | polytask jacobian | LibMTL rep_grad=False | speed-up | polytask "
        "representation | LibMTL rep_grad=True | speed-up | polytask gramian |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def ms(c: Cell | None) -> str:
        if c is None:
            return "not run"
        return _ms(c.median) if c.ok else c.status.replace("|", "/")

    def speed(a: Cell | None, b: Cell | None) -> str:
        if a is None or b is None or not (a.ok and b.ok):
            return "–"
        return f"{b.median / a.median:.1f}×"

    for method in cfg.methods:
        if method not in LIBMTL_METHODS:
            continue
        pj = _find(ours, "polytask", method, "jacobian", t)
        pr = _find(ours, "polytask", method, "representation", t)
        pg = _find(ours, "polytask", method, "gramian", t)
        ld = _find(theirs, "libmtl", method, "default", t)
        lr = _find(theirs, "libmtl", method, "rep_grad", t)
        name = f"{method} / {LIBMTL_METHODS[method][0]}"
        lines.append(
            f"| {name} | {ms(pj)} | {ms(ld)} | {speed(pj, ld)} | {ms(pr)} | {ms(lr)} | "
            f"{speed(pr, lr)} | {ms(pg)} |"
        )
    lines.append("")
    return lines


def _gramian_check(cells: Sequence[Cell], cfg: BenchConfig, t: int) -> list[str]:
    """Gramian mode against Jacobian mode on the first step: memory and weights."""
    rows = []
    for method in cfg.methods:
        g = _find(cells, "polytask", method, "gramian", t)
        j = _find(cells, "polytask", method, "jacobian", t)
        if g is None or j is None or not (g.ok and j.ok) or available()[method].family == "loss":
            continue
        _, gm = ratios(cells, g)
        _, jm = ratios(cells, j)
        diff = "–"
        if g.first_weights and j.first_weights:
            a, b = torch.tensor(g.first_weights), torch.tensor(j.first_weights)
            scale = float(b.abs().max()) or 1.0
            diff = f"{float((a - b).abs().max()) / scale:.1e}"
        vs = f"{g.peak_bytes / j.peak_bytes:.2f}" if g.peak_bytes and j.peak_bytes else "–"
        rows.append(f"| {method} | {gm:.2f} | {jm:.2f} | {vs} | {diff} |")
    if not rows:
        return []
    return [
        f"#### Gramian mode at T = {t}: memory, and its weights against the Jacobian mode's",
        "",
        "Peak step memory relative to EW in each mode, Gramian over Jacobian, and the largest "
        "difference between the first step's task weights of the two modes (same initial model, "
        "same batch), relative to the largest weight.",
        "",
        "| method | gramian memory / EW | jacobian memory / EW | gramian / jacobian | "
        "weights: max rel. difference |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


def evaluate_targets(cells: Sequence[Cell], cfg: BenchConfig, t: int = 12) -> list[str]:
    """The documented targets at ``t`` tasks, each marked met / not met with the numbers."""
    info = available()
    out: list[str] = []

    def mark(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    if t not in cfg.tasks:
        return [f"- Targets at T = {t}: not evaluated (T = {t} was not run)."]
    # Floor: our EW no slower than LibMTL's, every T
    floor = []
    for tt in cfg.tasks:
        ours = _find(cells, "polytask", REFERENCE, "jacobian", tt)
        theirs = _find(cells, "libmtl", REFERENCE, "default", tt)
        if ours is not None and theirs is not None and ours.ok and theirs.ok:
            floor.append((tt, ours.median / theirs.median))
    if floor:
        nums = ", ".join(f"{v:.2f}× at T={tt}" for tt, v in floor)
        out.append(
            f"- Floor, polytask EW ≤ LibMTL EW (every T): {mark(all(round(v, 2) <= 1 for _, v in floor))} "
            f"({nums})."
        )
    # Loss-based methods <= 1.05x EW (their only mode: jacobian = plain backward)
    over, within = [], []
    for method in cfg.methods:
        if info[method].family != "loss" or method in (REFERENCE, "famo"):
            continue
        c = _find(cells, "polytask", method, "jacobian", t)
        if c is None or not c.ok:
            continue
        tr, _ = ratios(cells, c)
        (within if round(tr, 2) <= TARGET_LOSS else over).append(f"{method} {tr:.2f}×")
    if over or within:
        detail = "all within" if not over else "over: " + ", ".join(over)
        out.append(
            f"- Loss-based methods ≤ {TARGET_LOSS}× EW at T={t}: {mark(not over)} ({detail}; "
            f"worst within: {max(within, key=lambda s: float(s.split()[-1][:-1]), default='–')})."
        )
    famo = _find(cells, "polytask", "famo", "jacobian", t)
    if famo is not None and famo.ok:
        tr, _ = ratios(cells, famo)
        ok = round(tr, 2) <= TARGET_FAMO
        out.append(f"- FAMO ≤ {TARGET_FAMO}× EW at T={t}: {mark(ok)} ({tr:.2f}×).")
    # Gradient methods in representation or Gramian mode <= 1.5x
    met, missed = [], []
    for method in cfg.methods:
        if info[method].family != "gradient":
            continue
        options = []
        for mode in ("gramian", "representation"):
            c = _find(cells, "polytask", method, mode, t)
            if c is not None and c.ok:
                options.append((ratios(cells, c)[0], mode))
        if options:
            best, mode = min(options)
            ok = round(best, 2) <= TARGET_GRADIENT
            (met if ok else missed).append(f"{method} {best:.2f}× ({mode})")
    if met or missed:
        detail = "met by " + (", ".join(met) or "none")
        if missed:
            detail += "; missed by " + ", ".join(missed)
        out.append(
            f"- Gradient methods ≤ {TARGET_GRADIENT}× EW at T={t} in their cheaper of "
            f"representation / Gramian mode: {mark(not missed)} ({len(met)}/{len(met) + len(missed)}"
            f": {detail})."
        )
    # >= 2x faster than LibMTL's same method, same exactness
    if cfg.libmtl:
        met, missed, na = [], [], []
        for method in cfg.methods:
            if info[method].family != "gradient" or method not in LIBMTL_METHODS:
                continue
            for lmode, pmode in SAME_EXACTNESS.items():
                ours = _find(cells, "polytask", method, pmode, t)
                theirs = _find(cells, "libmtl", method, lmode, t)
                label = f"{method} ({pmode} vs rep_grad={lmode == 'rep_grad'})"
                if ours is None or theirs is None:
                    continue
                if "not run" in (ours.status, theirs.status):
                    continue
                if not (ours.ok and theirs.ok):
                    na.append(label)
                    continue
                s = theirs.median / ours.median
                (met if round(s, 1) >= TARGET_LIBMTL else missed).append(f"{label} {s:.1f}×")
        if met or missed:
            detail = "met by " + (", ".join(met) or "none")
            if missed:
                detail += "; missed by " + ", ".join(missed)
            if na:
                detail += "; not comparable (one side n/a): " + ", ".join(na)
            out.append(
                f"- Each gradient method ≥ {TARGET_LIBMTL:.0f}× faster than LibMTL's at T={t}, "
                f"same exactness: {mark(not missed)} ({detail})."
            )
    # Gramian mode memory <= 1.5x EW and under the Jacobian mode's
    gram = []
    for method in cfg.methods:
        g = _find(cells, "polytask", method, "gramian", t)
        j = _find(cells, "polytask", method, "jacobian", t)
        if info[method].family != "gradient" or g is None or j is None or not (g.ok and j.ok):
            continue
        gm, jm = ratios(cells, g)[1], ratios(cells, j)[1]
        if math.isfinite(gm) and math.isfinite(jm):
            gram.append((method, gm, jm))
    if gram:
        worst = max(gram, key=lambda r: r[1])
        ok = all(gm <= TARGET_GRAMIAN_MEMORY and gm < jm for _, gm, jm in gram)
        out.append(
            f"- Gramian mode's peak memory ≤ {TARGET_GRAMIAN_MEMORY}× EW and under the Jacobian "
            f"mode's at T={t}: {mark(ok)} (worst {worst[0]}: {worst[1]:.2f}× EW against "
            f"{worst[2]:.2f}× in jacobian mode; range "
            f"{min(r[1] for r in gram):.2f}-{max(r[1] for r in gram):.2f}× EW)."
        )
    return out


def _scope(cfg: BenchConfig) -> str:
    """What a run covered, for its section title (a trunk's table may come from several runs)."""
    shown = [m for m in cfg.modes if m != "jacobian" or cfg.gradient_jacobian]
    if cfg.methods == [REFERENCE]:
        what = "equal weighting"
    elif set(cfg.methods) >= set(available()):
        what = "every method"
    else:
        what = ", ".join(m for m in cfg.methods if m != REFERENCE)
    return f"{what}; {' / '.join(shown)} mode{'s' if len(shown) > 1 else ''}; T = " + ", ".join(
        map(str, cfg.tasks)
    )


def render_run(cells: Sequence[Cell], cfg: BenchConfig, meta: dict[str, Any], level: int = 2) -> list[str]:
    """One run's section: setup, tables, targets."""
    h = "#" * level
    shown = list(cfg.argv)
    if "--json" in shown:  # where the raw timings went is not part of the experiment
        i = shown.index("--json")
        del shown[i : i + 2]
    cmd = f"{COMMAND} " + shlex.join(shown)
    m = meta["machine"]
    where = (
        f"{m['cpu']}, {m['logical cores']} logical cores, torch {m['torch']} with "
        f"{m['torch threads']} thread(s)"
    )
    if cfg.device != "cpu":
        where = f"{m.get('gpu', cfg.device)} ({cfg.device}); host {where}"
    timing = (
        "median over rounds of the step's process CPU time (`time.process_time`)"
        if cfg.device == "cpu"
        else "median over rounds of the step's wall time between two `torch.cuda.synchronize()`"
    )
    memory = (
        "the peak of the bytes allocated minus freed during the step, from `torch.profiler` "
        "allocation/free events (torch CPU tensors only; the step before ran under the profiler "
        "too, so that the releases of its tensors are seen)"
        if cfg.device == "cpu"
        else "the peak of `torch.cuda.max_memory_allocated` (after `reset_peak_memory_stats`) "
        "above `torch.cuda.memory_allocated` at the step's start"
    )
    lines = [
        f"{h} {cfg.trunk}, {_scope(cfg)}",
        "",
        f"Workload: {meta['describe']}.",
        "",
        "```bash",
        cmd.strip(),
        "```",
        "",
        f"- {meta['shared_params']:,} shared parameters; one fixed batch of {cfg.batch_size}; "
        f"AdamW (lr {LR}); T ∈ {{{', '.join(map(str, cfg.tasks))}}}; {cfg.warmup} warm-up "
        f"step(s), one memory step, then {cfg.repeats} timed round(s)"
        + (
            f" ({cfg.slow_repeats} for configurations over {SLOW_FACTOR:.0f}× EW in the warm-up)"
            if cfg.slow_repeats is not None and cfg.slow_repeats < cfg.repeats
            else ""
        )
        + f", {timing}.",
        f"- Memory: {memory}.",
        "- Rounds: "
        + (
            "every configuration in each round."
            if cfg.interleave == "all"
            else "one method at a time (its modes and its LibMTL counterpart) with a fresh EW of "
            "each library in the same rounds; a ratio is to the EW of its own rounds."
        ),
        f"- Machine: {where}, torchjd {m.get('torchjd', '?')}, Python {m['python']}, {m['os']}. "
        f"Load average (1 min) at start {meta['load_start']}, at end {meta['load_end']}. "
        f"Run took {meta['elapsed_min']:.1f} min on {meta['date']}.",
    ]
    if cfg.libmtl:
        lines.append(f"- LibMTL {meta['libmtl']} in the same rounds (see the notes below).")
    if cfg.losses != "engine":
        lines.append(
            f"- `--losses {cfg.losses}`: "
            + (
                f"every polytask configuration computes its losses with the {cfg.losses} "
                "function of `benchmarks/overhead.py` instead of the engine's own."
                if cfg.losses in LOSS_VARIANTS
                else "two extra EW configurations compute their losses task by task "
                "(`per_task_losses`, each task's `sample_losses`) and batched "
                "(`polytask.losses.normalized_sample_losses`), in the same rounds: the floor "
                "table's before/after."
            )
        )
    lines.append("")
    for t in cfg.tasks:
        lines += _result_table(cells, cfg, t)
    if cfg.libmtl:
        floor = _floor_table(cells, cfg)
        if floor:
            lines += [f"{h}# Equal weighting: polytask against LibMTL", "", *floor]
        t = 12 if 12 in cfg.tasks else cfg.tasks[len(cfg.tasks) // 2]
        lines += _speedup_table(cells, cfg, t)
    t = 12 if 12 in cfg.tasks else cfg.tasks[len(cfg.tasks) // 2]
    lines += _gramian_check(cells, cfg, t)
    control = []
    for tt in cfg.tasks:
        c = _find(cells, "polytask", REFERENCE, "gramian", tt)
        if c is not None and c.ok:
            control.append(f"{ratios(cells, c)[0]:.2f} at T={tt}")
    lines += [f"{h}# Targets ({cfg.trunk})", ""]
    if control:
        lines += [
            "Noise control: `equal` in gramian mode runs the same computation as the EW "
            f"reference; its ratios ({', '.join(control)}) show this run's measurement noise.",
            "",
        ]
    lines += [*evaluate_targets(cells, cfg), ""]
    return lines


_HEADER = [
    "# Balancer overhead: step time and peak memory relative to equal weighting",
    "",
    f"Generated by `{COMMAND}`; re-run the command of a "
    "section to reproduce it. Numbers depend on the machine and on its load: compare ratios, not "
    "milliseconds, across machines.",
    "",
    "Each cell: median step time relative to EW (jacobian mode = plain backward), and in "
    "parentheses peak step memory relative to EW. Loss-based methods need no gradient "
    "information: the engine runs the same computation in every mode (`same as jacobian`; EW runs "
    "its gramian cell anyway, as the noise control). `n/a (refused: …)` is the engine's (or "
    "LibMTL's) refusal of the combination, `n/a (failed: …)` an error raised while running it. "
    "Ratios in the LibMTL columns are relative to LibMTL's own EW.",
    "",
]

_NOTES = [
    "## Notes",
    "",
    "- A step is the training loop's step, `polytask.training.step.train_step` in full precision: "
    "`zero_grad`, forward, task losses, what the balancer needs, the balancer, gradients, the "
    "loop's finiteness check, `optimizer.step()`, and the extra forward of balancers that ask "
    "for one (FAMO).",
    "- Rounds interleave every configuration in a fresh random order, so that machine noise hits "
    f"every method alike; a step shorter than {BLOCK_TARGET_S * 1e3:.0f} ms runs as a block of up "
    f"to {MAX_BLOCK} steps whose mean is the round's sample.",
    "- LibMTL 1.1.5 (`pip install --no-deps libmtl==1.1.5`; its top-level `import LibMTL` fails on "
    "current torchvision, so the benchmark imports its `weighting` and `architecture` packages "
    "directly). Its `Trainer` hard-codes `cuda:0`, so its `HPS` architecture and weighting "
    "classes are driven directly (`benchmarks/polytask_bench/libmtl_side.py`), with its per-step logic "
    "untouched (the weighting's `backward(losses, **weight_args)` with its default arguments), "
    "on the identical trunk, heads (deep copies of the same initial weights), batch, loss and "
    "optimizer. Left out of its step, in its favour: the `Trainer`'s per-step `loss.item()` "
    "records and metric updates; its losses are the plain mean losses of fully labelled tasks, "
    "where polytask's are masked (missing labels). One shim: `zero_grad_share_params` is called "
    "with `set_to_none=False` (torch-1.x behaviour). LibMTL 1.1.5's CAGrad reshapes the task "
    "weights to `(1, 3)`, so it only runs with exactly 3 tasks.",
    "- † LibMTL's loss-based weightings with `rep_grad=True` never train the shared trunk: its "
    "`HPS` hands each head a detached copy of the representation and these weightings' "
    "`backward` only calls `loss.backward()`, so no gradient reaches the encoder. Those cells time "
    "a step without the trunk's backward and are not comparable.",
]


def render(
    runs: Sequence[tuple[Sequence[Cell], BenchConfig, dict[str, Any]]], notes: str = ""
) -> str:
    """The markdown report of one or several runs (one section per run, e.g. per trunk).

    ``notes`` (hand-written markdown: the verdicts' reading, profiles) go after the header, so
    that regenerating the tables from the runs' JSON keeps them.
    """
    lines = list(_HEADER)
    if notes.strip():
        lines += [notes.strip(), ""]
    for cells, cfg, meta in runs:
        lines += render_run(cells, cfg, meta)
    lines += [*_NOTES, ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- entry points
@contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_overhead(
    cfg: BenchConfig, log: Callable[[str], None] | None = None
) -> tuple[list[Cell], dict[str, Any]]:
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    device = torch.device(cfg.device)
    with _threads(cfg.threads):
        started = time.perf_counter()
        meta: dict[str, Any] = {
            "machine": _machine(device),
            "load_start": f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?",
            "libmtl": libmtl_version(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        }
        probe = make_workload(
            cfg.trunk, 2, 2, cfg.width, cfg.seed, "cpu", cfg.image_size, cfg.seq_len
        )
        model = probe.model()
        meta["shared_params"] = sum(p.numel() for p in model.shared_parameters())
        meta["describe"] = probe.describe()
        del model
        cells: list[Cell] = []
        for t in cfg.tasks:
            work = make_workload(
                cfg.trunk, t, cfg.batch_size, cfg.width, cfg.seed, device, cfg.image_size,
                cfg.seq_len,
            )
            cells += measure_workload(work, cfg, log)
            del work
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        meta["load_end"] = f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?"
        meta["elapsed_min"] = (time.perf_counter() - started) / 60
    return cells, meta


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=COMMAND,
        description="Median step time and peak memory of every balancer relative to EW.",
    )
    p.add_argument("--trunk", default="mlp", choices=TRUNKS, help="the workload's trunk")
    p.add_argument("--tasks", default="2,12,40", help="numbers of tasks, comma-separated")
    p.add_argument("--methods", default="all", help="balancers, comma-separated (default: all)")
    p.add_argument(
        "--modes", default=",".join(MODES),
        help="engine modes, comma-separated (EW and loss-based methods always run jacobian mode, "
        "their only computation; gradient methods only if it is listed)",
    )
    p.add_argument(
        "--libmtl-modes", default=",".join(LIBMTL_MODES),
        help="LibMTL settings: default (rep_grad=False), rep_grad (its EW runs default anyway)",
    )
    p.add_argument("--repeats", type=int, default=30, help="timed rounds (median over them)")
    p.add_argument(
        "--slow-repeats", type=int, default=None,
        help=f"timed rounds of configurations over {SLOW_FACTOR:.0f}x EW in the warm-up "
        "(default: --repeats)",
    )
    p.add_argument("--warmup", type=int, default=8, help="untimed steps per configuration first")
    p.add_argument("--batch-size", type=int, default=None, help="default: 128 (mlp), 64 (others)")
    p.add_argument("--width", type=int, default=None, help="trunk width (default per trunk)")
    p.add_argument("--image-size", type=int, default=64, help="resnet18: image side in pixels")
    p.add_argument("--seq-len", type=int, default=64, help="transformer: tokens per sequence")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument(
        "--losses", default="engine", choices=("engine", *LOSS_VARIANTS, "both"),
        help="the engine's own loss function, a forced one (per-task loop or "
        "polytask.losses batched), or both forced ones as extra EW configurations",
    )
    p.add_argument(
        "--interleave", default=None, choices=("all", "method"),
        help="configurations sharing rounds: all at once, or one method at a time with a fresh EW "
        "reference (default: all for mlp, method for the deep trunks, whose configurations do not "
        "all fit in memory at once)",
    )
    p.add_argument("--no-libmtl", action="store_true", help="skip the LibMTL side")
    p.add_argument("--no-memory", action="store_true", help="skip the memory step")
    p.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    p.add_argument("--json", type=Path, default=None, help="also write raw timings here")
    p.add_argument(
        "--combine", nargs="+", type=Path, default=None, metavar="JSON",
        help="write one report from the --json files of earlier runs (runs nothing)",
    )
    p.add_argument(
        "--notes", type=Path, default=None,
        help="with --combine: a markdown file inserted after the report's header",
    )
    return p


def _config(argv: Sequence[str]) -> BenchConfig | list[Path]:
    args = _parser().parse_args(list(argv))
    if args.combine:
        if args.out is None:
            raise SystemExit("--combine needs --out")
        if args.notes is not None and not args.notes.is_file():
            raise SystemExit(f"--notes: no such file {args.notes}")
        return [*args.combine, args.notes or Path(""), args.out]
    known = list(available())
    methods = known if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; available: {known}")
    if REFERENCE not in methods:
        methods = [REFERENCE, *methods]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise SystemExit(f"unknown mode(s) {bad}; choose from {list(MODES)}")
    gradient_jacobian = "jacobian" in modes
    modes = [m for m in MODES if m in modes or m == "jacobian"]  # jacobian: EW's reference step
    libmtl_modes = [m.strip() for m in args.libmtl_modes.split(",") if m.strip()]
    if not libmtl_modes or any(m not in LIBMTL_MODES for m in libmtl_modes):
        raise SystemExit(f"--libmtl-modes: choose from {list(LIBMTL_MODES)}, got {args.libmtl_modes!r}")
    try:
        tasks = [int(v) for v in args.tasks.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--tasks needs numbers >= 2, got {args.tasks!r}") from None
    if not tasks or any(t < 2 for t in tasks):
        raise SystemExit(f"--tasks needs numbers >= 2, got {args.tasks!r}")
    if args.repeats < 1 or args.warmup < 0 or (args.slow_repeats or 1) < 1:
        raise SystemExit("--repeats and --slow-repeats must be >= 1 and --warmup >= 0")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise SystemExit(f"--device must be cpu or cuda[:N], got {args.device!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this process")
    with_libmtl = not args.no_libmtl
    if with_libmtl and libmtl_version() is None:
        print(
            "LibMTL is not importable: running without it "
            "(pip install --no-deps libmtl==1.1.5; see docs/benchmarks/overhead.md)",
            file=sys.stderr,
        )
        with_libmtl = False
    batch = args.batch_size or DEFAULT_BATCH[args.trunk]
    width = args.width or DEFAULT_WIDTH[args.trunk]
    if batch < 1 or width < 1:
        raise SystemExit("--batch-size and --width must be >= 1")
    if args.trunk == "transformer" and width % 8:
        raise SystemExit(f"--width must be a multiple of the transformer's 8 heads, got {width}")
    return BenchConfig(
        trunk=args.trunk, tasks=tasks, methods=methods, modes=modes, repeats=args.repeats,
        gradient_jacobian=gradient_jacobian, libmtl_modes=libmtl_modes,
        slow_repeats=args.slow_repeats,
        warmup=args.warmup, batch_size=batch, width=width, image_size=args.image_size,
        seq_len=args.seq_len, threads=args.threads, seed=args.seed, device=str(device),
        losses=args.losses, libmtl=with_libmtl,
        interleave=args.interleave or ("all" if args.trunk == "mlp" else "method"),
        memory=not args.no_memory, out=args.out,
        json_out=args.json, argv=list(argv),
    )


def _to_json(cells: Sequence[Cell], cfg: BenchConfig, meta: dict[str, Any]) -> dict[str, Any]:
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    raw = []
    for c in cells:
        entry = asdict(c)
        entry["median_s"] = c.median if c.ok else None
        raw.append(entry)
    return {"config": config, "meta": meta, "cells": raw}


def _from_json(data: dict[str, Any]) -> tuple[list[Cell], BenchConfig, dict[str, Any]]:
    config = dict(data["config"])
    for key in ("out", "json_out"):
        config[key] = Path(config[key]) if config.get(key) else None
    cfg = BenchConfig(**config)
    cells = []
    for entry in data["cells"]:
        entry = {k: v for k, v in entry.items() if k != "median_s"}
        cells.append(Cell(**entry))
    return cells, cfg, data["meta"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/overhead.py [options]``; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parsed = _config(argv)
    except SystemExit as exc:  # argparse's --help and errors
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 2
        return int(exc.code or 0)
    if isinstance(parsed, list):  # --combine
        *sources, notes, out = parsed
        runs = [_from_json(json.loads(p.read_text())) for p in sources]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(runs, notes.read_text() if notes.name else ""))
        print(f"wrote {out}", file=sys.stderr)
        return 0
    cfg = parsed
    cells, meta = run_overhead(cfg)
    text = render([(cells, cfg, meta)])
    if cfg.out is not None:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(text)
        print(f"wrote {cfg.out}", file=sys.stderr)
    else:
        print(text)
    if cfg.json_out is not None:
        cfg.json_out.parent.mkdir(parents=True, exist_ok=True)
        cfg.json_out.write_text(json.dumps(_to_json(cells, cfg, meta), indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
