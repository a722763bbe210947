"""Aligned-MTL: independent component alignment (Senushkin, Patakin, Kuznetsov & Konushin 2023,
CVPR).

Aligned-MTL removes the conflicts *and* the dominance of the task gradients by making the linear
system of gradients well conditioned: with ``G = V Λ Vᵀ`` (rank ``r``), the balance transformation
``B = sqrt(σ) V Λ^{-1/2} Vᵀ`` maps the gradients to an orthogonal set of equal norms
(``σ = λ_min`` by default, the paper's choice; ``"median"`` and ``"rmse"`` are the alternatives of
the original code), and the update is ``d = Jᵀ B w`` with ``w`` the mean weights (the paper's
uniform preference). torchjd's ``AlignedMTLWeighting`` does this on the Gramian (an eigen
decomposition); a failing decomposition raises :class:`~polytask.balancing.base.BalancerError`.
The Gramian is trace-normalised first (the weights are invariant to it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor
from torchjd.aggregation import AlignedMTLWeighting

from polytask.balancing._common import GramianWeightingBalancer, check_choice
from polytask.balancing.base import StepInfo
from polytask.balancing.registry import register_balancer

__all__ = ["AlignedMTL"]


@register_balancer("aligned_mtl")
class AlignedMTL(GramianWeightingBalancer):
    """Equal-norm, orthogonalised task gradients (condition number one), then averaged."""

    reference = (
        "Senushkin, Patakin, Kuznetsov & Konushin 2023, Independent Component Alignment for "
        "Multi-Task Learning, CVPR"
    )
    solver_description = "the eigen decomposition"

    def __init__(self, task_names: Sequence[str], scale_mode: str = "min") -> None:
        super().__init__(task_names)
        self.scale_mode = check_choice(
            "aligned_mtl", "scale_mode", scale_mode, ("min", "median", "rmse")
        )
        self._solver = {"aligned_mtl": AlignedMTLWeighting(scale_mode=self.scale_mode)}  # type: ignore[arg-type]

    def weigh(self, gramian: Tensor, step: StepInfo) -> Tensor:
        return self._solver["aligned_mtl"](gramian)

    def hyperparameters(self) -> dict[str, Any]:
        return {"scale_mode": self.scale_mode}
