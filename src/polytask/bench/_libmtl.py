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
import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["LIBMTL_METHODS", "LibMTLRunner", "libmtl_version"]

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
    ) -> None:
        lw, la = _import_libmtl()
        HPS = la.HPS
        name, self.weight_args = LIBMTL_METHODS[method]
        weighting = getattr(lw, name)
        self.task_names = list(heads.keys())
        trunk_copy = copy.deepcopy(trunk)
        device = torch.device("cpu")

        class _Model(HPS, weighting):  # what LibMTL's Trainer._prepare_model assembles
            def __init__(self) -> None:
                super().__init__(
                    task_name=list(heads.keys()),
                    encoder_class=lambda: trunk_copy,
                    decoders=copy.deepcopy(heads),
                    rep_grad=rep_grad,
                    multi_input=False,
                    device=device,
                )
                self.init_param()

            def zero_grad_share_params(self) -> None:  # torch-1.x zero_grad (see module doc)
                self.encoder.zero_grad(set_to_none=False)

        self.model = _Model()
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
        losses = torch.zeros(len(self.task_names))
        for tn, task in enumerate(self.task_names):
            losses[tn] = self.loss_fn(preds[task], self.targets[task])
        self.optimizer.zero_grad()
        self.model.backward(losses, **self.weight_args)
        self.optimizer.step()
