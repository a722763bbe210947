"""Uncertainty weighting (Kendall, Gal & Cipolla 2018).

Each task gets a learnable log-variance ``s_i``; the combined loss is
``Σ_i exp(-s_i) L_i + s_i``. The ``+ s_i`` term keeps the weights from collapsing to zero. We use
the same form for every task kind (the paper's ``1/2`` factors for regression only rescale ``s``),
as LibMTL and most re-implementations do. ``s`` is trained by the model's optimizer.

``imtl_l`` (IMTL-L, Liu et al. 2021) is a declared alias of this method: its loss
``e^{s} L - s`` is this one with ``s -> -s`` (see :mod:`polytask.balancing._imtl_l`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from polytask.balancing._common import check_number
from polytask.balancing.base import Balancer, Combination, StepInfo
from polytask.balancing.registry import register_balancer

__all__ = ["Uncertainty"]


@register_balancer("uncertainty")
class Uncertainty(Balancer):
    """``L = Σ_i exp(-s_i) L_i + s_i`` with learnable ``s`` (initialised to ``init``)."""

    family = "loss"
    reference = (
        "Kendall, Gal & Cipolla 2018, Multi-Task Learning Using Uncertainty to Weigh Losses, CVPR"
    )

    def __init__(self, task_names: Sequence[str], init: float = 0.0) -> None:
        super().__init__(task_names)
        self.init = check_number("uncertainty", "init", init)
        self.log_vars = nn.Parameter(torch.full((len(task_names),), self.init))

    def combine(self, step: StepInfo) -> Combination:
        present = step.present.to(step.losses.dtype)
        s = self.log_vars.to(step.losses.dtype)
        precision = torch.exp(-s)
        loss = (present * (precision * step.losses + s)).sum()
        return Combination(weights=(precision * present).detach(), loss=loss)

    def hyperparameters(self) -> dict[str, Any]:
        return {"init": self.init}
