"""Training settings: one validated dataclass the loop reads (the YAML config maps onto it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["TrainSettings"]


@dataclass
class TrainSettings:
    """How to train. Every field has a default that works on the bundled demo.

    ``selection`` chooses the validation criterion for model selection and early stopping:
    ``auto`` (Δm against the single-task baselines when they are known, else the mean primary
    metric), ``delta_m``, ``mean_primary``, ``val_loss`` or ``<task>/<metric>``. The test split is
    evaluated once, with the selected model, and never influences any choice.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    momentum: float = 0.9
    scheduler: Literal["none", "cosine", "step", "plateau"] = "none"
    step_size: int = 10
    gamma: float = 0.5
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    patience: int | None = None
    selection: str = "auto"
    engine: Literal["jacobian", "gramian", "representation"] = "jacobian"
    chunk_size: int | None = None
    dist_mode: Literal["exact", "cheap"] = "exact"
    eval_batch_size: int = 1024
    progress: bool = True
    tensorboard: bool = True
    checkpoint_every: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "step_size": self.step_size >= 1,
            "gamma": 0 < self.gamma <= 1,
            "grad_clip": self.grad_clip is None or self.grad_clip > 0,
            "patience": self.patience is None or self.patience >= 1,
            "chunk_size": self.chunk_size is None or self.chunk_size >= 1,
            "checkpoint_every": self.checkpoint_every >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                "invalid training setting(s): "
                + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
