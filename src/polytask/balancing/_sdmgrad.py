"""SDMGrad: stochastic direction-oriented multi-objective gradient (Xiao, Ban & Ji 2023, NeurIPS).

SDMGrad looks for the update closest to a *target* direction (here the mean gradient, weights
``w̃ = 1/m``) among the directions that improve all tasks, through the regularised min-norm
problem ``min_{w ∈ Δ} ½ ||g_w||² + λ g_wᵀ g_{w̃}``. torchjd's ``SDMGradWeighting`` solves it with
``n_iter`` steps of projected SGD with momentum on the simplex, warm started from the previous
``w``, after scaling the matrix by the mean gradient norm; the update weights are
``(w + λ w̃) / (1 + λ)`` (they sum to 1). Defaults follow torchjd/LibMTL: ``λ = 0.3`` (the authors'
experiments), ``lr = 10``, ``momentum = 0.5``, ``n_iter = 20``.

Single batch. The paper's stochastic algorithm estimates ``J Jᵀ`` from two independent
mini-batches (``J_1 J_2ᵀ``) to be unbiased; like LibMTL we use the current batch for both, so the
matrix is the Gramian and the cheap Gramian mode works.

State. torchjd keeps the warm-start ``w`` for the rows it is given and resets it when their number
changes (a batch with a missing task). We keep the full simplex vector as a buffer (checkpointed),
hand torchjd the renormalised present part before each call, and write its result back scaled to
the mass the present tasks had. When that mass is 0 (the simplex steps gave it all to tasks absent
from this batch) the warm start restarts uniform and ``sdmgrad/weights_restarted`` is counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchjd.aggregation import SDMGradWeighting

from polytask.balancing._common import (
    GramianWeightingBalancer,
    check_int,
    check_number,
    warn_and_count,
)
from polytask.balancing.base import BalancerError, StepInfo
from polytask.balancing.registry import register_balancer

__all__ = ["SDMGrad"]


@register_balancer("sdmgrad")
class SDMGrad(GramianWeightingBalancer):
    """Min-norm weights regularised towards the mean direction (projected SGD on the simplex)."""

    reference = (
        "Xiao, Ban & Ji 2023, Direction-oriented Multi-objective Learning: Simple and Provable "
        "Stochastic Algorithms, NeurIPS"
    )
    scale_invariant = False  # torchjd rescales by the mean gradient norm itself
    solver_description = "the projected-SGD simplex solve"

    def __init__(
        self,
        task_names: Sequence[str],
        lambda_: float = 0.3,
        lr: float = 10.0,
        momentum: float = 0.5,
        n_iter: int = 20,
    ) -> None:
        super().__init__(task_names)
        self.lambda_ = check_number("sdmgrad", "lambda_", lambda_, low=0.0)
        self.lr = check_number("sdmgrad", "lr", lr, low=0.0, low_inclusive=False)
        self.momentum = check_number(
            "sdmgrad", "momentum", momentum, low=0.0, high=1.0, high_inclusive=False
        )
        self.n_iter = check_int("sdmgrad", "n_iter", n_iter, low=1)
        weighting = SDMGradWeighting(
            lr=self.lr, momentum=self.momentum, n_iter=self.n_iter, lambda_=self.lambda_
        )
        if not (hasattr(weighting, "_w") and hasattr(weighting, "_state_key")):
            raise BalancerError(
                "sdmgrad: this torchjd version stores SDMGrad's state differently; polytask "
                "supports torchjd 0.18"
            )
        self._solver = {"sdmgrad": weighting}
        t = self.num_tasks
        self.register_buffer("simplex", torch.full((t,), 1.0 / t, dtype=torch.float64))

    def weigh(self, gramian: Tensor, step: StepInfo) -> Tensor:
        weighting = self._solver["sdmgrad"]
        index = step.present_index.to(self.simplex.device)
        sub = self.simplex[index]
        mass = float(sub.sum())
        if mass > 0:
            start = sub / mass
        else:
            if sub.numel() > 1:  # a single task's weight is 1 whatever happened before
                warn_and_count(
                    self,
                    "sdmgrad/weights_restarted",
                    f"sdmgrad: every present task has weight 0 at step {step.step} (the simplex "
                    "steps gave all the mass to tasks absent now); their warm start restarts "
                    "uniform",
                )
            start = torch.full_like(sub, 1.0 / sub.numel())
        weighting._w = start.to(gramian).clone()
        weighting._state_key = (sub.numel(), gramian.dtype, gramian.device)
        weights = weighting(gramian)
        updated = weighting._w
        if updated is None or updated.shape != sub.shape:
            raise BalancerError("sdmgrad: torchjd reset SDMGrad's state unexpectedly")
        with torch.no_grad():
            self.simplex[index] = updated.to(self.simplex) * (mass if mass > 0 else 1.0)
        return weights

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "lambda_": self.lambda_,
            "lr": self.lr,
            "momentum": self.momentum,
            "n_iter": self.n_iter,
        }
