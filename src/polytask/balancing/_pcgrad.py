"""PCGrad: projecting conflicting gradients (Yu, Kumar, Gupta, Levine, Hausman & Finn 2020,
NeurIPS).

For every task ``i`` (Algorithm 1): start from ``g_i^PC = g_i`` and visit the other tasks ``j`` in a
random order; whenever ``g_i^PC · g_j < 0`` (a conflict), remove the component along ``g_j``:
``g_i^PC <- g_i^PC - (g_i^PC·g_j / ||g_j||²) g_j``. The update is the *sum* ``Σ_i g_i^PC`` (the scale
of ``equal``). With two tasks, each projected gradient is orthogonal to the other task's gradient
when they conflict. torchjd's ``PCGradWeighting`` expresses this on the Gramian (coefficients of
the original gradients), so the Gramian mode works; we run the same loop (same visiting orders,
same arithmetic) on Python floats of the ``T x T`` Gramian, which avoids a few hundred tiny torch
operations per step: with ``g_i^PC = Σ_k c_k g_k``, ``g_i^PC · g_j = (G c)_j`` and a projection only
changes ``c_j``.

The random visiting orders are drawn with ``torch.randperm`` from a CPU generator seeded from the
step's generator (the numbers torchjd draws from the global RNG forked and seeded the same way),
so they are reproducible, identical on every DDP rank, and do not disturb the training's own
randomness. The Gramian is trace-normalised first (no effect on the weights).
"""

from __future__ import annotations

import torch
from torch import Tensor

from polytask.balancing._common import GramianWeightingBalancer, step_cpu_generator
from polytask.balancing.base import StepInfo
from polytask.balancing.registry import register_balancer

__all__ = ["PCGrad"]


@register_balancer("pcgrad")
class PCGrad(GramianWeightingBalancer):
    """Sum of the task gradients, each stripped of its conflicting components."""

    reference = (
        "Yu, Kumar, Gupta, Levine, Hausman & Finn 2020, Gradient Surgery for Multi-Task "
        "Learning, NeurIPS"
    )
    solver_description = "the gradient projection"

    def weigh(self, gramian: Tensor, step: StepInfo) -> Tensor:
        generator = step_cpu_generator(step.generator)
        m = gramian.shape[0]
        g: list[list[float]] = gramian.detach().double().cpu().tolist()
        weights = [0.0] * m
        for i in range(m):
            order = torch.randperm(m, generator=generator).tolist()
            coefficients = [0.0] * m
            coefficients[i] = 1.0
            products = list(g[i])  # (G c)_j = g_i^PC · g_j
            for j in order:
                if j == i:
                    continue
                inner = products[j]
                if inner < 0.0:
                    shift = inner / g[j][j]
                    coefficients[j] -= shift
                    row = g[j]
                    products = [p - shift * r for p, r in zip(products, row, strict=True)]
            weights = [w + c for w, c in zip(weights, coefficients, strict=True)]
        return torch.tensor(weights, dtype=gramian.dtype, device=gramian.device)
