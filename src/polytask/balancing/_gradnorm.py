"""GradNorm: gradient normalisation for adaptive loss balancing (Chen, Badrinarayanan, Lee &
Rabinovich 2018, ICML).

Learnable task weights ``w_i`` (initialised to 1, ``Σ w_i = T``) are tuned so that every task trains
at a similar *rate*. With ``n_i = ||∇L_i||`` the norm of the task's gradient, the weighted norms
``G_i = w_i n_i``, their mean ``Ḡ`` and the relative inverse training rate
``r_i = L̃_i / mean_j L̃_j`` where ``L̃_i = L_i(t) / L_i(0)``, the targets are ``Ḡ r_i^α`` (held constant)
and the weights descend ``L_grad = Σ_i |w_i n_i - Ḡ r_i^α|``. The gradient is closed-form,
``∂L_grad/∂w_i = sign(w_i n_i - Ḡ r_i^α) n_i``, so each step does
``w <- w - lr · sign(·) n`` (our own small SGD step; ``lr = 0.025``) and then renormalises so that
the weights still sum to ``T`` (the paper's renormalisation). The update of the model uses the
weights *before* this step, as in the paper; weights are kept above ``1e-6`` before renormalising.
``α = 1.5`` is the paper's NYUv2 value (the restoring-force strength; 0 equalises gradient norms).

Gradient norms come from the Gramian diagonal ``n_i = sqrt(G_ii)``: the gradients of *all* shared
parameters (engine modes jacobian/gramian) or of the shared representation (representation mode).
The paper uses the last shared layer's weights to save compute; the Gramian mode gives all shared
parameters at a similar cost. ``L_i(0)`` is the task's loss the first time it is present (a buffer,
checkpointed with ``w``); with a missing task, only the present tasks' weights move and they keep
their total, so absent weights are unchanged and ``Σ w = T`` still holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from polytask.balancing._common import check_number
from polytask.balancing.base import Balancer, BalancerError, Combination, Needs, StepInfo
from polytask.balancing.registry import register_balancer

__all__ = ["GradNorm"]


@register_balancer("gradnorm")
class GradNorm(Balancer):
    """Weights that equalise the tasks' weighted gradient norms, modulated by training rates."""

    family = "gradient"
    needs = Needs(gradients="gramian")
    reference = (
        "Chen, Badrinarayanan, Lee & Rabinovich 2018, GradNorm: Gradient Normalization for "
        "Adaptive Loss Balancing in Deep Multitask Networks, ICML"
    )

    def __init__(self, task_names: Sequence[str], alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__(task_names)
        self.alpha = check_number("gradnorm", "alpha", alpha, low=0.0)
        self.lr = check_number("gradnorm", "lr", lr, low=0.0, low_inclusive=False)
        t = self.num_tasks
        self.register_buffer("task_weights", torch.ones(t, dtype=torch.float64))
        self.register_buffer("initial_losses", torch.full((t,), float("nan"), dtype=torch.float64))

    def combine(self, step: StepInfo) -> Combination:
        assert step.gramian is not None
        device = self.task_weights.device
        present = step.present.to(device)
        index = present.nonzero().flatten()
        losses = step.losses.detach().double().to(device)[index]
        bad = ~torch.isfinite(losses) | (losses <= 0)
        if bool(bad.any()):
            raise BalancerError(
                f"gradnorm: task(s) {self._names(index[bad])} have the loss(es) "
                f"{losses[bad].tolist()} at step {step.step} (epoch {step.epoch}); GradNorm needs "
                "finite, strictly positive losses (training rates are loss ratios)"
            )
        weights_now = self.task_weights.clone()
        with torch.no_grad():
            initial = self.initial_losses[index]
            initial = torch.where(torch.isnan(initial), losses, initial)
            self.initial_losses[index] = initial
            norms = step.gramian.detach().double().diagonal().clamp(min=0.0).sqrt().to(device)
            w = self.task_weights[index]
            weighted = w * norms
            ratio = losses / initial
            rate = ratio / ratio.mean()
            target = weighted.mean() * rate**self.alpha
            grad = torch.sign(weighted - target) * norms
            total = float(w.sum())
            new = (w - self.lr * grad).clamp(min=1e-6)
            new = new * (total / float(new.sum()))
            if not bool(torch.isfinite(new).all()):
                off = ~torch.isfinite(norms)  # the cause when there is one, else the symptom
                off = off if bool(off.any()) else ~torch.isfinite(new)
                raise BalancerError(
                    f"gradnorm: the task weights became non-finite at step {step.step} (epoch "
                    f"{step.epoch}); gradient norm(s) of task(s) {self._names(index[off])}: "
                    f"{norms[off].tolist()}. Training has probably diverged: lower training.lr "
                    "or set training.grad_clip"
                )
            self.task_weights[index] = new
        out = (weights_now * present.double()).to(
            device=step.losses.device, dtype=step.losses.dtype
        )
        return Combination(weights=out)

    def _names(self, index: torch.Tensor) -> list[str]:
        """Task names of the given task indices, for messages that say which task failed."""
        return [self.task_names[int(i)] for i in index.tolist()]

    def hyperparameters(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "lr": self.lr}
