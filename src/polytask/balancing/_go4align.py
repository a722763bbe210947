"""GO4Align: Group Optimization for Multi-Task Alignment (Shen, Wang, Xiao, van Noord & Worring
2024, NeurIPS) — the loss-only variant.

GO4Align recasts task balancing as *adaptive group risk minimisation*: tasks whose learning
progress is similar are put in the same group and share one weight. Per step, over the present
tasks with losses ``L_i``:

1. risk-guided indicators ``γ_i = s_i · q_i`` combining
   * a scale-balance term ``s_i = (Σ_j L_j) / L_i`` (the weighted losses ``s_i L_i`` are equal), and
   * a historical risk term ``q``: probabilities updated multiplicatively with the step's risks,
     ``p_i <- p_i · exp(-η L_i)``, renormalised (``q`` is ``p`` restricted to the present tasks and
     renormalised);
2. dynamic group assignment: the 1-D indicators are clustered into ``K = min(num_groups, T)``
   groups with k-means, and every task receives the mean indicator of its group ``ω_i``;
3. the loss is ``Σ_i ω_i L_i`` (``ω`` is not differentiated); ``ω`` is reported as the weights.
   With equal losses and uniform ``q`` every weight is 1, the scale of ``equal``.

Choices where the paper leaves room (documented here, following the authors' released code):
the sign and size of the risk update (``exp(-η L)`` with ``η = robust_step_size = 1e-4``), no
gradient through the weights, ``num_groups = 2`` by default (the paper tunes the number of groups
per benchmark). Our k-means is the *exact* 1-D k-means (dynamic programming over the sorted
indicators, as in Wang & Song 2011, "Ckmeans.1d.dp", The R Journal) instead of randomly
initialised Lloyd iterations: the grouping is deterministic, optimal, and identical on every DDP
rank. ``K = 1`` gives every task the mean indicator. Losses must be finite and strictly positive
(``s_i`` divides by them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from polytask.balancing._common import check_int, check_number, require_positive_losses
from polytask.balancing.base import Balancer, Combination, StepInfo, scatter_present
from polytask.balancing.registry import register_balancer

__all__ = ["GO4Align", "kmeans_1d"]


def kmeans_1d(values: Sequence[float], k: int) -> list[int]:
    """Optimal 1-D k-means: the cluster index of each value (clusters ordered by value).

    Dynamic programming over the sorted values minimising the within-cluster sum of squares;
    ``O(k n²)``, exact and deterministic (ties keep the input order).
    """
    n = len(values)
    if n == 0:
        return []
    k = max(1, min(k, n))
    order = sorted(range(n), key=lambda i: (values[i], i))
    x = [float(values[i]) for i in order]
    s1 = [0.0] * (n + 1)
    s2 = [0.0] * (n + 1)
    for i, v in enumerate(x):
        s1[i + 1] = s1[i] + v
        s2[i + 1] = s2[i] + v * v

    def sse(a: int, b: int) -> float:  # values x[a:b]
        m = b - a
        total = s1[b] - s1[a]
        return max(0.0, (s2[b] - s2[a]) - total * total / m)

    inf = float("inf")
    cost = [[inf] * (n + 1) for _ in range(k + 1)]
    back = [[0] * (n + 1) for _ in range(k + 1)]
    cost[0][0] = 0.0
    for c in range(1, k + 1):
        for b in range(c, n + 1):
            best, arg = inf, c - 1
            for a in range(c - 1, b):
                value = cost[c - 1][a] + sse(a, b)
                if value < best:
                    best, arg = value, a
            cost[c][b] = best
            back[c][b] = arg
    labels_sorted = [0] * n
    b = n
    for c in range(k, 0, -1):
        a = back[c][b]
        for i in range(a, b):
            labels_sorted[i] = c - 1
        b = a
    labels = [0] * n
    for rank, i in enumerate(order):
        labels[i] = labels_sorted[rank]
    return labels


@register_balancer("go4align")
class GO4Align(Balancer):
    """Group-level loss weights from scale balance, risk history and 1-D k-means grouping."""

    family = "loss"
    reference = (
        "Shen, Wang, Xiao, van Noord & Worring 2024, GO4Align: Group Optimization for "
        "Multi-Task Alignment, NeurIPS"
    )

    def __init__(
        self, task_names: Sequence[str], num_groups: int = 2, robust_step_size: float = 1e-4
    ) -> None:
        super().__init__(task_names)
        self.num_groups = check_int("go4align", "num_groups", num_groups, low=1)
        self.robust_step_size = check_number(
            "go4align", "robust_step_size", robust_step_size, low=0.0
        )
        t = self.num_tasks
        self.register_buffer("risk_probs", torch.full((t,), 1.0 / t, dtype=torch.float64))

    def _indicators(self, losses: Tensor, present: Tensor) -> Tensor:
        scale = losses.sum() / losses
        with torch.no_grad():
            probs = self.risk_probs.clone()
            probs[present] = probs[present] * torch.exp(-self.robust_step_size * losses)
            probs = probs / probs.sum()
            self.risk_probs.copy_(probs)
        q = probs[present] / probs[present].sum()
        return scale * q

    def combine(self, step: StepInfo) -> Combination:
        require_positive_losses("go4align", step.step, self.task_names, step.losses, step.present)
        present = step.present
        losses = step.losses[present]
        gamma = self._indicators(losses.detach().double(), present.to(self.risk_probs.device))
        labels = kmeans_1d(gamma.tolist(), self.num_groups)
        group = torch.tensor(labels, dtype=torch.long)
        k = int(group.max()) + 1
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, group, gamma.cpu())
        counts = torch.zeros(k, dtype=torch.float64).index_add_(
            0, group, torch.ones_like(gamma.cpu())
        )
        weights = (sums / counts)[group].to(device=losses.device, dtype=losses.dtype)
        return Combination(weights=scatter_present(weights, present), loss=(weights * losses).sum())

    def hyperparameters(self) -> dict[str, Any]:
        return {"num_groups": self.num_groups, "robust_step_size": self.robust_step_size}
