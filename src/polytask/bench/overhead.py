"""``polytask bench overhead``: what each balancer costs per training step, relative to EW.

For every number of tasks ``T`` the benchmark builds one fixed workload (a hard-sharing MLP with one
regression head per task, one fixed batch) and, for every balancing method and engine mode, its own
copy of the model (same seed, so the same initial weights), balancer, engine and optimizer. A step
is exactly the training loop's step (:func:`polytask.training.loop.fit`): ``zero_grad``,
``GradientEngine.backward`` (forward, masked task losses, what the balancer needs, balancer,
gradients), the finiteness check, ``optimizer.step()`` and the balancer's extra forward if it asked
for one (``engine.after_step``). Per-step logging is left out.

Timing: after ``--warmup`` steps of every configuration, ``--repeats`` rounds run one step of every
configuration each (a short block of steps, averaged, for configurations faster than
``BLOCK_TARGET_S``), in a fresh random order per round, so that load from other processes hits all
configurations alike; a configuration's time is the median over rounds of the process CPU time of
its step (``time.process_time``; with one torch thread that is the step's compute, much less
disturbed by other processes on a shared machine than wall-clock time, which ``--json`` records
too). Ratios are medians divided by the median of equal weighting (EW) of the same library on the
same workload.

Memory: one more step of every configuration runs under ``torch.profiler`` with
``profile_memory=True`` (untimed). The figure is the peak, during that step, of the bytes held by
torch CPU tensors allocated within the step (the running sum of the profiler's allocation and
free events): the step's working memory above the persistent model, optimizer and balancer state.
Memory held outside torch tensors (numpy/scipy arrays, Python objects) is not counted.

LibMTL 1.1.5 (``pip install --no-deps libmtl==1.1.5``) runs side by side in the same rounds through
:mod:`polytask.bench._libmtl` (its ``Trainer`` hard-codes CUDA): same trunk, heads, batch, loss
and optimizer; ``rep_grad=False`` (its default: per-task gradients of the shared parameters, like
our ``jacobian`` mode) and ``rep_grad=True`` (gradients of the shared representation, like our
``representation`` mode).
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from polytask.balancing import available, create_balancer
from polytask.balancing.engine import EngineError, GradientEngine
from polytask.bench._libmtl import LIBMTL_METHODS, LibMTLRunner, libmtl_version
from polytask.models.base import HardSharing
from polytask.models.trunks import MLP
from polytask.tasks import Task
from polytask.training.loop import _check_finite, _optimizer
from polytask.training.settings import TrainSettings

__all__ = ["BenchConfig", "Cell", "main_overhead", "run_overhead"]

MODES = ("jacobian", "gramian", "representation")
LIBMTL_MODES = ("default", "rep_grad")
#: which polytask mode computes at the same exactness as which LibMTL setting
SAME_EXACTNESS = {"default": "jacobian", "rep_grad": "representation"}
IN_FEATURES = 64
LR = 1e-3
#: the epoch of the timed steps (the warm-up steps go through epochs 0 .. LAST_EPOCH - 1).
LAST_EPOCH = 6
REFERENCE = "equal"
#: a round's sample of a cheap configuration is the mean of a block of steps of about this length
BLOCK_TARGET_S = 0.025
MAX_BLOCK = 8


@dataclass
class BenchConfig:
    tasks: list[int] = field(default_factory=lambda: [2, 12, 40])
    methods: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=lambda: list(MODES))
    repeats: int = 30
    warmup: int = 8
    batch_size: int = 128
    width: int = 256
    threads: int = 1
    seed: int = 0
    libmtl: bool = True
    memory: bool = True
    out: Path | None = None
    json_out: Path | None = None
    argv: list[str] = field(default_factory=list)


@dataclass
class Cell:
    """One configuration: a library, a method, a mode, a number of tasks."""

    library: str
    method: str
    mode: str
    tasks: int
    status: str = "ok"
    times: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    peak_bytes: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def median(self) -> float:
        """Median CPU time of a step (seconds)."""
        return statistics.median(self.times) if self.times else math.nan

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall) if self.wall else math.nan


# ---------------------------------------------------------------------------- workload
@dataclass
class Workload:
    tasks: list[Task]
    x: Tensor
    targets: dict[str, Tensor]
    width: int
    seed: int

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def model(self) -> HardSharing:
        """The fixed model; every call returns the same initial weights."""
        torch.manual_seed(self.seed)
        trunk = MLP(IN_FEATURES, hidden=(self.width, self.width))
        model = HardSharing(trunk, self.tasks)
        model.check_ownership()
        return model


def make_workload(num_tasks: int, batch_size: int, width: int, seed: int) -> Workload:
    g = torch.Generator().manual_seed(seed + num_tasks)
    tasks = [Task(f"t{i:02d}", "regression", standardize=False) for i in range(num_tasks)]
    x = torch.randn(batch_size, IN_FEATURES, generator=g)
    # Related but different linear targets, so that task gradients partly conflict.
    common = torch.randn(IN_FEATURES, 1, generator=g)
    targets = {}
    for t in tasks:
        w = common + torch.randn(IN_FEATURES, 1, generator=g)
        targets[t.name] = (x @ w) / math.sqrt(IN_FEATURES) + 0.1 * torch.randn(
            batch_size, 1, generator=g
        )
    return Workload(tasks, x, targets, width, seed)


# ---------------------------------------------------------------------------- runners
class PolytaskRunner:
    """A model, balancer, engine and optimizer; ``step`` is the training loop's step."""

    def __init__(self, method: str, mode: str, work: Workload, warmup: int) -> None:
        self.warmup = warmup
        self.model = work.model()
        self.balancer = create_balancer(method, work.names)
        self.engine = GradientEngine(
            self.model, work.tasks, self.balancer, mode=mode, seed=work.seed  # type: ignore[arg-type]
        )
        settings = TrainSettings(lr=LR, optimizer="adamw", progress=False, tensorboard=False)
        self.optimizer = _optimizer(self.model, self.balancer, settings)
        self.model.train()
        self.work = work
        self._nowhere = Path(os.devnull)

    def step(self, index: int) -> None:
        x, y = self.work.x, self.work.targets
        # epochs advance during the warm-up (past the warm-up phases of STCH, DWA), then stay
        epoch = LAST_EPOCH if index >= self.warmup else index * LAST_EPOCH // max(self.warmup, 1)
        self.optimizer.zero_grad(set_to_none=True)
        out = self.engine.backward(x, y, index, epoch)
        if out is None:
            return
        _check_finite(out.losses, out.present, self.model.task_names, index, epoch, self._nowhere)
        self.optimizer.step()
        self.engine.after_step(x, y)


def _mse(pred: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(pred, target)


def _libmtl_runner(method: str, mode: str, work: Workload) -> LibMTLRunner:
    template = work.model()
    heads = nn.ModuleDict(dict(template.heads.items()))
    return LibMTLRunner(
        method, mode == "rep_grad", template.trunk, heads, work.x, work.targets, _mse, LR
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
def peak_step_bytes(step: Callable[[], None]) -> int:
    """Peak bytes of torch CPU tensors allocated during ``step`` (profiler allocation events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    mem = sorted(
        (e.start_ns(), i, int(e.nbytes()))
        for i, e in enumerate(prof.profiler.kineto_results.events())  # type: ignore[union-attr]
        if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")
    )
    current = peak = 0
    for _, _, nbytes in mem:
        current += nbytes
        peak = max(peak, current)
    return peak


def _build(
    work: Workload, methods: Sequence[str], modes: Sequence[str], with_libmtl: bool, warmup: int
) -> tuple[list[Cell], dict[int, Any]]:
    cells: list[Cell] = []
    runners: dict[int, Any] = {}
    t = len(work.tasks)
    for method in methods:
        for mode in modes:
            cell = Cell("polytask", method, mode, t)
            try:
                runners[len(cells)] = PolytaskRunner(method, mode, work, warmup)
            except EngineError as err:
                cell.status = f"n/a (refused: {_short(err)})"
            cells.append(cell)
    if with_libmtl:
        for method in methods:
            if method not in LIBMTL_METHODS:
                continue
            for mode in LIBMTL_MODES:
                cell = Cell("libmtl", method, mode, t)
                try:
                    runners[len(cells)] = _libmtl_runner(method, mode, work)
                except Exception as err:
                    cell.status = f"n/a (failed: {_short(err)})"
                cells.append(cell)
    return cells, runners


def _run_step(
    cell: Cell, runner: Any, index: int, runners: dict[int, Any], key: int
) -> tuple[float, float]:
    """One step; its (CPU, wall) seconds. A step that raises marks the cell n/a, drops the runner."""
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        runner.step(index)
    except Exception as err:
        verb = "refused" if "No support" in str(err) else "failed"
        cell.status = f"n/a ({verb}: {_short(err)})"
        runners.pop(key, None)
        return math.nan, math.nan
    return time.process_time() - cpu, time.perf_counter() - wall


def measure_workload(
    work: Workload, cfg: BenchConfig, log: Callable[[str], None]
) -> list[Cell]:
    cells, runners = _build(work, cfg.methods, cfg.modes, cfg.libmtl, cfg.warmup)
    steps = dict.fromkeys(runners, 0)
    rng = random.Random(cfg.seed * 7919 + len(work.tasks))
    t0 = time.perf_counter()
    seen: dict[int, list[float]] = {key: [] for key in runners}
    for _ in range(cfg.warmup):
        for key in list(runners):
            cpu, _ = _run_step(cells[key], runners[key], steps[key], runners, key)
            steps[key] += 1
            seen[key].append(cpu)
    # Cheap configurations run a block of consecutive steps per round (their mean is the round's
    # sample), so that a sample is never a sub-millisecond blip.
    block = {}
    for key in runners:
        est = statistics.median(seen[key][1:] or seen[key] or [BLOCK_TARGET_S])
        block[key] = max(1, min(MAX_BLOCK, round(BLOCK_TARGET_S / max(est, 1e-6))))
    log(f"T={len(work.tasks)}: {len(runners)} configurations, warm-up {time.perf_counter() - t0:.1f}s")
    for r in range(cfg.repeats):
        order = list(runners)
        rng.shuffle(order)
        gc.collect()
        for key in order:
            if key not in runners:
                continue
            cpu = wall = 0.0
            for _ in range(block[key]):
                c, w = _run_step(cells[key], runners[key], steps[key], runners, key)
                steps[key] += 1
                cpu, wall = cpu + c, wall + w
            if math.isfinite(cpu):
                cells[key].times.append(cpu / block[key])
                cells[key].wall.append(wall / block[key])
        if (r + 1) % max(1, cfg.repeats // 5) == 0:
            log(f"T={len(work.tasks)}: round {r + 1}/{cfg.repeats} ({time.perf_counter() - t0:.0f}s)")
    if cfg.memory:
        for key in list(runners):
            runner, index = runners[key], steps[key]
            try:
                cells[key].peak_bytes = peak_step_bytes(lambda r=runner, i=index: r.step(i))
            except Exception as err:
                cells[key].status = f"n/a (failed: {_short(err)})"
            steps[key] += 1
    for cell in cells:
        if cell.ok and not cell.times:
            cell.status = "n/a (failed: no completed step)"
    return cells


# ---------------------------------------------------------------------------- reporting
def _reference(cells: Sequence[Cell], library: str) -> Cell | None:
    mode = "jacobian" if library == "polytask" else "default"
    for c in cells:
        if c.library == library and c.method == REFERENCE and c.mode == mode and c.ok:
            return c
    return None


def ratios(cells: Sequence[Cell], cell: Cell) -> tuple[float, float]:
    ref = _reference(cells, cell.library)
    if ref is None or not cell.ok:
        return math.nan, math.nan
    time_ratio = cell.median / ref.median
    mem_ratio = math.nan
    if cell.peak_bytes is not None and ref.peak_bytes:
        mem_ratio = cell.peak_bytes / ref.peak_bytes
    return time_ratio, mem_ratio


def _find(cells: Sequence[Cell], library: str, method: str, mode: str) -> Cell | None:
    for c in cells:
        if (c.library, c.method, c.mode) == (library, method, mode):
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
    return "?" if nbytes is None else f"{nbytes / 2**20:.2f} MB"


def _machine() -> dict[str, str]:
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
    try:
        info["torchjd"] = importlib.metadata.version("torchjd")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a dependency
        info["torchjd"] = "?"
    return info


def _result_table(cells: Sequence[Cell], cfg: BenchConfig, t: int) -> list[str]:
    ours = [c for c in cells if c.library == "polytask" and c.tasks == t]
    theirs = [c for c in cells if c.library == "libmtl" and c.tasks == t]
    ref, lref = _reference(ours, "polytask"), _reference(theirs, "libmtl")
    lines = [f"### T = {t}", ""]
    if ref is not None:
        lines.append(
            f"polytask EW: {ref.median * 1e3:.2f} ms CPU per step ({ref.median_wall * 1e3:.2f} ms "
            f"wall), peak step memory {_mb(ref.peak_bytes)}."
            + (
                f" LibMTL EW: {lref.median * 1e3:.2f} ms CPU ({lref.median_wall * 1e3:.2f} ms "
                f"wall), {_mb(lref.peak_bytes)}."
                if lref is not None
                else ""
            )
        )
        lines.append("")
    info = available()
    head = ["method", "family", *cfg.modes]
    libmtl_cols = cfg.libmtl and bool(theirs)
    if libmtl_cols:
        head += ["LibMTL rep_grad=False", "LibMTL rep_grad=True"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" for _ in head) + "|")
    for method in cfg.methods:
        row = [method, info[method].family]
        row += [_fmt_cell(ours, _find(ours, "polytask", method, m)) for m in cfg.modes]
        if libmtl_cols:
            if method in LIBMTL_METHODS:
                name = LIBMTL_METHODS[method][0]
                row += [
                    f"{name}: " + _fmt_cell(theirs, _find(theirs, "libmtl", method, m))
                    for m in LIBMTL_MODES
                ]
            else:
                row += ["", ""]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    return lines


def _speedup_table(cells: Sequence[Cell], cfg: BenchConfig, t: int) -> list[str]:
    ours = [c for c in cells if c.library == "polytask" and c.tasks == t]
    theirs = [c for c in cells if c.library == "libmtl" and c.tasks == t]
    lines = [
        f"### Speed-up over LibMTL at T = {t} (median CPU ms per step; speed-up = LibMTL / "
        "polytask at the same exactness)",
        "",
        "| method | polytask jacobian | LibMTL rep_grad=False | speed-up | polytask "
        "representation | LibMTL rep_grad=True | speed-up | polytask gramian |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def ms(c: Cell | None) -> str:
        if c is None:
            return "not run"
        return f"{c.median * 1e3:.2f}" if c.ok else c.status.replace("|", "/")

    def speed(a: Cell | None, b: Cell | None) -> str:
        if a is None or b is None or not (a.ok and b.ok):
            return "–"
        return f"{b.median / a.median:.1f}×"

    for method in cfg.methods:
        if method not in LIBMTL_METHODS:
            continue
        pj, pr = _find(ours, "polytask", method, "jacobian"), _find(ours, "polytask", method, "representation")
        pg = _find(ours, "polytask", method, "gramian")
        ld, lr = _find(theirs, "libmtl", method, "default"), _find(theirs, "libmtl", method, "rep_grad")
        name = f"{method} / {LIBMTL_METHODS[method][0]}"
        lines.append(
            f"| {name} | {ms(pj)} | {ms(ld)} | {speed(pj, ld)} | {ms(pr)} | {ms(lr)} | "
            f"{speed(pr, lr)} | {ms(pg)} |"
        )
    lines.append("")
    return lines


def evaluate_targets(cells: Sequence[Cell], cfg: BenchConfig) -> list[str]:
    """The issue's targets, each marked met / not met with the numbers."""
    info = available()
    out: list[str] = []

    def mark(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    # 1. loss-based methods <= 1.05x EW (their only meaningful mode: jacobian = plain backward)
    worst: list[str] = []
    all_ok, seen = True, False
    for t in cfg.tasks:
        cs = [c for c in cells if c.tasks == t and c.library == "polytask"]
        for method in cfg.methods:
            if info[method].family != "loss" or method in (REFERENCE, "famo"):
                continue
            c = _find(cs, "polytask", method, "jacobian")
            if c is None or not c.ok:
                continue
            seen = True
            tr, _ = ratios(cs, c)
            if tr > 1.05:
                all_ok = False
                worst.append(f"{method} {tr:.2f}× at T={t}")
    if seen:
        detail = "all within" if all_ok else "over: " + ", ".join(worst)
        out.append(f"- Loss-based methods ≤ 1.05× EW (every T): {mark(all_ok)} ({detail}).")
    # 2. FAMO <= 1.25x
    if "famo" in cfg.methods:
        vals = []
        for t in cfg.tasks:
            cs = [c for c in cells if c.tasks == t and c.library == "polytask"]
            c = _find(cs, "polytask", "famo", "jacobian")
            if c is not None and c.ok:
                vals.append((t, ratios(cs, c)[0]))
        if vals:
            ok = all(v <= 1.25 for _, v in vals)
            nums = ", ".join(f"{v:.2f}× at T={t}" for t, v in vals)
            out.append(f"- FAMO ≤ 1.25× EW: {mark(ok)} ({nums}).")
    if 12 not in cfg.tasks:
        out.append("- Targets at T = 12: not evaluated (T = 12 was not run).")
        return out
    cs = [c for c in cells if c.tasks == 12]
    # 3. gradient methods in representation or Gramian mode <= 1.5x at T=12
    met, missed = [], []
    for method in cfg.methods:
        if info[method].family != "gradient":
            continue
        options = []
        for mode in ("gramian", "representation"):
            c = _find(cs, "polytask", method, mode)
            if c is not None and c.ok:
                options.append((ratios(cs, c)[0], mode))
        if not options:
            continue
        best, mode = min(options)
        (met if best <= 1.5 else missed).append(f"{method} {best:.2f}× ({mode})")
    if met or missed:
        detail = "met by " + (", ".join(met) or "none")
        if missed:
            detail += "; missed by " + ", ".join(missed)
        out.append(
            f"- Gradient methods ≤ 1.5× EW at T=12 in their cheaper of representation / Gramian "
            f"mode: {mark(not missed)} ({len(met)}/{len(met) + len(missed)}: {detail})."
        )
    # 4. >= 2x faster than LibMTL's same method at T=12, same exactness
    if cfg.libmtl:
        met, missed, na = [], [], []
        for method in cfg.methods:
            if info[method].family != "gradient" or method not in LIBMTL_METHODS:
                continue
            for lmode, pmode in SAME_EXACTNESS.items():
                ours = _find(cs, "polytask", method, pmode)
                theirs = _find(cs, "libmtl", method, lmode)
                label = f"{method} ({pmode} vs rep_grad={lmode == 'rep_grad'})"
                if ours is None or theirs is None:
                    continue
                if not (ours.ok and theirs.ok):
                    na.append(label)
                    continue
                s = theirs.median / ours.median
                (met if s >= 2 else missed).append(f"{label} {s:.1f}×")
        if met or missed:
            detail = "met by " + (", ".join(met) or "none")
            if missed:
                detail += "; missed by " + ", ".join(missed)
            if na:
                detail += "; not comparable (one side n/a): " + ", ".join(na)
            out.append(
                f"- Each gradient method ≥ 2× faster than LibMTL's at T=12, same exactness: "
                f"{mark(not missed)} ({detail})."
            )
    return out


def render(cells: Sequence[Cell], cfg: BenchConfig, meta: dict[str, Any]) -> str:
    shown = list(cfg.argv)
    if "--json" in shown:  # where the raw timings went is not part of the experiment
        i = shown.index("--json")
        del shown[i : i + 2]
    cmd = "polytask bench overhead " + shlex.join(shown)
    lines = [
        "# Balancer overhead: step time and peak memory relative to equal weighting",
        "",
        "Generated by `polytask bench overhead` (`src/polytask/bench/overhead.py`); re-run the "
        "command below to reproduce it. Numbers depend on the machine and on its load: compare "
        "ratios, not milliseconds, across machines.",
        "",
        "```bash",
        cmd.strip(),
        "```",
        "",
        "## Setup",
        "",
        f"- Model: hard sharing, trunk `MLP({IN_FEATURES}, hidden=({cfg.width}, {cfg.width}))` "
        f"({meta['shared_params']} shared parameters), one linear regression head per task "
        f"(MSE); one fixed batch of {cfg.batch_size} samples; AdamW (lr {LR}).",
        f"- T ∈ {{{', '.join(map(str, cfg.tasks))}}}; {cfg.warmup} warm-up steps, then "
        f"{cfg.repeats} rounds of every configuration in a fresh random order (interleaved, so "
        "that machine noise hits every method alike). In a round a configuration runs one step, "
        f"or, if its step is short, a block of consecutive steps of about {BLOCK_TARGET_S * 1e3:.0f} "
        f"ms (at most {MAX_BLOCK}) whose mean step is the round's sample; median over rounds of the "
        "step's process CPU time (`time.process_time`: with one torch thread, the step's own "
        "compute, far less disturbed by the other processes of a shared machine than wall-clock "
        "time; the wall-clock medians are recorded too with `--json`).",
        "- A step is the training loop's step: `zero_grad`, `GradientEngine.backward` (forward, "
        "task losses, what the balancer needs, the balancer, gradients), finiteness check, "
        "`optimizer.step()`, and the extra forward of balancers that ask for one (FAMO).",
        "- Memory: peak bytes of torch CPU tensors allocated during one (untimed) step, from "
        "`torch.profiler` allocation/free events: the step's working memory on top of the "
        "persistent model, optimizer and balancer state. Allocations outside torch (numpy/scipy "
        "solvers of some methods) are not counted.",
        f"- Machine: {meta['machine']['cpu']}, {meta['machine']['logical cores']} logical cores, "
        f"torch {meta['machine']['torch']} with {meta['machine']['torch threads']} thread(s), "
        f"torchjd {meta['machine'].get('torchjd', '?')}, Python {meta['machine']['python']}, "
        f"{meta['machine']['os']}. Load average (1 min) at start {meta['load_start']}, at end "
        f"{meta['load_end']}: the machine was shared with other processes. Run took "
        f"{meta['elapsed_min']:.1f} min on {meta['date']}.",
    ]
    if cfg.libmtl:
        lines += [
            f"- LibMTL {meta['libmtl']} (installed with `pip install --no-deps libmtl==1.1.5`: its "
            "package metadata asks for an unpinned torchvision, which can replace torch, and its "
            "weighting and architecture code needs only torch, numpy and scipy; its top-level "
            "`import LibMTL` fails on current torchvision, so the bench imports those two "
            "subpackages directly). Its `Trainer` hard-codes `cuda:0`, so its `HPS` "
            "architecture and weighting classes are driven directly on the CPU "
            "(`src/polytask/bench/_libmtl.py`), with its per-step logic untouched (the weighting's "
            "`backward(losses, **weight_args)` with its default arguments), on the identical "
            "trunk, heads (deep copies of the same initial weights), batch, loss and optimizer. "
            "`rep_grad=False` (its default: one backward pass per task to get the shared "
            "parameters' gradients) is compared with our `jacobian` mode, `rep_grad=True` "
            "(gradients of the shared representation) with our `representation` mode. Left out of "
            "its step, in its favour: the `Trainer`'s per-step `loss.item()` records and metric "
            "updates. One shim: LibMTL's `zero_grad_share_params` is called with "
            "`set_to_none=False` (torch-1.x behaviour; under torch ≥ 2 its `_reset_grad` fails "
            "on `None` gradients otherwise). Ratios in the LibMTL columns are relative to LibMTL's "
            "own EW.",
        ]
    lines += [
        "",
        "## Results",
        "",
        "Each cell: median step time relative to EW (jacobian mode = plain backward), and in "
        "parentheses peak step memory relative to EW. Loss-based methods need no gradient "
        "information, so their jacobian and gramian modes are the same computation; "
        "`n/a (refused: …)` is the engine's (or LibMTL's) refusal of the combination, "
        "`n/a (failed: …)` an error raised while running it.",
        "",
    ]
    for t in cfg.tasks:
        lines += _result_table(cells, cfg, t)
    if cfg.libmtl and cfg.tasks:
        t = 12 if 12 in cfg.tasks else cfg.tasks[len(cfg.tasks) // 2]
        lines += _speedup_table(cells, cfg, t)
    lines += ["## Targets", ""]
    control = []
    for t in cfg.tasks:
        cs = [c for c in cells if c.tasks == t and c.library == "polytask"]
        c = _find(cs, "polytask", REFERENCE, "gramian")
        if c is not None and c.ok:
            control.append(f"{ratios(cs, c)[0]:.2f} at T={t}")
    if control:
        lines += [
            "Noise control: `equal` in gramian mode runs the same computation as the EW "
            f"reference; its ratios ({', '.join(control)}) show the measurement noise on this "
            "machine.",
            "",
        ]
    lines += evaluate_targets(cells, cfg)
    lines += ["", *_NOTES]
    if cfg.libmtl and "cagrad" in cfg.methods:
        lines.append(
            "- LibMTL 1.1.5's CAGrad reshapes the task weights to `(1, 3)` in its objective, so it "
            "only runs with exactly 3 tasks (`n/a (failed: …)` above for any other T)."
        )
    lines.append("")
    return "\n".join(lines)


_NOTES = [
    "## Where the time goes",
    "",
    "- Loss-based methods cost what EW costs: the engine backpropagates the balancer's scalar "
    "loss once. FAMO adds one no-gradient forward after the optimizer step (its `after_step`).",
    "- The engine gets each task's gradient w.r.t. the shared representation with one small "
    "backward per task from that task's own loss, so each head is differentiated once (a batched "
    "backward of the stacked losses runs every head for every task). In `representation` mode "
    "that is all the per-task work; the update then goes through the trunk in one backward.",
    "- In `jacobian` mode these rows are sent through the trunk in one batched backward (the "
    "same Jacobian, by the chain rule), for models with one shared representation. Computing T "
    "gradients of the trunk's weights is T weight-gradient products: this mode's cost grows "
    "with T by nature. LibMTL's `rep_grad=False` runs T full backward passes instead (the trunk "
    "and, through its `[T]` loss tensor, every head each time) and copies each gradient into a "
    "vector.",
    "- In `gramian` mode the autogram engine differentiates the surrogate outputs "
    "`R · rep` (R: the representation rows) through the trunk and accumulates `J Jᵀ` one layer "
    "at a time, so `J` is never held whole. On this two-layer trunk one layer holds most of the "
    "parameters, so it saves little memory and costs more time than `jacobian` mode; it pays off "
    "on deep trunks.",
    "- The methods' own solvers work on the T×T Gramian (MGDA's Frank–Wolfe in numpy, PCGrad's "
    "and GradVac's projections tracked as Gram coefficients, Nash-MTL's and FairGrad's Newton "
    "solves, CAGrad's active-set homotopy), so at T = 12 they cost well under a millisecond. "
    "What remains above EW in `representation` mode is mostly the T small per-task backward "
    "passes through the heads and the T×T Gramian of the representation gradients; methods "
    "that need the Jacobian rows themselves (ConFIG, DB-MTL, GradDrop, ExcessMTL, MoCo) also "
    "touch the full `T × n` matrix.",
]


# ---------------------------------------------------------------------------- entry points
def run_overhead(cfg: BenchConfig, log: Callable[[str], None] | None = None) -> tuple[list[Cell], dict[str, Any]]:
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    meta: dict[str, Any] = {
        "machine": _machine(),
        "load_start": f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?",
        "libmtl": libmtl_version(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    probe = make_workload(2, cfg.batch_size, cfg.width, cfg.seed).model()
    meta["shared_params"] = sum(p.numel() for p in probe.shared_parameters())
    cells: list[Cell] = []
    for t in cfg.tasks:
        work = make_workload(t, cfg.batch_size, cfg.width, cfg.seed)
        cells += measure_workload(work, cfg, log)
    meta["load_end"] = f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?"
    meta["elapsed_min"] = (time.perf_counter() - started) / 60
    return cells, meta


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="polytask bench overhead",
        description="Median step time and peak memory of every balancer relative to EW.",
    )
    p.add_argument("--tasks", default="2,12,40", help="numbers of tasks, comma-separated")
    p.add_argument("--methods", default="all", help="balancers, comma-separated (default: all)")
    p.add_argument("--modes", default=",".join(MODES), help="engine modes, comma-separated")
    p.add_argument("--repeats", type=int, default=30, help="timed rounds (median over them)")
    p.add_argument("--warmup", type=int, default=8, help="untimed steps per configuration first")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=int, default=256, help="trunk hidden width")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-libmtl", action="store_true", help="skip the LibMTL side")
    p.add_argument("--no-memory", action="store_true", help="skip the profiled memory step")
    p.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    p.add_argument("--json", type=Path, default=None, help="also write raw timings here")
    return p


def _config(argv: Sequence[str]) -> BenchConfig:
    args = _parser().parse_args(list(argv))
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
    if "jacobian" not in modes:
        modes = ["jacobian", *modes]  # EW's reference step
    tasks = [int(v) for v in args.tasks.split(",") if v.strip()]
    if not tasks or any(t < 2 for t in tasks):
        raise SystemExit(f"--tasks needs numbers >= 2, got {args.tasks!r}")
    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit("--repeats must be >= 1 and --warmup >= 0")
    with_libmtl = not args.no_libmtl
    if with_libmtl and libmtl_version() is None:
        print(
            "LibMTL is not importable: running without it "
            "(pip install --no-deps libmtl==1.1.5; see docs/benchmarks/overhead.md)",
            file=sys.stderr,
        )
        with_libmtl = False
    return BenchConfig(
        tasks=tasks,
        methods=methods,
        modes=modes,
        repeats=args.repeats,
        warmup=args.warmup,
        batch_size=args.batch_size,
        width=args.width,
        threads=args.threads,
        seed=args.seed,
        libmtl=with_libmtl,
        memory=not args.no_memory,
        out=args.out,
        json_out=args.json,
        argv=list(argv),
    )


def main_overhead(argv: list[str]) -> int:
    """``polytask bench overhead [options]``; returns the process exit status."""
    try:
        cfg = _config(argv)
    except SystemExit as exc:  # argparse's --help and errors
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 2
        return int(exc.code or 0)
    cells, meta = run_overhead(cfg)
    text = render(cells, cfg, meta)
    if cfg.out is not None:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(text)
        print(f"wrote {cfg.out}", file=sys.stderr)
    else:
        print(text)
    if cfg.json_out is not None:
        raw = [
            {
                "library": c.library, "method": c.method, "mode": c.mode, "tasks": c.tasks,
                "status": c.status, "median_cpu_s": c.median if c.ok else None,
                "median_wall_s": c.median_wall if c.ok else None,
                "cpu_s": c.times, "wall_s": c.wall, "peak_bytes": c.peak_bytes,
            }
            for c in cells
        ]
        cfg.json_out.parent.mkdir(parents=True, exist_ok=True)
        cfg.json_out.write_text(json.dumps({"meta": meta, "cells": raw}, indent=1, default=str))
    return 0
