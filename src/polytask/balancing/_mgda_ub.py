"""MGDA-UB: MGDA on the gradients of the shared representation (Sener & Koltun 2018, NeurIPS).

The paper's efficient variant (Section 3.3) replaces the per-task gradients of all shared parameters
by the gradients of the shared representation ``z = f(x; θ_sh)`` over the batch, minimising an upper
bound of the MGDA objective, ``||Σ w_i ∇_θ L_i|| <= ||∂z/∂θ|| ||Σ w_i ∇_z L_i||``: the min-norm weights
``w* = argmin_{w ∈ Δ} ||Σ_i w_i ∇_z L_i||²`` need one backward pass per task down to ``z`` only. The
update of the shared parameters is then the weighted sum of the tasks' gradients, ``Σ_i w_i ∇_θ L_i``
(``w*ᵀ J``), obtained with a single backward pass of ``Σ_i w_i ∇_z L_i`` through the trunk.

What makes it MGDA-UB here is its declaration ``Needs(gradients="gramian", source="representation")``:
the engine computes ``R Rᵀ`` from the representation gradients ``R`` in *every* engine mode (jacobian,
gramian or representation; they give the same update) and refuses a model without one shared
representation (cross-stitch, multi-level PLE), where the method is not defined. The mathematics
after that is :class:`~polytask.balancing._mgda.MGDA`'s, unchanged (Frank-Wolfe min-norm weights,
optional ``normalization`` "none"/"l2"/"loss"/"loss+" of the authors' code, applied to the
representation gradients as in that code). ``mgda`` itself follows the engine's mode: on the
parameters in the jacobian and gramian modes, where the two methods differ.
"""

from __future__ import annotations

from polytask.balancing._mgda import MGDA
from polytask.balancing.base import Needs
from polytask.balancing.registry import register_balancer

__all__ = ["MGDAUB"]


@register_balancer("mgda_ub")
class MGDAUB(MGDA):
    """Min-norm weights of the representation gradients, applied to the parameter gradients."""

    needs = Needs(gradients="gramian", source="representation")
    reference = (
        "Sener & Koltun 2018, Multi-Task Learning as Multi-Objective Optimization, NeurIPS "
        "(MGDA-UB)"
    )
