"""The training loop: plain PyTorch, readable top to bottom, and blind to the balancing method.

Each batch goes through :func:`~polytask.training.step.train_step` (forward under autocast,
masked losses, the gradient strategy the balancer's needs call for, the DDP reduction, clipping,
the optimizer step, the balancer's extra forward if it asked for one). Each epoch evaluates on
validation, keeps the best model by the selection criterion, and writes a checkpoint. The test
split is evaluated once, at the end, with the selected model.
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from polytask.balancing.base import Balancer
from polytask.balancing.engine import GradientEngine, StepOutput
from polytask.collectives import Communicator
from polytask.data.base import Batch, Splits, TaskData
from polytask.evaluation.metrics import EvaluationError, delta_m, evaluate, mean_primary
from polytask.models.base import MultiTaskModel
from polytask.tasks import Task
from polytask.training.checkpoint import (
    capture_rng,
    load_checkpoint,
    load_model_state,
    restore_rng,
    save_checkpoint,
)
from polytask.training.logging import RunLogger
from polytask.training.precision import Precision
from polytask.training.settings import TrainSettings
from polytask.training.step import train_step

if TYPE_CHECKING:  # divergence.py imports this module
    from polytask.training.divergence import DivergenceMonitor

__all__ = [
    "FitResult",
    "NonFiniteLossError",
    "TrainingError",
    "build_optimizer",
    "check_finite_losses",
    "fit",
    "json_safe",
    "resolve_device",
    "resolve_selection_rule",
    "selection_score",
    "training_optimizer",
]

Metrics = dict[str, dict[str, float]]


class TrainingError(RuntimeError):
    pass


class NonFiniteLossError(TrainingError):
    """A task's loss became NaN or inf; the message names the task, step and last checkpoint."""


class BatchSource(Protocol):
    """Anything that yields training batches for an epoch (several-datasets mode implements it)."""

    def batches(
        self, batch_size: int, generator: torch.Generator, epoch: int, rank: int, world_size: int
    ) -> Iterator[Batch]: ...


@dataclass
class FitResult:
    run_dir: Path
    best_epoch: int
    val: Metrics
    test: Metrics
    delta_m: float | None
    selection: str
    time_s: float
    epochs_run: int
    warnings: dict[str, int] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that orders epoch ``epoch``'s training batches of a run seeded ``seed``.

    One formula for every trainer that must draw fit's batches (the Lightning adapter's data
    module reads it too), so that their batch order cannot drift apart.
    """
    return torch.Generator().manual_seed(seed * 7919 + epoch)


def training_optimizer(
    model: MultiTaskModel, balancer: Balancer, s: TrainSettings
) -> torch.optim.Optimizer:
    """The optimizer :func:`fit` trains with: the model's trainable parameters, and the balancer's
    learnable task weights (if any) in a group of their own without weight decay.

    Public so that every trainer that must update as ``fit`` does (the Lightning adapter, the
    overhead benchmark's timed step) builds the same parameter groups instead of a copy of them.
    """
    groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    balancer_params = [p for p in balancer.parameters() if p.requires_grad]
    if balancer_params:  # learnable task weights: no weight decay pulling them to zero
        groups.append({"params": balancer_params, "weight_decay": 0.0})
    return build_optimizer(groups, s)


def build_optimizer(params: Any, s: TrainSettings) -> torch.optim.Optimizer:
    """The optimizer ``s.optimizer`` over ``params`` (tensors or parameter groups)."""
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)


def _scheduler(optimizer: torch.optim.Optimizer, s: TrainSettings) -> Any:
    if s.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=s.epochs)
    if s.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=s.step_size, gamma=s.gamma)
    if s.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=s.gamma, patience=max(1, (s.patience or 4) // 2)
        )
    return None


def selection_score(
    rule: str, val: Metrics, tasks: list[Task], stl_val: Mapping[str, Mapping[str, float]] | None
) -> float:
    """The validation score that selects a checkpoint under ``rule``; higher is better, whatever
    the rule (``rule`` as returned by :func:`resolve_selection_rule`).

    Public so that a trainer compared with ``fit`` (e.g. LibMTL driven on the same batches)
    selects its epoch by the very same rule.
    """
    if rule == "delta_m":
        assert stl_val is not None
        return -delta_m(val, stl_val, tasks)
    if rule == "mean_primary":
        return mean_primary(val, tasks)
    if rule == "val_loss":
        return -sum(val[t.name]["loss"] for t in tasks if math.isfinite(val[t.name]["loss"]))
    task_name, _, metric = rule.rpartition("/")  # a task name may hold "/", a metric never
    task = next((t for t in tasks if t.name == task_name), None)
    if task is None or metric not in val[task_name]:
        raise TrainingError(f"selection rule {rule!r} names no task/metric of this run")
    higher = task.metric_higher_is_better(metric)
    value = val[task_name][metric]
    return value if higher else -value


def resolve_selection_rule(rule: str, stl_val: Mapping[str, Any] | None) -> str:
    """``training.selection`` made concrete: ``auto`` is ``delta_m`` when single-task baselines'
    validation metrics are given, else ``mean_primary``; ``delta_m`` without them is an error."""
    if rule == "auto":
        return "delta_m" if stl_val is not None else "mean_primary"
    if rule == "delta_m" and stl_val is None:
        raise TrainingError("selection 'delta_m' needs single-task baselines (stl_val)")
    return rule


def _metric_rows(split: str, metrics: Metrics) -> list[tuple[str, str, str, float]]:
    return [(split, t, m, v) for t, scores in metrics.items() for m, v in scores.items()]


def fit(
    model: MultiTaskModel,
    splits: Splits,
    balancer: Balancer,
    settings: TrainSettings,
    run_dir: str | Path,
    *,
    train_source: BatchSource | None = None,
    stl_val: Mapping[str, Mapping[str, float]] | None = None,
    stl_test: Mapping[str, Mapping[str, float]] | None = None,
    resume: bool = False,
    communicator: Communicator | None = None,
    stop_after_epoch: int | None = None,
    epoch_end: Callable[[int, float], None] | None = None,
) -> FitResult:
    """Train ``model`` on ``splits.train``, select on ``splits.val``, report on ``splits.test``.

    ``stop_after_epoch`` ends the run early as if interrupted (used to test exact resume).
    ``epoch_end(epoch, validation selection score)`` is called after each epoch is logged; an
    exception it raises ends the run (a hyper-parameter search's pruner stops a poor trial so).
    """
    if not isinstance(splits, Splits):
        raise TypeError(
            f"fit takes Splits (train / val / test), got {type(splits).__name__}; cut data with "
            "polytask.data.random_split(data), or train on arrays, a DataFrame or a Dataset with "
            "polytask.MultiTaskLearner().fit(X, y)"
        )
    run_dir = Path(run_dir)
    tasks, s = splits.tasks, settings
    comm = communicator or Communicator()
    rule = resolve_selection_rule(s.selection, stl_val)
    device = resolve_device(s.device)
    precision = Precision.of(s.amp, device)  # fp16 off CUDA is refused before any work
    seed_everything(s.seed)
    model.to(device)
    balancer.to(device)
    optimizer = training_optimizer(model, balancer, s)
    scheduler = _scheduler(optimizer, s)
    engine = GradientEngine(
        model, tasks, balancer, mode=s.engine, chunk_size=s.chunk_size, communicator=comm,
        dist_mode=s.dist_mode, seed=s.seed,
    )
    last_path, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    start_epoch, step = 0, 0
    best = {"score": -math.inf, "epoch": -1, "bad_epochs": 0}
    from polytask.training.divergence import DivergenceMonitor  # it imports this module

    divergence = DivergenceMonitor.for_model(model)  # the norm before any training
    if resume and last_path.exists():
        state = load_checkpoint(last_path, task_names=model.task_names, map_location=device)
        load_model_state(model, state, last_path)
        optimizer.load_state_dict(state["optimizer"])
        balancer.load_state_dict(state["balancer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        precision.load_state_dict(state.get("scaler"))
        restore_rng(state["rng"])
        if state.get("divergence") is not None:  # checkpoints before it was saved: a fresh watch
            divergence.load_state_dict(state["divergence"])
        start_epoch, step, best = state["epoch"] + 1, state["step"], dict(state["selection"])
    is_main = comm.rank == 0
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        tasks_json = [t.to_config() for t in tasks]
        (run_dir / "tasks.json").write_text(json.dumps(json_safe(tasks_json), indent=2))
    logger = RunLogger(
        run_dir, model.task_names, keep_through_epoch=start_epoch - 1,
        tensorboard=s.tensorboard and is_main,
    )
    from polytask.analysis.relations import record_relations  # it imports the training package

    # training.relations: task relationship measures on the batches (a no-op when off)
    relations = record_relations(
        engine, optimizer, s.relations, run_dir, device=device, start_epoch=start_epoch,
        is_main=is_main,
    )
    train_data: TaskData = splits.train
    started = time.perf_counter()
    bar = tqdm(range(start_epoch, s.epochs), disable=not (s.progress and is_main), desc="epochs")
    epoch = start_epoch - 1
    for epoch in bar:
        model.train()
        epoch_start = time.perf_counter()
        generator = epoch_generator(s.seed, epoch)
        if train_source is not None:
            batches = train_source.batches(s.batch_size, generator, epoch, comm.rank, comm.world_size)
        else:
            batches = train_data.batches(
                s.batch_size, shuffle=True, generator=generator,
                rank=comm.rank, world_size=comm.world_size,
            )
        # on the device: read back once per epoch, not once per step
        loss_sum = torch.zeros(len(tasks), dtype=torch.float64, device=device)
        loss_n = torch.zeros(len(tasks), dtype=torch.float64, device=device)
        for batch in batches:
            relations.observe(batch, step, epoch)  # before the update: same batch, same weights
            check = partial(_check_output, names=model.task_names, step=step, epoch=epoch, last=last_path)
            out = train_step(
                engine, optimizer, batch, step, epoch, device=device, precision=precision,
                grad_clip=s.grad_clip, check=check,
            )  # fmt: skip
            if out is None:
                logger.count("batch_without_labels")
                continue
            if out.skipped:
                _count_skipped_update(logger, step)
            logger.step(step, epoch, out.weights.cpu(), model.gate_weights())
            loss_sum += torch.where(out.present, out.losses, 0).double()
            loss_n += out.present.double()
            step += 1
        val, val_warnings = evaluate(model, tasks, splits.val, s.eval_batch_size, device)
        for key, n in {**val_warnings, **_drain(balancer)}.items():
            logger.count(key, n)
        score = selection_score(rule, val, tasks, stl_val)
        if scheduler is not None:
            scheduler.step(score) if s.scheduler == "plateau" else scheduler.step()
        train_loss = (loss_sum / loss_n.clamp(min=1)).tolist()
        divergence.update(epoch, step, model.task_names, train_loss, model)
        rows = [("train", t, "loss", v) for t, v in zip(model.task_names, train_loss, strict=True)]
        rows += [("train", "", "loss", float(sum(train_loss)))]
        rows += _metric_rows("val", val)
        rows += [("val", "", "selection_score", score), ("train", "", "lr", _lr(optimizer))]
        rows += [("train", "", "epoch_time_s", time.perf_counter() - epoch_start)]
        if stl_val is not None:
            rows.append(("val", "", "delta_m", _safe_delta_m(val, stl_val, tasks)))
        rows += [("train", "", f"warning/{k}", float(v)) for k, v in logger.warnings.items()]
        if score > best["score"]:
            best = {"score": score, "epoch": epoch, "bad_epochs": 0}
            if is_main:
                save_checkpoint(
                    best_path,
                    _state(model, optimizer, scheduler, balancer, epoch, step, best, precision,
                           divergence),
                )
        else:
            best["bad_epochs"] += 1
        relations.end_epoch(epoch)
        if is_main:
            logger.epoch(epoch, rows)
            if (epoch + 1) % s.checkpoint_every == 0 or epoch == s.epochs - 1:
                save_checkpoint(
                    last_path,
                    _state(model, optimizer, scheduler, balancer, epoch, step, best, precision,
                           divergence),
                )
        bar.set_postfix(loss=f"{sum(train_loss):.3f}", score=f"{score:.4f}")
        if epoch_end is not None:
            epoch_end(epoch, score)
        if s.patience is not None and best["bad_epochs"] >= s.patience:
            break
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            logger.close()
            raise KeyboardInterrupt(f"stopped after epoch {epoch} as requested")
    return _finish(
        model, splits, s, run_dir, best_path, best, rule, stl_test, logger, started, epoch,
        device, is_main,
    )


def _finish(
    model: MultiTaskModel,
    splits: Splits,
    s: TrainSettings,
    run_dir: Path,
    best_path: Path,
    best: dict[str, Any],
    rule: str,
    stl_test: Mapping[str, Mapping[str, float]] | None,
    logger: RunLogger,
    started: float,
    last_epoch: int,
    device: torch.device,
    is_main: bool,
) -> FitResult:
    """Reload the selected model, evaluate it once on validation and test, write results.json."""
    tasks = splits.tasks
    if best_path.exists():
        state = load_checkpoint(best_path, task_names=model.task_names, map_location=device)
        load_model_state(model, state, best_path)
    val, _ = evaluate(model, tasks, splits.val, s.eval_batch_size, device)
    test, test_warnings = evaluate(model, tasks, splits.test, s.eval_batch_size, device)
    for key, n in test_warnings.items():
        logger.count(key, n)
    dm = _safe_delta_m(test, stl_test, tasks) if stl_test is not None else None
    dm = None if dm is not None and math.isnan(dm) else dm
    rows = _metric_rows("test", test) + ([("test", "", "delta_m", dm)] if dm is not None else [])
    if is_main:
        with (run_dir / "metrics.csv").open("a") as fh:
            for split, task, metric, value in rows:
                fh.write(f"{best['epoch']},{split},{task},{metric},{value:.8g}\n")
    elapsed = time.perf_counter() - started
    result = FitResult(
        run_dir=run_dir, best_epoch=int(best["epoch"]), val=val, test=test, delta_m=dm,
        selection=f"val {rule}", time_s=elapsed, epochs_run=last_epoch + 1,
        warnings=dict(logger.warnings),
    )
    results = {
        "name": run_dir.name,
        "balancer": s.extra.get("balancer", ""),
        "architecture": s.extra.get("architecture", ""),
        "tasks": [
            {"name": t.name, "kind": t.kind.value, "primary_metric": t.primary,
             "higher_is_better": t.primary_higher_is_better}
            for t in tasks
        ],
        "seed": s.seed,
        "best_epoch": result.best_epoch,
        "selection": result.selection,
        "val": val,
        "test": test,
        "delta_m": dm,
        "stl_reference": stl_test,
        "time_s": elapsed,
        "epochs": result.epochs_run,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "warnings": result.warnings,
    }
    if is_main:
        (run_dir / "results.json").write_text(json.dumps(json_safe(results), indent=2))
    logger.close()
    return result


def _state(
    model: MultiTaskModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    balancer: Balancer,
    epoch: int,
    step: int,
    best: dict[str, Any],
    precision: Precision | None = None,
    divergence: DivergenceMonitor | None = None,
) -> dict[str, Any]:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "balancer": balancer.state_dict(),
        "epoch": epoch,
        "step": step,
        "selection": dict(best),
        "task_names": model.task_names,
        "rng": capture_rng(),
        # the divergence watch's references (initial norm, lowest losses): a resumed run judges
        # divergence against the same references as an uninterrupted one
        "divergence": None if divergence is None else divergence.state_dict(),
    }
    scaler = None if precision is None else precision.state_dict()
    if scaler is not None:  # fp16: the loss scale and its growth tracker, for an exact resume
        state["scaler"] = scaler
    return state


def _count_skipped_update(logger: RunLogger, step: int) -> None:
    """fp16: the scaler skipped an update (inf/NaN gradients); counted, announced once per run."""
    key = "amp/skipped_updates"
    if key not in logger.warnings:
        warnings.warn(
            f"amp fp16: the update of step {step} was skipped by the grad scaler (inf/NaN "
            "gradients; the loss scale was lowered); later skips are counted as "
            f"warning/{key} in the run's metrics",
            RuntimeWarning,
            stacklevel=3,
        )
    logger.count(key)


def check_finite_losses(
    losses: torch.Tensor, present: torch.Tensor, names: list[str], step: int, epoch: int, last: Path
) -> None:
    """Raise :class:`NonFiniteLossError` naming the task, step, epoch and last checkpoint when a
    present task's loss is NaN or inf: the loop's check before an update is applied (public so
    that a step timed outside ``fit`` does the same work)."""
    bad = present & ~torch.isfinite(losses)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        kept = f"last good checkpoint: {last}" if last.exists() else "no checkpoint written yet"
        raise NonFiniteLossError(
            f"loss of task {names[i]!r} is {float(losses[i])} at step {step} (epoch {epoch}); "
            f"training stopped, {kept}"
        )


def _check_output(out: StepOutput, *, names: list[str], step: int, epoch: int, last: Path) -> None:
    """train_step's check: a non-finite loss stops the run before its update is applied."""
    check_finite_losses(out.losses, out.present, names, step, epoch, last)


def _drain(balancer: Balancer) -> dict[str, int]:
    counts = {f"balancer/{k}": v for k, v in balancer.warning_counts.items()}
    balancer.warning_counts.clear()
    return counts


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def _safe_delta_m(
    metrics: Metrics, baseline: Mapping[str, Mapping[str, float]] | None, tasks: list[Task]
) -> float:
    if baseline is None:
        return math.nan
    try:
        return delta_m(metrics, baseline, tasks)
    except EvaluationError:
        return math.nan


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by ``None`` (mapping keys made strings), so that
    ``json.dumps`` writes standard JSON: results files are read by other tools than Python's."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj
