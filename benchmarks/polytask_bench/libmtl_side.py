"""Driving LibMTL 1.1.5's weighting classes on the CPU, on a polytask model and batch.

LibMTL's ``Trainer`` hard-codes ``torch.device('cuda:0')``, so it cannot run on a CPU-only machine.
This module builds what the ``Trainer`` builds (its ``HPS`` architecture mixed with one weighting
class, ``init_param()``, one optimizer over all parameters) with ``device=cpu``, and runs the
``Trainer``'s per-step sequence: forward, one loss per task written into a ``[T]`` tensor,
``optimizer.zero_grad()``, the weighting's ``backward(losses, **weight_args)`` (LibMTL's own
per-step logic, untouched), ``optimizer.step()``.

The trunk and the heads are deep copies of a polytask :class:`~polytask.models.base.HardSharing`
model built with the same seed, so both libraries train the identical network on the identical
batch. Left out of the LibMTL step (in its favour): the ``Trainer``'s per-step bookkeeping
(``loss.item()`` per task and metric updates).

Two uses: :class:`LibMTLRunner` times single steps for the overhead benchmark
(:mod:`polytask_bench.overhead`), and :func:`fit_libmtl` trains a whole run (epochs, validation,
early stopping, test) for the ``libmtl-<method>`` cells of a benchmark suite, side by side with
polytask's cell of that method. Only polytask's public API is used: the comparison is with what a
user of either library can write.

One compatibility shim, and only one: LibMTL was written for torch 1.x, where ``zero_grad()`` left
zero-filled gradients; since torch 2.0 it sets them to ``None`` and LibMTL's ``_reset_grad``
(``param.grad.data = ...``) then fails. ``zero_grad_share_params`` is therefore called with
``set_to_none=False``, the behaviour LibMTL was written against.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import importlib.util
import json
import math
import sys
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "LIBMTL_METHODS",
    "LibMTLFit",
    "LibMTLRunner",
    "build_libmtl_model",
    "fit_libmtl",
    "libmtl_version",
]

#: polytask name -> (LibMTL weighting class, its default ``weight_args`` from LibMTL.config).
LIBMTL_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "equal": ("EW", {}),
    "uncertainty": ("UW", {}),
    "dwa": ("DWA", {"T": 2.0}),
    "gls": ("GLS", {}),
    "rlw": ("RLW", {"dist": "Normal"}),
    "gradnorm": ("GradNorm", {"alpha": 1.5}),
    "mgda": ("MGDA", {"mgda_gn": "none"}),
    "pcgrad": ("PCGrad", {}),
    "gradvac": ("GradVac", {"beta": 0.5}),
    "graddrop": ("GradDrop", {"leak": 0.0}),
    "cagrad": ("CAGrad", {"calpha": 0.5, "rescale": 1}),
    # LibMTL's IMTL is the hybrid (IMTL-L loss scales + IMTL-G closed form): the gradient part is
    # polytask's imtl_g.
    "imtl_g": ("IMTL", {}),
}


def _import_libmtl() -> tuple[Any, Any]:
    """LibMTL's ``weighting`` and ``architecture`` packages, without LibMTL's top-level import.

    LibMTL 1.1.5's ``__init__`` imports its ResNet models, which import
    ``torchvision.models.utils`` (removed from torchvision long ago); the weighting and
    architecture packages need only torch, numpy and scipy. When the full import fails, the
    ``LibMTL`` package is registered bare (its ``__init__`` not run) and the two packages are
    imported from it, unchanged.
    """
    try:
        from LibMTL import architecture, weighting

        return weighting, architecture
    except ImportError:
        pass
    spec = importlib.util.find_spec("LibMTL")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("LibMTL is not installed (pip install --no-deps libmtl==1.1.5)")
    package = types.ModuleType("LibMTL")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["LibMTL"] = package
    weighting = importlib.import_module("LibMTL.weighting")
    architecture = importlib.import_module("LibMTL.architecture")
    return weighting, architecture


def libmtl_version() -> str | None:
    """The installed LibMTL version, or ``None`` when its weighting classes cannot be imported."""
    try:
        _import_libmtl()
    except Exception:
        return None
    try:
        return importlib.metadata.version("LibMTL")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _weighting_class(method: str) -> tuple[Any, dict[str, Any]]:
    if method not in LIBMTL_METHODS:
        raise ValueError(
            f"LibMTL has no counterpart of {method!r} here; methods: {', '.join(LIBMTL_METHODS)}"
        )
    lw, _ = _import_libmtl()
    name, weight_args = LIBMTL_METHODS[method]
    return getattr(lw, name), dict(weight_args)


def build_libmtl_model(
    method: str,
    encoder: nn.Module,
    heads: nn.ModuleDict,
    rep_grad: bool,
    device: torch.device,
) -> nn.Module:
    """What LibMTL's ``Trainer._prepare_model`` assembles: ``HPS`` mixed with one weighting class.

    ``encoder`` and ``heads`` are used as given (pass copies); LibMTL's ``init_param()`` runs.
    """
    _, la = _import_libmtl()
    weighting, _ = _weighting_class(method)
    task_names = list(heads.keys())

    class _Model(la.HPS, weighting):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__(
                task_name=task_names,
                encoder_class=lambda: encoder,
                decoders=heads,
                rep_grad=rep_grad,
                multi_input=False,
                device=device,
            )
            self.init_param()

        def zero_grad_share_params(self) -> None:  # torch-1.x zero_grad (see module doc)
            self.encoder.zero_grad(set_to_none=False)

    return _Model().to(device)


class _Encoder(nn.Module):
    """The shared part of a polytask :class:`HardSharing` (trunk, flattening, shared head map)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.trunk = copy.deepcopy(model.trunk)
        shared = getattr(model, "shared_head", None)
        self.shared_head = copy.deepcopy(shared) if shared is not None else None

    def forward(self, x: Tensor) -> Tensor:
        rep = self.trunk(x)
        rep = rep.reshape(rep.shape[0], -1)
        return rep if self.shared_head is None else self.shared_head(rep)


@dataclass
class LibMTLFit:
    """What a LibMTL training returns, in the shape of :class:`polytask.training.FitResult`."""

    val: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]]
    delta_m: float | None
    best_epoch: int
    epochs_run: int
    epoch_times: list[float]
    selection: str
    num_parameters: int


def fit_libmtl(
    model: nn.Module,
    splits: Any,
    method: str,
    settings: Any,
    run_dir: Path,
    *,
    rep_grad: bool = False,
    stl_val: Mapping[str, Mapping[str, float]] | None = None,
    stl_test: Mapping[str, Mapping[str, float]] | None = None,
) -> LibMTLFit:
    """Train LibMTL's ``HPS`` + weighting ``method`` as :func:`polytask.training.fit` trains.

    ``model`` is a polytask :class:`HardSharing` built with the cell's seed: LibMTL gets deep
    copies of its trunk and heads, so both libraries start from the same weights. Identical to
    the polytask cell: the batches (same generator seeds, same order), the per-task losses
    (polytask's masked means, as a LibMTL user with missing labels has to write them), the
    optimizer, early stopping, the validation rule that selects the checkpoint, and the metrics.
    LibMTL's own: the model assembly, ``init_param()``, the loss-history buffer its Trainer keeps
    (``train_loss_buffer``, ``epoch``) and ``model.backward(losses, **weight_args)`` per step.
    Left out of LibMTL's epoch, in its favour: its Trainer's per-batch metric updates and its test
    pass after every epoch. An epoch's time is, as for polytask, training steps + validation.
    """
    from polytask.data.base import iterate_batches
    from polytask.evaluation.metrics import EvaluationError, delta_m, evaluate
    from polytask.training.loop import (
        NonFiniteLossError,
        TrainingError,
        build_optimizer,
        epoch_generator,
        resolve_device,
        resolve_selection_rule,
        seed_everything,
        selection_score,
    )

    s = settings
    if s.scheduler != "none" or s.grad_clip is not None or s.amp:
        raise TrainingError(
            "the LibMTL side-by-side trains without scheduler, gradient clipping or AMP "
            f"(got scheduler={s.scheduler!r}, grad_clip={s.grad_clip}, amp={s.amp})"
        )
    if getattr(model, "head_kind", None) is None or not hasattr(model, "trunk"):
        raise TrainingError("the LibMTL side-by-side needs a hard_sharing model (LibMTL's HPS)")
    tasks = splits.tasks
    rule = resolve_selection_rule(s.selection, stl_val)
    device = resolve_device(s.device)
    seed_everything(s.seed)
    net = build_libmtl_model(method, _Encoder(model), copy.deepcopy(model.heads), rep_grad, device)
    _, weight_args = _weighting_class(method)
    # LibMTL's Trainer: one optimizer over model.parameters(), its weighting's parameters included
    optimizer = build_optimizer(list(net.parameters()), s)
    t = len(tasks)
    net.train_loss_buffer = np.zeros((t, s.epochs))
    best_score, best_epoch, bad, best_state = -math.inf, -1, 0, None
    times: list[float] = []
    step, epoch = 0, -1
    for epoch in range(s.epochs):
        net.epoch = epoch
        net.train()
        start = time.perf_counter()
        generator = epoch_generator(s.seed, epoch)  # fit's batch order
        loss_sum, batches = np.zeros(t), 0
        for x, y in iterate_batches(splits.train, s.batch_size, shuffle=True, generator=generator):
            x, y = x.to(device), {k: v.to(device) for k, v in y.items()}
            preds = net(x)
            losses = torch.zeros(t, device=device)
            for tn, task in enumerate(tasks):
                losses[tn] = task.loss_and_count(preds[task.name], y[task.name])[0]
            if not bool(torch.isfinite(losses).all()):
                bad_task = tasks[int((~torch.isfinite(losses)).nonzero()[0])].name
                raise NonFiniteLossError(
                    f"LibMTL {method}: task {bad_task!r} has a non-finite loss at step {step} "
                    f"(epoch {epoch})"
                )
            optimizer.zero_grad()
            net.backward(losses, **weight_args)
            optimizer.step()
            loss_sum += losses.detach().cpu().numpy()
            batches += 1
            step += 1
        net.train_loss_buffer[:, epoch] = loss_sum / max(batches, 1)
        val, _ = evaluate(net, tasks, splits.val, s.eval_batch_size, device)
        times.append(time.perf_counter() - start)
        score = selection_score(rule, val, tasks, stl_val)
        if score > best_score:
            best_score, best_epoch, bad = score, epoch, 0
            best_state = copy.deepcopy(net.state_dict())
        else:
            bad += 1
        if s.patience is not None and bad >= s.patience:
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    val, _ = evaluate(net, tasks, splits.val, s.eval_batch_size, device)
    test, _ = evaluate(net, tasks, splits.test, s.eval_batch_size, device)
    dm = None
    if stl_test is not None:
        try:  # as fit: no Δm when a task's metric is missing from either side
            dm = delta_m(test, stl_test, tasks)
        except EvaluationError:
            dm = None
    dm = None if dm is not None and math.isnan(dm) else dm
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(
        {"library": "LibMTL", "version": libmtl_version(), "method": LIBMTL_METHODS[method][0],
         "weight_args": weight_args, "rep_grad": rep_grad, "best_epoch": best_epoch,
         "epoch_times_s": times, "val": val, "test": test, "delta_m": dm},
        indent=2, default=float,
    ))
    return LibMTLFit(
        val=val, test=test, delta_m=dm, best_epoch=best_epoch, epochs_run=epoch + 1,
        epoch_times=times, selection=f"val {rule}",
        num_parameters=sum(p.numel() for p in net.parameters()),
    )


class LibMTLRunner:
    """One LibMTL (architecture HPS + weighting) model, optimizer and batch; ``step()`` trains."""

    def __init__(
        self,
        method: str,
        rep_grad: bool,
        trunk: nn.Module,
        heads: nn.ModuleDict,
        x: Tensor,
        targets: dict[str, Tensor],
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        lr: float,
        device: torch.device | str = "cpu",
    ) -> None:
        _, self.weight_args = _weighting_class(method)
        self.task_names = list(heads.keys())
        self.device = torch.device(device)  # x and targets are expected there already
        self.model = build_libmtl_model(
            method, copy.deepcopy(trunk), copy.deepcopy(heads), rep_grad, self.device
        )
        t = len(self.task_names)
        # Past the methods' first epochs (GradNorm needs epoch >= 1, DWA epoch > 1), with a loss
        # history for them to read, as the Trainer keeps it.
        self.model.epoch = 2
        self.model.train_loss_buffer = np.ones((t, 3))
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr)
        self.x, self.targets, self.loss_fn = x, targets, loss_fn

    def step(self, index: int) -> None:
        preds = self.model(self.x)
        losses = torch.zeros(len(self.task_names), device=self.device)  # as LibMTL's Trainer
        for tn, task in enumerate(self.task_names):
            losses[tn] = self.loss_fn(preds[task], self.targets[task])
        self.optimizer.zero_grad()
        self.model.backward(losses, **self.weight_args)
        self.optimizer.step()
