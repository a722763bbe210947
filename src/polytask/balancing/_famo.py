"""FAMO: Fast Adaptive Multitask Optimization (Liu, Feng, Stone & Liu 2023, NeurIPS).

FAMO decreases all task losses at about the same *relative* rate using loss values only.

Update rule (over the tasks present in the batch, with ``D_i = L_i - b_i + ε``):

* combined loss ``L = Σ_i (z_i / c) log D_i`` with ``z = softmax(w)`` and the constant
  ``c = Σ_i z_i / D_i`` (not differentiated), so that the update ``Σ_i (z_i / (c D_i)) ∇L_i`` is a
  convex combination of the task gradients; the reported weights are these ``z_i / (c D_i)``;
* after the optimizer step the engine recomputes the losses on the same batch (one extra forward,
  ``needs.after_step``) and :meth:`FAMO.after_step` measures the log-loss decrease
  ``δ_i = log D_i(before) - log D_i(after)``; the gradient of the logits is
  ``∂(zᵀδ)/∂w = z ⊙ (δ - zᵀδ)`` and ``w`` takes one Adam step (learning rate ``lr``, L2 weight
  decay ``weight_decay``) *down* that gradient, which moves weight to the tasks that improved least.

Defaults follow the paper: ``lr=0.025``, ``weight_decay=1e-3`` (Algorithm 2; the official code uses
``1e-5``), ``b = 0`` (``min_losses``), ``ε = 1e-8``.

Implementation notes. The Adam update is written out on buffers (first/second moments and a step
count per task) so that the whole state is plain tensors in ``state_dict()`` and a checkpoint
restores FAMO exactly. Only the logits of tasks present both before and after the step are updated
(an absent task has no measured progress), with per-task bias correction; torch's ``Adam`` would
also decay the moments of absent tasks. Losses must stay above ``min_losses``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from polytask.balancing._common import check_number
from polytask.balancing.base import Balancer, BalancerError, Combination, Needs, StepInfo
from polytask.balancing.registry import register_balancer

__all__ = ["FAMO"]


@register_balancer("famo")
class FAMO(Balancer):
    """Loss-only balancing that equalises the tasks' rates of log-loss decrease."""

    family = "loss"
    needs = Needs(gradients="none", after_step=True)
    reference = "Liu, Feng, Stone & Liu 2023, FAMO: Fast Adaptive Multitask Optimization, NeurIPS"

    def __init__(
        self,
        task_names: Sequence[str],
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        min_losses: Mapping[str, float] | None = None,
        eps: float = 1e-8,
        betas: Sequence[float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
    ) -> None:
        super().__init__(task_names)
        self.lr = check_number("famo", "lr", lr, low=0.0, low_inclusive=False)
        self.weight_decay = check_number("famo", "weight_decay", weight_decay, low=0.0)
        self.eps = check_number("famo", "eps", eps, low=0.0, low_inclusive=False)
        if not isinstance(betas, Sequence) or len(betas) != 2:
            raise BalancerError(f"famo: hyper-parameter 'betas' must be two numbers, got {betas!r}")
        self.betas = (
            check_number("famo", "betas[0]", betas[0], low=0.0, high=1.0, high_inclusive=False),
            check_number("famo", "betas[1]", betas[1], low=0.0, high=1.0, high_inclusive=False),
        )
        self.adam_eps = check_number("famo", "adam_eps", adam_eps, low=0.0, low_inclusive=False)
        bounds = dict(min_losses or {})
        unknown = set(bounds) - set(self.task_names)
        if unknown:
            raise BalancerError(f"famo: min_losses given for unknown task(s) {sorted(unknown)}")
        values = [
            check_number("famo", f"min_losses[{t!r}]", bounds.get(t, 0.0)) for t in self.task_names
        ]
        t = self.num_tasks
        self.register_buffer("min_losses", torch.tensor(values, dtype=torch.float64))
        self.register_buffer("logits", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("adam_m", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("adam_v", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("adam_steps", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("prev_losses", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("prev_present", torch.zeros(t, dtype=torch.bool))

    def _shifted(self, losses: Tensor, present: Tensor, step: int | None, when: str) -> Tensor:
        shifted = losses[present] - self.min_losses[present].to(losses) + self.eps
        bad = ~(torch.isfinite(shifted) & (shifted > 0))
        if bool(bad.any()):
            name = [n for n, p in zip(self.task_names, present.tolist(), strict=True) if p][
                int(bad.nonzero()[0, 0])
            ]
            at = "" if step is None else f" at step {step}"
            raise BalancerError(
                f"famo: the loss of task {name!r} {when}{at} is not above its min_loss; FAMO takes "
                "log(loss - min_loss), which must be finite"
            )
        return shifted

    def combine(self, step: StepInfo) -> Combination:
        present = step.present
        shifted = self._shifted(step.losses, present, step.step, "")
        z = torch.softmax(self.logits[present], dim=0).to(step.losses)
        c = (z / shifted.detach()).sum()
        loss = (z / c * torch.log(shifted)).sum()
        weights = step.losses.new_zeros(self.num_tasks)
        weights[present] = (z / (c * shifted.detach())).detach()
        with torch.no_grad():
            self.prev_losses.copy_(step.losses.detach().double())
            self.prev_present.copy_(present)
        return Combination(weights=weights, loss=loss)

    @torch.no_grad()
    def after_step(self, losses_after: Tensor, present: Tensor) -> None:
        mask = present.to(self.prev_present.device) & self.prev_present
        self.prev_present.zero_()
        if not bool(mask.any()):
            return
        before = self._shifted(self.prev_losses, mask, None, "before the update")
        after = self._shifted(losses_after.detach().double(), mask, None, "after the update")
        delta = torch.log(before) - torch.log(after)
        z = torch.softmax(self.logits[mask], dim=0)
        grad = z * (delta - (z * delta).sum())
        w = self.logits[mask]
        grad = grad + self.weight_decay * w
        b1, b2 = self.betas
        m = b1 * self.adam_m[mask] + (1 - b1) * grad
        v = b2 * self.adam_v[mask] + (1 - b2) * grad * grad
        t = self.adam_steps[mask] + 1
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        self.logits[mask] = w - self.lr * m_hat / (v_hat.sqrt() + self.adam_eps)
        self.adam_m[mask] = m
        self.adam_v[mask] = v
        self.adam_steps[mask] = t
        if not bool(torch.isfinite(self.logits).all()):
            raise BalancerError("famo: the task logits became non-finite")

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "min_losses": dict(zip(self.task_names, self.min_losses.tolist(), strict=True)),
            "eps": self.eps,
            "betas": list(self.betas),
            "adam_eps": self.adam_eps,
        }
