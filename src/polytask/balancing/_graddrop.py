"""GradDrop: gradient sign dropout (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov 2020,
NeurIPS).

GradDrop acts element-wise on the gradients. For every coordinate it measures the positive sign
purity ``P = ½ (1 + Σ_i g_i / Σ_i |g_i|)`` and draws ``U ~ Uniform(0, 1)``; if ``P > U`` only the
positive task gradients of that coordinate are kept, otherwise only the negative ones, and the
update is the sum of what is kept (torchjd's ``GradDrop`` aggregator, lines 10-15 of the paper's
Algorithm 1, with ``f`` the identity and no leak). It needs the Jacobian itself. The paper applies
GradDrop to the gradients of the shared *representation* (the engine's representation mode);
with ``mode="jacobian"`` it works on all shared parameters, the common re-implementation.

The draws use torch's global RNG inside torchjd; we run it forked and seeded from the step's
generator (reproducible, identical on every DDP rank, training randomness untouched). The reported
weights are the least-squares coefficients of the update on the task gradients (``G⁺ J d``; the
masked update is not exactly a weighting of the rows).
"""

from __future__ import annotations

from collections.abc import Sequence

from torchjd.aggregation import GradDrop as _TorchjdGradDrop

from polytask.balancing._common import (
    check_finite_weights,
    guarded,
    least_squares_weights,
    seeded_global_rng,
)
from polytask.balancing.base import Balancer, Combination, Needs, StepInfo, scatter_present
from polytask.balancing.registry import register_balancer

__all__ = ["GradDrop"]


@register_balancer("graddrop")
class GradDrop(Balancer):
    """Keep, per coordinate, only the gradients of one sign chosen at random by sign purity."""

    family = "gradient"
    needs = Needs(gradients="jacobian")
    reference = (
        "Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov 2020, Just Pick a Sign: "
        "Optimizing Deep Multitask Models with Gradient Sign Dropout, NeurIPS"
    )

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__(task_names)
        self._solver = {"graddrop": _TorchjdGradDrop()}

    def combine(self, step: StepInfo) -> Combination:
        assert step.jacobian is not None and step.gramian is not None
        jacobian = step.jacobian.detach()
        with seeded_global_rng(step.generator, jacobian.device):
            direction = guarded(
                "graddrop",
                step.step,
                "the sign dropout",
                lambda: self._solver["graddrop"](jacobian),
            )
        weights = least_squares_weights(jacobian, step.gramian, direction)
        check_finite_weights("graddrop", step.step, weights)
        return Combination(
            weights=scatter_present(weights.to(step.losses.dtype), step.present),
            direction=direction,
        )
