"""IMTL-G, the gradient-balancing half of Impartial Multi-Task Learning (Liu et al. 2021, ICLR).

IMTL-G finds the update ``d = Σ_i w_i g_i`` with ``Σ_i w_i = 1`` whose projections on every *unit*
task gradient are equal: ``d·u_i = d·u_j`` with ``u_i = g_i/||g_i||``. The paper's closed form uses
differences of gradients and of unit gradients; like torchjd's ``IMTLGWeighting`` we solve the
equivalent Gramian system ``v = G⁺ (||g_1||, …, ||g_m||)``, which also handles linearly dependent
gradients: ``Jᵀ v`` has projection ``+1`` on every unit gradient (independent gradients).

The paper then normalises ``w = v / Σ v``. When ``Σ v < 0`` (it happens with conflicting gradients
of very different norms, e.g. ``g = (0, 0, -1), (1, -7, 1), (0, -2, 0)``) that normalisation
*reverses* the update: every projection becomes negative and the step increases every task's loss
(and rescaling one task's loss can flip the sign, breaking the claimed invariance); torchjd also
returns all-zero weights when ``|Σ v| < 1e-12``. We keep ``w = v / Σ v`` whenever ``Σ v`` is
clearly positive (identical to the paper) and otherwise use ``w = v / Σ |v|`` (projections stay
equal and positive), counting ``imtl_g/non_positive_sum`` with a ``RuntimeWarning``.

The *direction* of ``d`` then depends only on the unit gradients, so it is invariant to rescaling
any task's loss (the paper's impartiality); its length is not. Gramian only; the Gramian is
trace-normalised first (the weights do not change).
"""

from __future__ import annotations

import torch
from torch import Tensor

from polytask.balancing._common import GramianWeightingBalancer, warn_and_count
from polytask.balancing.base import StepInfo
from polytask.balancing.registry import register_balancer

__all__ = ["IMTLG"]


@register_balancer("imtl_g")
class IMTLG(GramianWeightingBalancer):
    """Weights (summing to 1) giving equal projections of the update on every unit gradient."""

    reference = (
        "Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang 2021, Towards Impartial Multi-task "
        "Learning, ICLR (IMTL-G)"
    )
    solver_description = "the pseudo-inverse solve"

    def weigh(self, gramian: Tensor, step: StepInfo) -> Tensor:
        norms = gramian.diagonal().clamp(min=0.0).sqrt()
        v = torch.linalg.pinv(gramian, hermitian=True) @ norms
        total = float(v.sum())
        size = float(v.abs().sum())
        if total > 1e-9 * size:
            return v / total
        warn_and_count(
            self,
            "imtl_g/non_positive_sum",
            f"imtl_g: the IMTL-G weights sum to {total:.3g} (<= 0) at step {step.step}; "
            "normalising them to sum 1 would reverse the update into an ascent direction for "
            "every task, normalised by the sum of their absolute values instead",
        )
        if not size > 0:
            raise ValueError("all IMTL-G weights are zero (every projection is zero)")
        return v / size
