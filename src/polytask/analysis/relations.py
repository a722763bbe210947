"""Task relationship measures recorded during an ordinary training run, and their reader.

Why: "which tasks belong together?" is answered cheaply by watching the tasks' gradients and
losses while the multi-task model trains, instead of training every grouping. The recorder is off
unless ``training.relations`` is set; every ``every`` steps it takes the batch the step is about to
train on, at the current parameters, and measures (see ``docs/relationships.md``):

* ``grad_cosine``: cosine similarity of the per-task gradients, of the shared parameters or of the
  shared representation (``training.relations.gradients``; the JSON says which: ``space``);
* ``conflict_frequency``: the fraction of recorded steps in which a pair's cosine was negative;
* ``lookahead_affinity`` (every ``lookahead_every`` steps, default ``max(every, 40·T)``): TAG's inter-task affinity (Fifty et
  al., NeurIPS 2021), *exact*: ``Z[i, j] = 1 - L_j(θ_s - lr·g_i) / L_j(θ_s)``, with ``g_i`` the
  gradient of task ``i``'s loss w.r.t. the shared parameters ``θ_s`` and ``lr`` the optimizer's
  current learning rate (a plain gradient step, whatever the optimizer): one extra forward per
  task, on the same batch and with the same dropout masks;
* ``lookahead_affinity_first_order``: its first-order Taylor approximation
  ``Z[i, j] ≈ lr·<g_i, g_j> / L_j(θ_s)`` (in the spirit of Grad-TAG / ETAP: no extra forward);
* ``loss_ratio``: per task, the mean of its recorded losses in an epoch over its first recorded
  loss (``L_t(epoch) / L_t(0)``; the first record is at step 0, before any update, when the task
  is labelled there).

Directed measures read row -> column: ``Z[i][j]`` is the effect of a step on task ``i``'s gradient
on task ``j``'s loss. A task without a label in a recorded batch is left out of that step's pairs
and counted (``counts.skipped_missing``). Recording does not change training: the recorder uses its
own ``torch.autograd.grad`` calls (no ``.grad`` is touched), a lookahead runs on a functional copy
of the parameters, and the random state and the model's buffers (batch-norm statistics) are
restored afterwards, so the final parameters are bit-identical with and without it.

File format: ``<run_dir>/relations.json``, rewritten after every epoch (version 1; stable: the
grouping search, ``polytask advise`` and the report read it through :func:`read_relations`)::

    {
      "version": 1,
      "tasks": ["a", "b", ...],                       # T task names, the order of every matrix
      "epochs": [0, 1, ...],                           # the epoch of each per_epoch entry
      "settings": {"every": 10, "lookahead": true, "lookahead_every": 60, "gradients": "auto"},
      "measures": {
        "<measure>": {
          "description": "...",                        # what it is, in one sentence
          "space": "parameters" | "representation",    # where its gradients were taken
          "directed": false,                            # true: Z[i][j] is i -> j
          "per_epoch": [[[v or null] * T] * T, ...],   # mean over the epoch's records
          "records": [n, ...]                           # records of this measure per epoch
        }, ...                                          # grad_cosine, conflict_frequency,
      },                                                # lookahead_affinity(_first_order)
      "loss_ratio": {"description": "...", "initial": {task: L_t(0)},
                     "per_epoch": [{task: ratio or null}, ...]},
      "counts": {"steps_recorded": n, "lookahead_steps": n,
                 "skipped_missing": {task: n},            # records where the task had no label
                 "zero_loss": n,                          # lookahead targets left out: L_j = 0
                 "per_epoch": [{"steps": n, "lookahead_steps": n, "skipped": {task: n},
                                "zero_loss": n}, ...]}
    }

``null`` means "no evidence": the pair was never labelled together in that epoch's records (or the
measure was not recorded then). The lookahead measures are absent when ``lookahead`` is off.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from polytask.balancing.engine import GradientEngine, sample_losses
from polytask.config import RelationsConfig
from polytask.data.base import Batch
from polytask.training.checkpoint import capture_rng, restore_rng
from polytask.training.step import move_batch

__all__ = [
    "FILE_NAME",
    "FORMAT_VERSION",
    "MEASURES",
    "Measure",
    "NoRelations",
    "RelationRecorder",
    "Relations",
    "RelationsError",
    "RelationsHook",
    "cosine_matrix",
    "first_order_affinity",
    "read_relations",
    "record_relations",
]

FILE_NAME = "relations.json"
FORMAT_VERSION = 1

#: Every measure the recorder may write, with the description stored beside it in the file.
MEASURES: dict[str, str] = {
    "grad_cosine": "cosine similarity of the per-task gradients (1: aligned, -1: opposed)",
    "conflict_frequency": "fraction of recorded steps in which the pair's gradient cosine was < 0",
    "lookahead_affinity": (
        "exact TAG inter-task affinity Z[i][j] = 1 - L_j(θ_s - lr·g_i) / L_j(θ_s): the relative "
        "drop of task j's loss after a gradient step on task i's loss (Fifty et al. 2021)"
    ),
    "lookahead_affinity_first_order": (
        "first-order approximation of the TAG affinity, Z[i][j] ≈ lr·<g_i, g_j> / L_j(θ_s); "
        "no extra forward pass"
    ),
}
_DIRECTED = {"lookahead_affinity", "lookahead_affinity_first_order"}
_EPOCH_COUNTS = ("steps", "lookahead_steps", "skipped", "zero_loss")
_LOSS_RATIO = "mean loss of the task over the epoch's records / its first recorded loss"


class RelationsError(ValueError):
    """Relationship measures that cannot be recorded or read; the message says what and where."""


# ---------------------------------------------------------------------------------- the math
def cosine_matrix(rows: Tensor) -> Tensor:
    """``[P, P]`` cosine similarities of the rows of ``rows`` (``[P, N]``), in float64.

    A zero row (a task whose gradient vanished) has no direction: its entries are NaN and the
    caller leaves the pair out, rather than reporting a cosine of 0 that was never measured.
    """
    r = rows.double()
    gram = r @ r.T
    norms = gram.diagonal().sqrt()
    cos = gram / (norms[:, None] * norms[None, :])
    return cos.clamp(-1.0, 1.0)


def first_order_affinity(rows: Tensor, losses: Tensor, lr: float) -> Tensor:
    """``Z[i, j] ≈ lr·<g_i, g_j> / L_j``: the first-order TAG affinity (float64).

    From ``L_j(θ - lr·g_i) ≈ L_j(θ) - lr·<g_j, g_i>``; ``rows`` are the per-task gradients of the
    shared parameters ``[P, N]``, ``losses`` the P losses at ``θ``.
    """
    r = rows.double()
    return lr * (r @ r.T) / losses.double()[None, :]


# ---------------------------------------------------------------------------------- recording
class RelationsHook(Protocol):
    """What the training loop calls: once per batch before its step, once per epoch after it."""

    def observe(self, batch: Batch, step: int, epoch: int) -> None: ...

    def end_epoch(self, epoch: int) -> None: ...


class NoRelations:
    """The hook of a run that records nothing (``training.relations`` unset, or a single task)."""

    def observe(self, batch: Batch, step: int, epoch: int) -> None:
        return None

    def end_epoch(self, epoch: int) -> None:
        return None


def record_relations(
    engine: GradientEngine,
    optimizer: torch.optim.Optimizer,
    config: RelationsConfig | None,
    run_dir: Path,
    *,
    device: torch.device,
    start_epoch: int = 0,
    is_main: bool = True,
) -> RelationsHook:
    """The loop's relations hook: a :class:`RelationRecorder`, or :class:`NoRelations` when off.

    Off when ``config`` is ``None``, for a single task (nothing to relate) and on ranks other than
    0 under DDP (rank 0 measures its own batches; the others would only repeat the work).
    Combinations that cannot be recorded are refused here, before training starts.
    """
    if config is None or len(engine.tasks) < 2 or not is_main:
        return NoRelations()
    return RelationRecorder(engine, optimizer, config, run_dir, device=device, start_epoch=start_epoch)


@dataclass
class _Accumulator:
    """Sums and pair counts of one measure within one epoch (``[T, T]`` each)."""

    sums: np.ndarray
    counts: np.ndarray
    records: int = 0

    @classmethod
    def empty(cls, t: int) -> _Accumulator:
        return cls(np.zeros((t, t)), np.zeros((t, t), dtype=np.int64))

    def add(self, index: Sequence[int], values: np.ndarray) -> None:
        """Add the ``[P, P]`` values of the present tasks ``index``; NaN entries are left out."""
        ix = np.ix_(index, index)
        finite = np.isfinite(values)
        self.sums[ix] += np.where(finite, values, 0.0)
        self.counts[ix] += finite
        self.records += 1

    def mean(self) -> list[list[float | None]]:
        with np.errstate(invalid="ignore", divide="ignore"):
            m = self.sums / self.counts
        return [[float(v) if c > 0 else None for v, c in zip(row, crow, strict=True)]
                for row, crow in zip(m, self.counts, strict=True)]


@dataclass
class _Epoch:
    measures: dict[str, _Accumulator]
    losses: dict[str, list[float]] = field(default_factory=dict)
    steps: int = 0
    lookahead_steps: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    zero_loss: int = 0


class RelationRecorder:
    """Records the relationship measures of one run and writes ``relations.json`` every epoch."""

    def __init__(
        self,
        engine: GradientEngine,
        optimizer: torch.optim.Optimizer,
        config: RelationsConfig,
        run_dir: Path,
        *,
        device: torch.device,
        start_epoch: int = 0,
    ) -> None:
        model = engine.model
        needs = engine.balancer.needs
        if engine.mode == "gramian" and needs.gradients != "none" and needs.source == "mode":
            raise RelationsError(
                "training.relations cannot be recorded with training.engine: gramian and a "
                f"gradient balancer ({type(engine.balancer).__name__}): the Gramian engine hooks "
                "the shared modules' forward passes and the recorder's own forward would enter "
                "its bookkeeping; use engine jacobian or representation for this run"
            )
        space = config.gradients
        has_rep = model.supports_representation_grad
        if space == "representation" and not has_rep:
            raise RelationsError(
                f"training.relations.gradients: representation, but {type(model).__name__} has no "
                "single shared representation (tasks exchange features inside the trunk); use "
                "gradients: parameters (or auto)"
            )
        self.space = ("representation" if has_rep else "parameters") if space == "auto" else space
        self.engine, self.optimizer, self.config = engine, optimizer, config
        self.path = Path(run_dir) / FILE_NAME
        self.device = device
        self.names = list(model.task_names)
        self.shared = list(engine.shared)
        names_of = {id(p): n for n, p in model.named_parameters()}
        self.shared_names = [names_of[id(p)] for p in self.shared]
        self.lookahead_period = config.lookahead_period(len(self.names))
        self.measures = ["grad_cosine", "conflict_frequency"]
        if config.lookahead:
            self.measures += ["lookahead_affinity", "lookahead_affinity_first_order"]
        self.history: list[dict[str, Any]] = []  # finished epochs, as written to the file
        self.initial: dict[str, float] = {}
        self.last_step = -1
        if start_epoch > 0:
            self._resume(start_epoch)
        self.current = self._new_epoch()

    # -------------------------------------------------------------------- the loop's calls
    def observe(self, batch: Batch, step: int, epoch: int) -> None:
        """Measure on ``batch`` if ``step`` is due; the parameters, RNG and buffers stay as they were."""
        gradient_due = step % self.config.every == 0
        lookahead_due = self.config.lookahead and step % self.lookahead_period == 0
        if step == self.last_step or not (gradient_due or lookahead_due):
            return
        self.last_step = step
        model = self.engine.model
        rng = capture_rng()
        buffers = [b.detach().clone() for b in model.buffers()]
        try:
            self._record(batch, gradient_due, lookahead_due)
        finally:
            with torch.no_grad():
                for b, saved in zip(model.buffers(), buffers, strict=True):
                    b.copy_(saved)
            restore_rng(rng)

    def end_epoch(self, epoch: int) -> None:
        """Close the epoch's aggregates and rewrite ``relations.json`` (atomically)."""
        e = self.current
        ratios: dict[str, float | None] = {}
        for name in self.names:
            values = e.losses.get(name)
            base = self.initial.get(name)
            ratios[name] = float(np.mean(values)) / base if values and base else None
        self.history.append({
            "epoch": epoch,
            "measures": {m: e.measures[m].mean() for m in self.measures},
            "records": {m: e.measures[m].records for m in self.measures},
            "loss_ratio": ratios,
            "steps": e.steps,
            "lookahead_steps": e.lookahead_steps,
            "skipped": dict(e.skipped),
            "zero_loss": e.zero_loss,
        })
        self.current = self._new_epoch()
        self._write()

    # -------------------------------------------------------------------- measuring
    def _record(self, batch: Batch, gradient_due: bool, lookahead_due: bool) -> None:
        model, tasks = self.engine.model, self.engine.tasks
        x, y = move_batch(batch, self.device)
        state = capture_rng()  # every forward of this record draws the same dropout masks
        with torch.enable_grad():
            rep = z = None
            need_params = lookahead_due or self.space == "parameters"
            if model.supports_representation_grad:
                with torch.set_grad_enabled(need_params):
                    rep = model.encode(x)
                z = rep.detach().requires_grad_(True)
                outputs = model.decode(z, x)
            else:
                outputs = model(x)
            per_sample, counts = sample_losses(tasks, outputs, y)
        losses = per_sample.sum(dim=0)
        present = (counts > 0).tolist()
        index = [i for i, p in enumerate(present) if p]
        e = self.current
        e.steps += 1
        for i, p in enumerate(present):
            if not p:
                e.skipped[self.names[i]] = e.skipped.get(self.names[i], 0) + 1
        values = losses.detach().double().cpu().numpy()
        for i in index:
            e.losses.setdefault(self.names[i], []).append(float(values[i]))
            self.initial.setdefault(self.names[i], float(values[i]))
        if len(index) < 2:
            return  # no pair to relate in this batch
        rep_rows = None if z is None else self._representation_rows(losses, index, z)
        param_rows = self._parameter_rows(losses, index, rep, rep_rows) if need_params else None
        if gradient_due:
            rows = param_rows if self.space == "parameters" else rep_rows
            assert rows is not None
            cos = cosine_matrix(rows.flatten(1)).cpu().numpy()
            e.measures["grad_cosine"].add(index, cos)
            conflict = np.where(np.isfinite(cos), (cos < 0).astype(float), np.nan)
            e.measures["conflict_frequency"].add(index, conflict)
        if lookahead_due:
            assert param_rows is not None
            self._lookahead(x, y, losses.detach(), index, param_rows, state)

    def _representation_rows(self, losses: Tensor, index: list[int], z: Tensor) -> Tensor:
        """``[P, *z.shape]``: each present task's gradient of the shared representation.

        One batched backward (one-hot rows over the present tasks' losses): a call per task
        would traverse every task's head each time, through the stacked losses.
        """
        picked = losses[index]
        eye = torch.eye(len(index), dtype=picked.dtype, device=picked.device)
        (rows,) = torch.autograd.grad(
            picked, z, eye, retain_graph=True, is_grads_batched=True, allow_unused=True
        )
        return rows if rows is not None else z.new_zeros(len(index), *z.shape)

    def _parameter_rows(
        self, losses: Tensor, index: list[int], rep: Tensor | None, rep_rows: Tensor | None
    ) -> Tensor:
        """``[P, N]``: each present task's gradient of the shared parameters.

        Through the representation when the model has one (its rows go through the trunk in one
        batched backward), else one batched backward of the losses.
        """
        shared, p_count = self.shared, len(index)
        if rep is not None and rep_rows is not None:
            grads = torch.autograd.grad(
                rep, shared, rep_rows, is_grads_batched=True, allow_unused=True
            )
            return torch.cat(
                [(g if g is not None else p.new_zeros(p_count, *p.shape)).reshape(p_count, -1)
                 for g, p in zip(grads, shared, strict=True)],
                dim=1,
            )
        picked = losses[index]
        eye = torch.eye(p_count, dtype=picked.dtype, device=picked.device)
        grads = torch.autograd.grad(
            picked, shared, eye, retain_graph=True, is_grads_batched=True, allow_unused=True
        )
        return torch.cat(
            [(g if g is not None else p.new_zeros(p_count, *p.shape)).reshape(p_count, -1)
             for g, p in zip(grads, shared, strict=True)],
            dim=1,
        )

    @torch.no_grad()
    def _lookahead(
        self,
        x: Any,
        y: dict[str, Tensor],
        losses: Tensor,
        index: list[int],
        rows: Tensor,
        state: dict[str, Any],
    ) -> None:
        """Exact and first-order TAG affinities of the present tasks (``[P, P]``, row -> column)."""
        e = self.current
        lr = float(self.optimizer.param_groups[0]["lr"])
        base = losses[index]
        usable = (base > 0) & torch.isfinite(base)
        if not bool(usable.all()):
            e.zero_loss += int((~usable).sum())  # a task at zero loss has no relative drop
        exact = np.full((len(index), len(index)), np.nan)
        model, tasks = self.engine.model, self.engine.tasks
        for a in range(len(index)):
            params = {}
            offset = 0
            for name, p in zip(self.shared_names, self.shared, strict=True):
                n = p.numel()
                params[name] = p - lr * rows[a, offset : offset + n].view_as(p).to(p.dtype)
                offset += n
            restore_rng(state)
            outputs = torch.func.functional_call(model, params, (x,))
            after = sample_losses(tasks, outputs, y)[0].sum(dim=0)[index]
            exact[a] = (1.0 - after.double() / base.double()).cpu().numpy()
        first = first_order_affinity(rows, base, lr).cpu().numpy()
        keep = usable.cpu().numpy()
        exact[:, ~keep] = np.nan
        first[:, ~keep] = np.nan
        e.measures["lookahead_affinity"].add(index, exact)
        e.measures["lookahead_affinity_first_order"].add(index, first)
        e.lookahead_steps += 1

    # -------------------------------------------------------------------- the file
    def _new_epoch(self) -> _Epoch:
        t = len(self.names)
        return _Epoch({m: _Accumulator.empty(t) for m in self.measures})

    def _resume(self, start_epoch: int) -> None:
        """Keep the epochs before ``start_epoch`` of an interrupted run's file (exact resume)."""
        if not self.path.exists():
            return
        old = read_relations(self.path.parent)
        if old.tasks != self.names or sorted(old.measures) != sorted(self.measures):
            raise RelationsError(
                f"{self.path}: recorded for tasks {old.tasks} and measures {sorted(old.measures)}; "
                f"this run has {self.names} and {sorted(self.measures)} (resume with the same "
                "training.relations, or start over with --overwrite)"
            )
        raw = json.loads(self.path.read_text())
        per_epoch_counts = raw["counts"].get("per_epoch", [])
        for k, epoch in enumerate(old.epochs):
            if epoch >= start_epoch:
                break
            self.history.append({
                "epoch": epoch,
                "measures": {m: raw["measures"][m]["per_epoch"][k] for m in self.measures},
                "records": {m: raw["measures"][m]["records"][k] for m in self.measures},
                "loss_ratio": old.loss_ratio[k],
                **per_epoch_counts[k],
            })
        self.initial = dict(old.loss_initial)

    def _write(self) -> None:
        h = self.history
        space = {"grad_cosine": self.space, "conflict_frequency": self.space}
        measures = {
            m: {
                "description": MEASURES[m],
                "space": space.get(m, "parameters"),
                "directed": m in _DIRECTED,
                "per_epoch": [e["measures"][m] for e in h],
                "records": [e["records"][m] for e in h],
            }
            for m in self.measures
        }
        skipped = {n: sum(e["skipped"].get(n, 0) for e in h) for n in self.names}
        payload = {
            "version": FORMAT_VERSION,
            "tasks": self.names,
            "epochs": [e["epoch"] for e in h],
            "settings": {
                **self.config.model_dump(mode="json"),
                "lookahead_every": self.lookahead_period,
            },
            "measures": measures,
            "loss_ratio": {
                "description": _LOSS_RATIO,
                "initial": dict(self.initial),
                "per_epoch": [e["loss_ratio"] for e in h],
            },
            "counts": {
                "steps_recorded": sum(e["steps"] for e in h),
                "lookahead_steps": sum(e["lookahead_steps"] for e in h),
                "skipped_missing": skipped,
                "zero_loss": sum(e["zero_loss"] for e in h),
                "per_epoch": [{k: e[k] for k in _EPOCH_COUNTS} for e in h],
            },
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload, indent=1, allow_nan=False))
        os.replace(tmp, self.path)


# ---------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class Measure:
    """One recorded measure: ``per_epoch`` is ``[E, T, T]`` with NaN where there is no evidence."""

    name: str
    description: str
    space: str
    directed: bool
    per_epoch: np.ndarray
    records: list[int]


@dataclass(frozen=True)
class Relations:
    """The content of a run's ``relations.json`` (see the module docstring for the format)."""

    path: Path
    tasks: list[str]
    epochs: list[int]
    measures: dict[str, Measure]
    loss_ratio: list[dict[str, float | None]]
    loss_initial: dict[str, float]
    counts: dict[str, Any]
    settings: dict[str, Any]

    def affinity(
        self, measure: str, epochs: slice | None = None
    ) -> tuple[list[str], np.ndarray]:
        """``(tasks, [T, T])``: ``measure`` averaged over the epochs selected by ``epochs``.

        ``epochs`` slices the recorded epochs by position (``slice(-3, None)``: the last three);
        default all. Each epoch counts once; an epoch without evidence for a pair is left out of
        that pair's mean, and a pair without any evidence in the selection is NaN (its tasks were
        never labelled together in a recorded batch). Directed measures keep their orientation:
        entry ``[i, j]`` is ``i -> j``.
        """
        if measure not in self.measures:
            raise RelationsError(
                f"{self.path}: measure {measure!r} was not recorded; recorded: "
                f"{sorted(self.measures)}"
                + ("" if measure in MEASURES else f" (known measures: {sorted(MEASURES)})")
            )
        selected = self.measures[measure].per_epoch[epochs or slice(None)]
        if selected.shape[0] == 0:
            raise RelationsError(
                f"{self.path}: the epoch selection {epochs} keeps none of the {len(self.epochs)} "
                "recorded epochs"
            )
        finite = np.isfinite(selected)
        n = finite.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(finite, selected, 0.0).sum(axis=0) / n
        return list(self.tasks), np.where(n > 0, mean, np.nan)


def read_relations(run_dir: str | Path) -> Relations:
    """Read ``<run_dir>/relations.json`` (or that file itself), checking its version and shapes."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / FILE_NAME
    if not path.exists():
        raise RelationsError(
            f"{path} does not exist: relationship measures were not recorded for this run; "
            "record them with `training: {relations: {every: 10}}` in the config and "
            "`polytask train CONFIG`, or run `polytask analyze CONFIG.yaml`, which trains with "
            "them on"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RelationsError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(raw, Mapping) or raw.get("version") != FORMAT_VERSION:
        got = raw.get("version") if isinstance(raw, Mapping) else type(raw).__name__
        raise RelationsError(f"{path}: version {got!r}, this reader knows version {FORMAT_VERSION}")
    for key in ("tasks", "epochs", "measures", "loss_ratio", "counts"):
        if key not in raw:
            raise RelationsError(f"{path}: key {key!r} is missing")
    tasks = list(raw["tasks"])
    t, e = len(tasks), len(raw["epochs"])
    measures = {}
    for name, m in raw["measures"].items():
        per_epoch = np.array(
            [[[math.nan if v is None else float(v) for v in row] for row in mat]
             for mat in m["per_epoch"]],
            dtype=float,
        ).reshape(-1, t, t) if m["per_epoch"] else np.zeros((0, t, t))
        if per_epoch.shape != (e, t, t):
            raise RelationsError(
                f"{path}: measures.{name}.per_epoch has shape {per_epoch.shape}, expected "
                f"({e}, {t}, {t}) for {e} epochs and {t} tasks"
            )
        measures[name] = Measure(
            name=name, description=m.get("description", ""), space=m.get("space", ""),
            directed=bool(m.get("directed", False)), per_epoch=per_epoch,
            records=list(m.get("records", [])),
        )
    ratio = raw["loss_ratio"]
    return Relations(
        path=path, tasks=tasks, epochs=list(raw["epochs"]), measures=measures,
        loss_ratio=list(ratio.get("per_epoch", [])), loss_initial=dict(ratio.get("initial", {})),
        counts=dict(raw["counts"]), settings=dict(raw.get("settings", {})),
    )
