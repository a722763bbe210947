"""Dynamic Weight Average (Liu, Johns & Davison 2019, MTAN paper).

``w_i(t) = T · softmax_i(r_i(t-1) / τ)`` with ``r_i(t-1) = L̄_i(t-1) / L̄_i(t-2)``, the ratio of the
task's average training loss over the two previous epochs. The first two epochs use equal weights.
Epoch averages are accumulated here from the per-step losses of the present tasks, so a task absent
from some batches is averaged over the batches where it was present.

With missing labels, the softmax runs over the tasks present in the batch that have two epochs of
history (``T`` then counts those tasks); a present task without that history yet gets weight 1. An
absent task thus never changes the weights of the others, and a task that has not been seen for two
epochs does not hold every other task at equal weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from polytask.balancing._common import check_number
from polytask.balancing.base import Balancer, Combination, StepInfo
from polytask.balancing.registry import register_balancer

__all__ = ["DWA"]


@register_balancer("dwa")
class DWA(Balancer):
    """Weights from the rate of change of each task's epoch-average loss."""

    family = "loss"
    reference = "Liu, Johns & Davison 2019, End-to-End Multi-Task Learning with Attention, CVPR"

    def __init__(self, task_names: Sequence[str], temperature: float = 2.0) -> None:
        super().__init__(task_names)
        self.temperature = check_number(
            "dwa", "temperature", temperature, low=0.0, low_inclusive=False
        )
        t = len(task_names)
        self.register_buffer("epoch_sum", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("epoch_count", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("history", torch.full((2, t), float("nan"), dtype=torch.float64))
        self.register_buffer("current_epoch", torch.tensor(-1))

    def _roll(self, epoch: int) -> None:
        if int(self.current_epoch) >= 0 and epoch != int(self.current_epoch):
            mean = self.epoch_sum / self.epoch_count.clamp(min=1)
            mean = torch.where(self.epoch_count > 0, mean, self.history[1])
            self.history[0] = self.history[1]
            self.history[1] = mean
            self.epoch_sum.zero_()
            self.epoch_count.zero_()
        self.current_epoch.fill_(epoch)

    def combine(self, step: StepInfo) -> Combination:
        self._roll(step.epoch)
        present = step.present
        self.epoch_sum[present] += step.losses.detach()[present].double()
        self.epoch_count[present] += 1
        prev, last = self.history[0], self.history[1]
        here = present.to(prev.device)
        ready = here & torch.isfinite(prev) & torch.isfinite(last) & (prev > 0)
        weights = here.double()
        if bool(ready.any()):
            ratio = last[ready] / prev[ready]
            weights[ready] = int(ready.sum()) * torch.softmax(ratio / self.temperature, dim=0)
        weights = weights.to(device=step.losses.device, dtype=step.losses.dtype)
        return Combination(weights=weights, loss=(weights * step.losses).sum())

    def hyperparameters(self) -> dict[str, Any]:
        return {"temperature": self.temperature}
