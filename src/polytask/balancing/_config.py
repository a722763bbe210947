"""ConFIG: conflict-free inverse gradients (Liu, Chu, Bhatt, Aulbach & Thuerey 2024).

ConFIG looks for the direction whose angle with every task gradient is the same (so no task is
favoured and none conflicts): with unit gradients ``u_i = g_i/||g_i||``, the unit direction is
``ê = normalise(U⁺ 1)`` (``U⁺`` the pseudo-inverse of the stacked unit gradients, ``1`` the equal
preference), and its length is the sum of the projections of the gradients on it:
``d = (Σ_i g_i·ê) ê``. torchjd's ``ConFIG`` aggregator computes exactly this (paper's Equation 2,
equal weights); it needs the Jacobian itself. ``d`` is returned as the update direction; the
reported weights are the least-squares coefficients of ``d`` on the task gradients
(``G⁺ J d``, exact since ``d`` lies in their span).
"""

from __future__ import annotations

from collections.abc import Sequence

from torchjd.aggregation import ConFIG as _TorchjdConFIG

from polytask.balancing._common import check_finite_weights, guarded, least_squares_weights
from polytask.balancing.base import Balancer, Combination, Needs, StepInfo, scatter_present
from polytask.balancing.registry import register_balancer

__all__ = ["ConFIG"]


@register_balancer("config")
class ConFIG(Balancer):
    """Equal-angle direction to every task gradient, scaled by the summed projections."""

    family = "gradient"
    needs = Needs(gradients="jacobian")
    reference = (
        "Liu, Chu, Bhatt, Aulbach & Thuerey 2024, ConFIG: Towards Conflict-free Training of "
        "Physics Informed Neural Networks, arXiv:2408.11104"
    )

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__(task_names)
        self._solver = {"config": _TorchjdConFIG()}

    def combine(self, step: StepInfo) -> Combination:
        assert step.jacobian is not None and step.gramian is not None
        jacobian = step.jacobian.detach()
        direction = guarded(
            "config",
            step.step,
            "the pseudo-inverse solve",
            lambda: self._solver["config"](jacobian),
        )
        weights = least_squares_weights(jacobian, step.gramian, direction)
        check_finite_weights("config", step.step, weights)
        return Combination(
            weights=scatter_present(weights.to(step.losses.dtype), step.present),
            direction=direction.to(jacobian.dtype),
        )
