"""MGDA-UB: MGDA on the gradients of the shared representation (Sener & Koltun 2018, NeurIPS).

The paper's efficient variant replaces the per-task gradients of all shared parameters by the
gradients of the shared representation ``z`` (an upper bound of the MGDA objective,
``||Σ w_i ∇_θ L_i|| <= ||∂z/∂θ|| ||Σ w_i ∇_z L_i||``), so the per-task backward passes stop at ``z``
and a single backward pass sends the combined direction through the trunk. The mathematics is
:class:`~polytask.balancing._mgda.MGDA`'s, unchanged (Frank-Wolfe min-norm weights, optional
``normalization`` "none"/"l2"/"loss"/"loss+" of the authors' code); what differs is the
engine mode it is meant for, ``preferred_mode = "representation"``. It still only needs the
Gramian, so it also runs in the jacobian and gramian modes (where it equals ``mgda``).
"""

from __future__ import annotations

from typing import ClassVar

from polytask.balancing._mgda import MGDA
from polytask.balancing.registry import register_balancer

__all__ = ["MGDAUB"]


@register_balancer("mgda_ub")
class MGDAUB(MGDA):
    """MGDA with the representation-level gradients (use ``mode="representation"``)."""

    preferred_mode: ClassVar[str] = "representation"
    reference = (
        "Sener & Koltun 2018, Multi-Task Learning as Multi-Objective Optimization, NeurIPS "
        "(MGDA-UB)"
    )
