"""MGDA: the multiple-gradient descent algorithm as used for MTL (Sener & Koltun 2018, NeurIPS).

The update is the minimum-norm point of the convex hull of the task gradients,
``w* = argmin_{w ∈ Δ} ||Σ_i w_i g_i||²`` (``Δ`` the simplex), found with the Frank-Wolfe solver of
the paper's Algorithm 2 (torchjd's ``MGDAWeighting``, the same iterations run here in numpy on the
``T x T`` Gramian; it only reads ``G = J Jᵀ``, so the cheap Gramian mode works). When ``d = Σ_i w_i g_i`` is not zero it makes a non-negative inner
product with every task gradient (no task is harmed to first order); the weights lie on the
simplex, so the update has the scale of a single (averaged) gradient.

``normalization`` rescales the gradients before the min-norm problem, as in the authors' code (it
is not part of the paper's algorithm): ``"none"`` (default, the paper), ``"l2"`` (``g_i/||g_i||``),
``"loss"`` (``g_i/L_i``), ``"loss+"`` (``g_i/(L_i ||g_i||)``). As in that code, the weights found
on the normalised problem then multiply the *raw* gradients; with a normalisation the
non-conflict guarantee above only holds for the normalised gradients. All four need only the
Gramian diagonal and the losses. A zero gradient is left as it is (scale 1).

``mgda_ub`` (:mod:`polytask.balancing._mgda_ub`) is the same solver on the Gramian of the
gradients of the shared representation, whatever the engine mode (the paper's MGDA-UB).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from polytask.balancing._common import check_choice, check_int, check_number, guarded
from polytask.balancing.base import Balancer, Combination, Needs, StepInfo, scatter_present
from polytask.balancing.registry import register_balancer

__all__ = ["MGDA"]

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def _frank_wolfe(gramian: torch.Tensor, epsilon: float, max_iters: int) -> torch.Tensor:
    """Algorithm 2 of the paper (torchjd's ``MGDAWeighting`` iterations) on a ``T x T`` Gramian."""
    g = gramian.detach().double().cpu().numpy()
    m = g.shape[0]
    alpha = np.full(m, 1.0 / m)
    for _ in range(max_iters):
        g_alpha = g @ alpha
        t = int(np.argmin(g_alpha))
        a = float(alpha @ g[:, t])
        b = float(alpha @ g_alpha)
        c = float(g[t, t])
        if c <= a:
            gamma = 1.0
        elif b <= a:
            gamma = 0.0
        else:
            gamma = (b - a) / (b + c - 2 * a)
        alpha = (1 - gamma) * alpha
        alpha[t] += gamma
        if gamma < epsilon:
            break
    return torch.from_numpy(alpha).to(gramian.device)


@register_balancer("mgda")
class MGDA(Balancer):
    """Min-norm point of the convex hull of the (optionally normalised) task gradients."""

    family = "gradient"
    needs = Needs(gradients="gramian")
    reference = (
        "Sener & Koltun 2018, Multi-Task Learning as Multi-Objective Optimization, NeurIPS "
        "(after Désidéri 2012)"
    )

    def __init__(
        self,
        task_names: Sequence[str],
        normalization: str = "none",
        epsilon: float = 1e-3,
        max_iters: int = 100,
    ) -> None:
        super().__init__(task_names)
        method = self._method_name()
        self.normalization = check_choice(method, "normalization", normalization, NORMALIZATIONS)
        self.epsilon = check_number(method, "epsilon", epsilon, low=0.0, low_inclusive=False)
        self.max_iters = check_int(method, "max_iters", max_iters, low=1)

    @classmethod
    def _method_name(cls) -> str:
        return cls.name or "mgda"

    def _scales(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        norms = gramian.diagonal().clamp(min=0.0).sqrt()
        if self.normalization == "l2":
            scales = norms
        elif self.normalization == "loss":
            scales = losses
        elif self.normalization == "loss+":
            scales = losses * norms
        else:
            return torch.ones_like(norms)
        ok = torch.isfinite(scales) & (scales > 0)
        return torch.where(ok, scales, torch.ones_like(scales))

    def combine(self, step: StepInfo) -> Combination:
        assert step.gramian is not None
        gramian = step.gramian.detach().double()
        losses = step.losses.detach()[step.present].double()
        scales = self._scales(gramian, losses)
        normalized = gramian / torch.outer(scales, scales)
        weights = guarded(
            self._method_name(),
            step.step,
            "the Frank-Wolfe min-norm solver",
            lambda: _frank_wolfe(normalized, self.epsilon, self.max_iters),
        )
        return Combination(weights=scatter_present(weights.to(step.losses.dtype), step.present))

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "normalization": self.normalization,
            "epsilon": self.epsilon,
            "max_iters": self.max_iters,
        }
