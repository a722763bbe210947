"""Smooth Tchebycheff scalarisation, STCH (Lin, Zhang, Liu, Zhang & Zhang 2024, ICML).

The Tchebycheff scalarisation ``max_i λ_i (f_i - z_i)`` optimises the worst task but is not
smooth; STCH replaces the max by its log-sum-exp smoothing
``μ log Σ_i exp(λ_i (f_i - z_i) / μ)`` (torchjd's ``STCH`` scalarizer), which tends to the max as
``μ -> 0``. For multi-task learning the authors' code applies it to log-normalised losses:

``f_i = log L_i``, ``z_i = log N_i`` (``N`` the *nadir* point, the average training loss at the end of
the warm-up), ``λ_i = 1`` and the result multiplied by the number of present tasks ``T``:
``L = T μ log Σ_i exp(log(L_i / N_i) / μ)``. The reported weights are the effective gradient weights
``T softmax_i(log(L_i/N_i)/μ) / L_i``.

Warm-up (as in the authors' code): during the first ``warmup_epochs`` epochs the loss is the
scale-invariant ``Σ_i log L_i``; the per-task training losses of the *last* warm-up epoch are
averaged into ``N``. From epoch ``warmup_epochs`` on, STCH is used. ``warmup_epochs=5`` equals the
authors' ``STCH_warmup_epoch=4`` (four plain epochs plus the averaging epoch); ``warmup_epochs=0``
takes each task's first observed loss as its nadir. A task never seen during the averaging epoch
also gets its first observed loss as nadir. Default ``μ = 1`` (the authors' multi-task setting).
All losses must be finite and strictly positive. The nadir is a buffer, so checkpoints resume
exactly, warm-up included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchjd.scalarization import STCH as _TorchjdSTCH

from polytask.balancing._common import check_int, check_number, require_positive_losses
from polytask.balancing.base import Balancer, Combination, StepInfo, scatter_present
from polytask.balancing.registry import register_balancer

__all__ = ["STCH"]


@register_balancer("stch")
class STCH(Balancer):
    """Smoothed worst-task (Tchebycheff) objective on nadir-normalised log losses."""

    family = "loss"
    reference = (
        "Lin, Zhang, Liu, Zhang & Zhang 2024, Smooth Tchebycheff Scalarization for "
        "Multi-Objective Optimization, ICML"
    )

    def __init__(self, task_names: Sequence[str], mu: float = 1.0, warmup_epochs: int = 5) -> None:
        super().__init__(task_names)
        self.mu = check_number("stch", "mu", mu, low=0.0, low_inclusive=False)
        self.warmup_epochs = check_int("stch", "warmup_epochs", warmup_epochs, low=0)
        t = self.num_tasks
        self.register_buffer("nadir", torch.full((t,), float("nan"), dtype=torch.float64))
        self.register_buffer("warmup_sum", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("warmup_count", torch.zeros(t, dtype=torch.float64))

    def combine(self, step: StepInfo) -> Combination:
        require_positive_losses("stch", step.step, self.task_names, step.losses, step.present)
        present = step.present
        losses = step.losses[present]
        if step.epoch < self.warmup_epochs:
            if step.epoch == self.warmup_epochs - 1:
                with torch.no_grad():
                    self.warmup_sum[present] += losses.detach().double()
                    self.warmup_count[present] += 1
            return Combination(
                weights=scatter_present(1.0 / losses.detach(), present),
                loss=torch.log(losses).sum(),
            )
        with torch.no_grad():
            unset = present & torch.isnan(self.nadir)
            if bool(unset.any()):
                averaged = self.warmup_sum / self.warmup_count.clamp(min=1)
                current = step.losses.detach().double()
                fill = torch.where(self.warmup_count > 0, averaged, current)
                self.nadir[unset] = fill[unset]
        log_nadir = torch.log(self.nadir[present]).to(losses)
        n = losses.numel()
        smooth_max = _TorchjdSTCH(mu=self.mu, weights=torch.ones_like(losses), reference=log_nadir)
        loss = n * smooth_max(torch.log(losses))
        with torch.no_grad():
            soft = torch.softmax((torch.log(losses) - log_nadir) / self.mu, dim=0)
            effective = n * soft / losses
        return Combination(weights=scatter_present(effective.detach(), present), loss=loss)

    def hyperparameters(self) -> dict[str, Any]:
        return {"mu": self.mu, "warmup_epochs": self.warmup_epochs}
