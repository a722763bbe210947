"""ConFIG: conflict-free inverse gradients (Liu, Chu, Bhatt, Aulbach & Thuerey 2024).

ConFIG looks for the direction whose angle with every task gradient is the same (so no task is
favoured and none conflicts): with unit gradients ``u_i = g_i/||g_i||``, the unit direction is
``ê = normalise(U⁺ 1)`` (``U⁺`` the pseudo-inverse of the stacked unit gradients, ``1`` the equal
preference), and its length is the sum of the projections of the gradients on it:
``d = (Σ_i g_i·ê) ê``: the paper's Equation 2 with equal weights, as in torchjd's ``ConFIG``
aggregator. ``d`` is returned as the update direction; the reported weights are the
least-squares coefficients of ``d`` on the task gradients (``G⁺ J d``, exact since ``d`` lies in
their span).

Computed on the ``T x T`` Gramian instead of a pseudo-inverse of the wide ``T x n`` matrix ``U``
(torchjd's route, an SVD of ``U``): with ``D = diag(||g_i||)`` and ``G_u = D⁻¹ G D⁻¹ = U Uᵀ``,
``U⁺ 1 = Uᵀ G_u⁺ 1``, so ``ê ∝ Jᵀ c₀`` with ``c₀ = D⁻¹ G_u⁺ 1`` and ``d = Jᵀ c`` with
``c = c₀ (1ᵀ G c₀) / (c₀ᵀ G c₀)``. ``G_u⁺`` keeps the eigenvalues ``σ²`` of ``G_u`` whose singular
value ``σ`` of ``U`` passes ``torch.linalg.pinv``'s default cut-off on ``U`` (``σ > ε n σ_max``,
``ε`` the machine epsilon of ``J``'s dtype), so rank-deficient Jacobians are treated as before. A
zero gradient contributes a zero unit row, as in torchjd (``nan_to_num``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from polytask.balancing._common import check_finite_weights, guarded, least_squares_weights
from polytask.balancing.base import Balancer, Combination, Needs, StepInfo, scatter_present
from polytask.balancing.registry import register_balancer

__all__ = ["ConFIG"]


def _config_direction(jacobian: Tensor, gramian: Tensor) -> Tensor:
    """ConFIG's ``d = (Σ_i g_i·ê) ê``, ``ê = normalise(U⁺ 1)``, through the Gramian (see above)."""
    g = gramian.detach().double()
    g = 0.5 * (g + g.T)
    norms = g.diagonal().clamp(min=0.0).sqrt()
    inverse_norms = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))
    g_units = g * torch.outer(inverse_norms, inverse_norms)
    eigenvalues, vectors = torch.linalg.eigh(g_units)
    singular = eigenvalues.clamp(min=0.0).sqrt()
    cutoff = torch.finfo(jacobian.dtype).eps * max(jacobian.shape) * singular.max()
    keep = singular > cutoff
    inverse = torch.where(keep, 1.0 / eigenvalues.clamp(min=1e-300), torch.zeros_like(eigenvalues))
    c_units = vectors @ (inverse * vectors.sum(dim=0))  # G_u⁺ 1
    c0 = inverse_norms * c_units
    squared_norm = float(c0 @ g @ c0)
    if not squared_norm > 0:
        return jacobian.new_zeros(jacobian.shape[1])
    coefficients = c0 * (float(g.sum(dim=0) @ c0) / squared_norm)
    return coefficients.to(jacobian.dtype) @ jacobian


@register_balancer("config")
class ConFIG(Balancer):
    """Equal-angle direction to every task gradient, scaled by the summed projections."""

    family = "gradient"
    needs = Needs(gradients="jacobian")
    reference = (
        "Liu, Chu, Bhatt, Aulbach & Thuerey 2024, ConFIG: Towards Conflict-free Training of "
        "Physics Informed Neural Networks, arXiv:2408.11104"
    )

    def combine(self, step: StepInfo) -> Combination:
        assert step.jacobian is not None and step.gramian is not None
        jacobian = step.jacobian.detach()
        direction = guarded(
            "config",
            step.step,
            "the pseudo-inverse solve",
            lambda: _config_direction(jacobian, step.gramian),  # type: ignore[arg-type]
        )
        weights = least_squares_weights(jacobian, step.gramian, direction)
        check_finite_weights("config", step.step, weights)
        return Combination(
            weights=scatter_present(weights.to(step.losses.dtype), step.present),
            direction=direction.to(jacobian.dtype),
        )
