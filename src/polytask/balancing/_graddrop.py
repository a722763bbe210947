"""GradDrop: gradient sign dropout (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov 2020,
NeurIPS).

GradDrop acts element-wise on the gradients. For every coordinate it measures the positive sign
purity ``P = ½ (1 + Σ_i g_i / Σ_i |g_i|)`` and draws ``U ~ Uniform(0, 1)``; if ``P > U`` only the
positive task gradients of that coordinate are kept, otherwise only the negative ones, and the
update is the sum of what is kept (as torchjd's ``GradDrop`` aggregator: lines 10-15 of the paper's
Algorithm 1, with ``f`` the identity and no leak; computed here without a loop over the tasks, as
the per-coordinate sums of the positive and of the negative entries, one of which is kept). It needs the Jacobian itself. The paper applies
GradDrop to the gradients of the shared *representation* (the engine's representation mode);
with ``mode="jacobian"`` it works on all shared parameters, the common re-implementation.

The draws (``torch.rand``, as torchjd draws them) use torch's global RNG, forked and seeded from the step's
generator (reproducible, identical on every DDP rank, training randomness untouched). The reported
weights are the least-squares coefficients of the update on the task gradients (``G⁺ J d``; the
masked update is not exactly a weighting of the rows).
"""

from __future__ import annotations

import torch
from torch import Tensor

from polytask.balancing._common import (
    check_finite_weights,
    guarded,
    least_squares_weights,
    seeded_global_rng,
)
from polytask.balancing.base import Balancer, Combination, Needs, StepInfo, scatter_present
from polytask.balancing.registry import register_balancer

__all__ = ["GradDrop"]


def _sign_dropout(jacobian: Tensor) -> Tensor:
    """The GradDrop update of the rows of ``jacobian`` (draws ``U`` from the global RNG)."""
    if jacobian.shape[0] == 0 or jacobian.shape[1] == 0:
        return jacobian.new_zeros(jacobian.shape[1])
    # P exactly as torchjd computes it, so that the comparisons with U are the same.
    purity = 0.5 * (1.0 + jacobian.sum(dim=0) / jacobian.abs().sum(dim=0))
    draws = torch.rand(purity.shape, dtype=jacobian.dtype, device=jacobian.device)
    positive = jacobian.clamp(min=0.0).sum(dim=0)
    negative = jacobian.clamp(max=0.0).sum(dim=0)
    # A coordinate where P is NaN (all gradients zero) or P == U keeps nothing.
    return torch.where(
        purity > draws,
        positive,
        torch.where(purity < draws, negative, torch.zeros_like(positive)),
    )


@register_balancer("graddrop")
class GradDrop(Balancer):
    """Keep, per coordinate, only the gradients of one sign chosen at random by sign purity."""

    family = "gradient"
    needs = Needs(gradients="jacobian")
    reference = (
        "Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov 2020, Just Pick a Sign: "
        "Optimizing Deep Multitask Models with Gradient Sign Dropout, NeurIPS"
    )

    def combine(self, step: StepInfo) -> Combination:
        assert step.jacobian is not None and step.gramian is not None
        jacobian = step.jacobian.detach()
        with seeded_global_rng(step.generator, jacobian.device):
            direction = guarded(
                "graddrop",
                step.step,
                "the sign dropout",
                lambda: _sign_dropout(jacobian),
            )
        weights = least_squares_weights(jacobian, step.gramian, direction)
        check_finite_weights("graddrop", step.step, weights)
        return Combination(
            weights=scatter_present(weights.to(step.losses.dtype), step.present),
            direction=direction,
        )
