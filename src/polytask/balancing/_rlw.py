"""Random Loss Weighting, RLW (Lin, Ye, Xu, Shi & Zhang 2022, TMLR).

At every step the weights are drawn afresh: ``λ = softmax(z)`` with ``z ~ N(0, I)`` over the
tasks present in the batch (Algorithm 2 of the paper, where the weights sum to 1), and the loss is
``Σ_i λ_i L_i``. The draws come from the step's generator only, so every DDP rank draws the same
weights and a run is reproducible.

Normalisation: the paper's weights sum to 1, while this library's ``equal`` baseline uses weight 1
per task (they sum to the number of tasks). ``normalization="tasks"`` (default) multiplies the
softmax by the number of present tasks so that ``E[λ_i] = 1`` and RLW is compared with ``equal`` at
the same learning rate; ``normalization="one"`` is the paper's literal Algorithm 2. The two differ
only by a constant factor on the learning rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from polytask.balancing._common import check_choice
from polytask.balancing.base import Balancer, Combination, StepInfo
from polytask.balancing.registry import register_balancer

__all__ = ["RLW"]


@register_balancer("rlw")
class RLW(Balancer):
    """``L = Σ_i λ_i L_i`` with ``λ = softmax(z)``, ``z ~ N(0, I)`` redrawn every step."""

    family = "loss"
    reference = (
        "Lin, Ye, Xu, Shi & Zhang 2022, Reasonable Effectiveness of Random Weighting: A Litmus "
        "Test for Multi-Task Learning, TMLR"
    )

    def __init__(self, task_names: Sequence[str], normalization: str = "tasks") -> None:
        super().__init__(task_names)
        self.normalization = check_choice("rlw", "normalization", normalization, ("tasks", "one"))

    def combine(self, step: StepInfo) -> Combination:
        # One draw per task (present or not) so that the stream does not depend on presence.
        z = torch.randn(self.num_tasks, generator=step.generator, dtype=torch.float64)
        present = step.present.cpu()
        z = z.masked_fill(~present, float("-inf"))
        weights = torch.softmax(z, dim=0)
        if self.normalization == "tasks":
            weights = weights * int(present.sum())
        weights = weights.to(device=step.losses.device, dtype=step.losses.dtype)
        return Combination(weights=weights, loss=(weights * step.losses).sum())

    def hyperparameters(self) -> dict[str, Any]:
        return {"normalization": self.normalization}
