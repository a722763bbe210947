"""PCGrad: projecting conflicting gradients (Yu, Kumar, Gupta, Levine, Hausman & Finn 2020,
NeurIPS).

For every task ``i`` (Algorithm 1): start from ``g_i^PC = g_i`` and visit the other tasks ``j`` in a
random order; whenever ``g_i^PC · g_j < 0`` (a conflict), remove the component along ``g_j``:
``g_i^PC <- g_i^PC - (g_i^PC·g_j / ||g_j||²) g_j``. The update is the *sum* ``Σ_i g_i^PC`` (the scale
of ``equal``). With two tasks, each projected gradient is orthogonal to the other task's gradient
when they conflict. torchjd's ``PCGradWeighting`` expresses this on the Gramian (coefficients of
the original gradients), so the Gramian mode works.

The random visiting order uses torch's global RNG inside torchjd; we run it under a forked global
RNG seeded from the step's generator, so it is reproducible, identical on every DDP rank, and does
not disturb the training's own randomness. The Gramian is trace-normalised first (no effect on the
weights).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torchjd.aggregation import PCGradWeighting

from polytask.balancing._common import GramianWeightingBalancer
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
    uses_global_rng = True
    solver_description = "the gradient projection"

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__(task_names)
        self._solver = {"pcgrad": PCGradWeighting()}

    def weigh(self, gramian: Tensor, step: StepInfo) -> Tensor:
        return self._solver["pcgrad"](gramian)
