"""GradVac: Gradient Vaccine (Wang, Tsvetkov, Firat & Cao 2021, ICLR).

PCGrad only acts on negative cosine similarities; GradVac sets an adaptive *target* similarity
for every ordered pair of tasks, an exponential moving average ``φ̂_ij <- (1-β) φ̂_ij + β φ_ij`` of
the observed cosine ``φ_ij``. When ``φ_ij < φ̂_ij`` the gradient of task ``i`` is moved towards
``g_j`` just enough to reach the target:
``g_i <- g_i + ||g_i|| (φ̂_ij sqrt(1-φ_ij²) - φ_ij sqrt(1-φ̂_ij²)) / (||g_j|| sqrt(1-φ̂_ij²)) g_j``,
visiting the other tasks in random order; the update is the sum of the modified gradients.
``β = 0.5`` by default (torchjd's and LibMTL's default; the paper treats β as a hyper-parameter of
the EMA).

Computed on the Gramian, as torchjd's ``GradVacWeighting`` does: with ``g_i' = Σ_k c_ik g_k``,
``g_i'·g_j = (c_i G)_j`` and ``||g_i'||² = c_i G c_iᵀ``, and a correction only changes ``c_ij``. We run
torchjd's loop (same visiting orders, same arithmetic) on Python floats of the ``T x T`` Gramian,
which avoids thousands of tiny torch operations per step.

State. We keep the full ``T x T`` matrix ``phi`` of targets as a buffer (so it is in checkpoints)
and update the entries of the pairs of present tasks only: pairs involving an absent task keep
their targets (torchjd's weighting would reset all its state when the number of tasks changes).
The random visiting orders are drawn with ``torch.randperm`` from a CPU generator seeded from the
step's generator (the numbers torchjd draws from the global RNG forked and seeded the same way).
The Gramian is trace-normalised first (the weights only change through the ``eps`` guard of the
denominators).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from polytask.balancing._common import GramianWeightingBalancer, check_number, step_cpu_generator
from polytask.balancing.base import StepInfo
from polytask.balancing.registry import register_balancer

__all__ = ["GradVac"]


@register_balancer("gradvac")
class GradVac(GramianWeightingBalancer):
    """Pairwise gradient alignment towards EMA targets of the cosine similarities."""

    reference = (
        "Wang, Tsvetkov, Firat & Cao 2021, Gradient Vaccine: Investigating and Improving "
        "Multi-task Optimization in Massively Multilingual Models, ICLR"
    )
    solver_description = "the gradient vaccine"

    def __init__(self, task_names: Sequence[str], beta: float = 0.5, eps: float = 1e-8) -> None:
        super().__init__(task_names)
        self.beta = check_number("gradvac", "beta", beta, low=0.0, high=1.0)
        self.eps = check_number("gradvac", "eps", eps, low=0.0)
        t = self.num_tasks
        self.register_buffer("phi", torch.zeros(t, t, dtype=torch.float64))

    def weigh(self, gramian: Tensor, step: StepInfo) -> Tensor:
        generator = step_cpu_generator(step.generator)
        index = step.present_index.to(self.phi.device)
        phi: list[list[float]] = self.phi[index][:, index].double().cpu().tolist()
        g: list[list[float]] = gramian.detach().double().cpu().tolist()
        m = len(g)
        beta, eps = self.beta, self.eps
        weights = [0.0] * m
        for i in range(m):
            coefficients = [0.0] * m
            coefficients[i] = 1.0
            products = list(g[i])  # (c_i G)_j = g_i' · g_j
            others = [j for j in range(m) if j != i]
            order = [others[k] for k in torch.randperm(m - 1, generator=generator).tolist()]
            for j in order:
                dot = products[j]
                norm_i = math.sqrt(
                    max(sum(p * c for p, c in zip(products, coefficients, strict=True)), 0.0)
                )
                norm_j = math.sqrt(max(g[j][j], 0.0))
                cosine = dot / (norm_i * norm_j + eps)
                target = phi[i][j]
                if cosine < target:
                    sqrt_1_cos2 = math.sqrt(max(1.0 - cosine * cosine, 0.0))
                    sqrt_1_target2 = math.sqrt(max(1.0 - target * target, 0.0))
                    shift = (
                        norm_i
                        * (target * sqrt_1_cos2 - cosine * sqrt_1_target2)
                        / (norm_j * sqrt_1_target2 + eps)
                    )
                    coefficients[j] += shift
                    row = g[j]
                    products = [p + shift * r for p, r in zip(products, row, strict=True)]
                phi[i][j] = (1.0 - beta) * target + beta * cosine
            weights = [w + c for w, c in zip(weights, coefficients, strict=True)]
        with torch.no_grad():
            self.phi[index.unsqueeze(1), index.unsqueeze(0)] = torch.tensor(phi).to(self.phi)
        return torch.tensor(weights, dtype=gramian.dtype, device=gramian.device)

    def hyperparameters(self) -> dict[str, Any]:
        return {"beta": self.beta, "eps": self.eps}
