"""GradVac: Gradient Vaccine (Wang, Tsvetkov, Firat & Cao 2021, ICLR).

PCGrad only acts on negative cosine similarities; GradVac sets an adaptive *target* similarity
for every ordered pair of tasks, an exponential moving average ``φ̂_ij <- (1-β) φ̂_ij + β φ_ij`` of
the observed cosine ``φ_ij``. When ``φ_ij < φ̂_ij`` the gradient of task ``i`` is moved towards
``g_j`` just enough to reach the target:
``g_i <- g_i + ||g_i|| (φ̂_ij sqrt(1-φ_ij²) - φ_ij sqrt(1-φ̂_ij²)) / (||g_j|| sqrt(1-φ̂_ij²)) g_j``,
visiting the other tasks in random order; the update is the sum of the modified gradients.
torchjd's ``GradVacWeighting`` does this on the Gramian. ``β = 0.5`` by default (torchjd's and
LibMTL's default; the paper treats β as a hyper-parameter of the EMA).

State. torchjd keeps ``φ̂`` for the rows it is given and resets it whenever their number changes,
which a batch with a missing task would trigger. We keep the full ``T x T`` matrix ``phi`` as a
buffer (so it is in checkpoints), hand torchjd the sub-matrix of the present tasks before each call
and write it back afterwards: pairs involving an absent task keep their targets. The random order
uses torch's global RNG, forked and seeded from the step's generator. The Gramian is
trace-normalised first (the weights only change through the ``1e-8`` guard of the denominators).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchjd.aggregation import GradVacWeighting

from polytask.balancing._common import GramianWeightingBalancer, check_number
from polytask.balancing.base import BalancerError, StepInfo
from polytask.balancing.registry import register_balancer

__all__ = ["GradVac"]


@register_balancer("gradvac")
class GradVac(GramianWeightingBalancer):
    """Pairwise gradient alignment towards EMA targets of the cosine similarities."""

    reference = (
        "Wang, Tsvetkov, Firat & Cao 2021, Gradient Vaccine: Investigating and Improving "
        "Multi-task Optimization in Massively Multilingual Models, ICLR"
    )
    uses_global_rng = True
    solver_description = "the gradient vaccine"

    def __init__(self, task_names: Sequence[str], beta: float = 0.5, eps: float = 1e-8) -> None:
        super().__init__(task_names)
        self.beta = check_number("gradvac", "beta", beta, low=0.0, high=1.0)
        self.eps = check_number("gradvac", "eps", eps, low=0.0)
        weighting = GradVacWeighting(beta=self.beta, eps=self.eps)
        if not (hasattr(weighting, "_phi_t") and hasattr(weighting, "_state_key")):
            raise BalancerError(
                "gradvac: this torchjd version stores GradVac's state differently; polytask "
                "supports torchjd 0.18"
            )
        self._solver = {"gradvac": weighting}
        t = self.num_tasks
        self.register_buffer("phi", torch.zeros(t, t, dtype=torch.float64))

    def weigh(self, gramian: Tensor, step: StepInfo) -> Tensor:
        weighting = self._solver["gradvac"]
        index = step.present_index.to(self.phi.device)
        sub = self.phi[index][:, index].to(gramian).clone()
        weighting._phi_t = sub
        weighting._state_key = (sub.shape[0], gramian.dtype)
        weights = weighting(gramian)
        updated = weighting._phi_t
        if updated is None or updated.shape != sub.shape:
            raise BalancerError("gradvac: torchjd reset GradVac's state unexpectedly")
        with torch.no_grad():
            self.phi[index.unsqueeze(1), index.unsqueeze(0)] = updated.to(self.phi)
        return weights

    def hyperparameters(self) -> dict[str, Any]:
        return {"beta": self.beta, "eps": self.eps}
