"""Mixed precision of a run: the autocast dtype and, for float16, the gradient scaler.

``training.amp``:

* ``false``: float32 throughout; every method below is a no-op (no autocast context is entered).
* ``bf16`` (``true`` means the same, as before this option had values): the forward pass runs
  under bfloat16 autocast, on CPU or CUDA. bfloat16 has float32's exponent range, so gradients
  need no scaling.
* ``fp16``: float16 autocast on CUDA, with a :class:`torch.amp.GradScaler`. float16 gradients
  underflow without loss scaling, so the gradient strategy differentiates the losses times the
  scale (:mod:`polytask.balancing.strategies`; the balancer still reads unscaled values), the
  gradients are unscaled before clipping, and the scaler skips an update whose gradients hold inf
  or NaN (and lowers the scale). :meth:`Precision.step` reports a skipped update; the loop counts
  it as a warning. CPU autocast has no float16 loss scaling: refused, pointing at bf16.

The task losses are computed in float32 outside autocast, and balancer math (Jacobians, Gramians,
solvers) runs in float32 at least, whatever the forward's dtype.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Precision", "PrecisionError", "autocast_dtype"]


class PrecisionError(ValueError):
    """A mixed-precision setting that cannot work on the run's device."""


def autocast_dtype(amp: bool | str) -> torch.dtype | None:
    """The autocast dtype of ``training.amp`` (``None``: full precision)."""
    if amp is False:
        return None
    if amp is True or amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    raise PrecisionError(f"amp must be false, true, 'bf16' or 'fp16', got {amp!r}")


@dataclass
class Precision:
    """Autocast and loss scaling for one run on ``device``; build it with :meth:`of`."""

    device: torch.device
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def of(cls, amp: bool | str, device: torch.device) -> Precision:
        """The precision of ``training.amp`` on ``device``; fp16 off CUDA is refused."""
        dtype = autocast_dtype(amp)
        if dtype is torch.float16 and device.type != "cuda":
            raise PrecisionError(
                f"amp: fp16 needs a CUDA device (float16 training needs loss scaling, which "
                f"polytask does with CUDA's GradScaler), but the run is on {device.type!r}; use "
                "amp: bf16 (bfloat16 autocast works on CPU and CUDA and needs no scaling) or "
                "amp: false"
            )
        scaler = torch.amp.GradScaler("cuda") if dtype is torch.float16 else None
        return cls(device=device, dtype=dtype, scaler=scaler)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context the forward pass runs in (nothing at all in full precision)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def loss_scale(self) -> Tensor | None:
        """The current fp16 loss scale as a 0-dim tensor on the device (no host sync); else None."""
        if self.scaler is None:
            return None
        # GradScaler.scale multiplies by its scale (initialising it on first use): scaling a one
        # reads the scale without a host synchronisation.
        return self.scaler.scale(torch.ones((), device=self.device))

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the loss scale (before clipping), noting inf/NaN."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Apply the update; ``False`` when the fp16 scaler skipped it (inf/NaN gradients)."""
        if self.scaler is None:
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= before  # the scale is lowered exactly on a skip

    def state_dict(self) -> dict[str, Any] | None:
        """The scaler's state for the checkpoint (exact resume); ``None`` without a scaler."""
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
