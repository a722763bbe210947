"""Static weighting: fixed, user-chosen weights (``Task.weight`` by default)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from polytask.balancing.base import Balancer, BalancerError, Combination, StepInfo
from polytask.balancing.registry import register_balancer

__all__ = ["Static"]


@register_balancer("static")
class Static(Balancer):
    """``L = Σ_i c_i L_i`` with constant, non-negative ``c_i`` (missing tasks default to 1)."""

    family = "loss"
    reference = "hand-tuned static weights (e.g. Kendall et al. 2018, grid-searched baseline)"
    uses_task_weights = True

    def __init__(
        self, task_names: Sequence[str], weights: Mapping[str, float] | None = None
    ) -> None:
        super().__init__(task_names)
        weights = dict(weights or {})
        unknown = set(weights) - set(self.task_names)
        if unknown:
            raise BalancerError(f"static: weights given for unknown task(s) {sorted(unknown)}")
        values = [float(weights.get(t, 1.0)) for t in self.task_names]
        for t, v in zip(self.task_names, values, strict=True):
            if not v >= 0 or v == float("inf"):
                raise BalancerError(
                    f"static: weight of task {t!r} must be finite and >= 0, got {v}"
                )
        self.register_buffer("static_weights", torch.tensor(values))

    def combine(self, step: StepInfo) -> Combination:
        weights = self.static_weights.to(step.losses) * step.present.to(step.losses.dtype)
        return Combination(weights=weights, loss=(weights * step.losses).sum())

    def hyperparameters(self) -> dict[str, Any]:
        return {"weights": dict(zip(self.task_names, self.static_weights.tolist(), strict=True))}
