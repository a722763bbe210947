"""IMTL-L, the loss-balancing half of Impartial Multi-Task Learning (Liu et al. 2021, ICLR).

Each task has a learnable log-scale ``s_i`` (initialised to ``init``, 0 in the paper, so training
starts from the plain sum) and the combined loss is ``Σ_i (e^{s_i} L_i - s_i)`` over the present
tasks. Minimising it over ``s_i`` gives ``e^{s_i} L_i = 1``: the scaled losses are kept at the same
magnitude, and the ``- s_i`` term prevents the trivial solution ``s_i -> -inf``. ``s`` is a
parameter of the balancer, trained by the model's optimizer (put ``balancer.parameters()`` in it),
exactly like torchjd's ``IMTLL`` scalarizer; an absent task's ``s_i`` receives no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from polytask.balancing._common import check_number
from polytask.balancing.base import Balancer, Combination, StepInfo
from polytask.balancing.registry import register_balancer

__all__ = ["IMTLL"]


@register_balancer("imtl_l")
class IMTLL(Balancer):
    """``L = Σ_i e^{s_i} L_i - s_i`` with learnable ``s``."""

    family = "loss"
    reference = (
        "Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang 2021, Towards Impartial Multi-task "
        "Learning, ICLR (IMTL-L)"
    )

    def __init__(self, task_names: Sequence[str], init: float = 0.0) -> None:
        super().__init__(task_names)
        self.init = check_number("imtl_l", "init", init)
        self.log_scales = nn.Parameter(torch.full((len(task_names),), self.init))

    def combine(self, step: StepInfo) -> Combination:
        present = step.present.to(step.losses.dtype)
        s = self.log_scales.to(step.losses.dtype)
        scale = torch.exp(s)
        loss = (present * (scale * step.losses - s)).sum()
        return Combination(weights=(scale * present).detach(), loss=loss)

    def hyperparameters(self) -> dict[str, Any]:
        return {"init": self.init}
