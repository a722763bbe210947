"""IMTL-L, the loss-balancing half of Impartial Multi-Task Learning (Liu et al. 2021, ICLR): a
declared alias of ``uncertainty``.

As published, each task has a learnable log-scale ``s_i`` (initialised to ``init``, 0 in the paper)
and the combined loss is ``Σ_i (e^{s_i} L_i - s_i)`` over the present tasks, ``s`` being trained by
the model's optimizer; its minimum over ``s_i`` is at ``e^{s_i} L_i = 1`` (scaled losses of equal
magnitude). Why an alias and not a method of its own: with ``s'_i = -s_i`` that loss is
``Σ_i (e^{-s'_i} L_i + s'_i)``, which is exactly uncertainty weighting's loss as polytask implements
it (Kendall et al. 2018 without the 1/2 factors of regression, the same form for every task kind).
The two give the same gradient to the model and opposite gradients to ``s`` and ``s'``, so any
optimizer that treats a coordinate and its negation alike (SGD, momentum, Adam, AdamW and their
decoupled weight decay, all element-wise and odd in the gradient) keeps ``s' = -s`` at every step:
the updates are identical, not merely similar (torchjd's documentation of its ``IMTLL`` reaches the
same conclusion, up to the 1/2 factors). There is no other published IMTL-L update to implement:
the paper learns ``s`` by gradient descent on that very loss. Under its own name the paper's
configurations keep working, but ``polytask list balancers`` and docs/balancers.md say it is
``uncertainty``.

Implementation: :class:`~polytask.balancing._uncertainty.Uncertainty` itself, built with
``init = -init`` so that ``init`` keeps the paper's meaning (the initial log-scale ``s``). The
learned parameter is therefore ``log_vars = -s`` (``log_scales`` reads ``s``); the reported weights
are ``e^{s_i}``, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from polytask.balancing._common import check_number
from polytask.balancing._uncertainty import Uncertainty
from polytask.balancing.registry import register_balancer

__all__ = ["IMTLL"]


@register_balancer(
    "imtl_l",
    alias_of="uncertainty",
    alias_reason="e^s L - s is e^{-s'} L + s' with s' = -s, which SGD, Adam and AdamW keep "
    "at every step",
)
class IMTLL(Uncertainty):
    """``L = Σ_i e^{s_i} L_i - s_i``: uncertainty weighting with ``s = -log_vars``."""

    reference = (
        "Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang 2021, Towards Impartial Multi-task "
        "Learning, ICLR (IMTL-L)"
    )

    def __init__(self, task_names: Sequence[str], init: float = 0.0) -> None:
        value = check_number("imtl_l", "init", init)
        super().__init__(task_names, init=-value)
        self.init = value  # the paper's initial log-scale s (reported by hyperparameters())

    @property
    def log_scales(self) -> Tensor:
        """The paper's ``s`` (a view of ``-log_vars``, for reading; train ``log_vars``)."""
        return -self.log_vars

    def hyperparameters(self) -> dict[str, Any]:
        return {"init": self.init}
