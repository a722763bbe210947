"""Training settings: the validated training config, plus what one run adds.

:class:`~polytask.config.TrainingConfig` is the one definition of every training key (type,
default, bounds, description). The loop reads a :class:`TrainSettings`, which *is* that model
extended by the three things a single run adds: its ``seed`` (an experiment has a list of seeds),
how often it writes its checkpoint, and labels for its ``results.json``. A key added to the config
therefore reaches the loop with its validation and help text, and the two can no longer drift
(a second hand-written class used to repeat every field and its checks).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from polytask.config import TrainingConfig

__all__ = ["TrainSettings"]


class TrainSettings(TrainingConfig):
    """How to train one run: every training key of the config, plus the run's own settings.

    Every field has a default that works on the bundled demo. ``selection`` chooses the validation
    criterion for model selection and early stopping: ``auto`` (Δm against the single-task
    baselines when they are known, else the mean primary metric), ``delta_m``, ``mean_primary``,
    ``val_loss`` or ``<task>/<metric>``. The test split is evaluated once, with the selected
    model, and never influences any choice. ``sampling`` is read where the batches are built
    (``run_experiment``), not by :func:`~polytask.training.loop.fit`, which takes a
    ``train_source``.
    """

    seed: int = Field(0, description="seed of the run: initial weights, batches, balancer")
    checkpoint_every: int = Field(
        1, ge=1, description="write checkpoints/last.pt every this many epochs (and at the end)"
    )
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="labels of the run written to results.json (balancer, architecture)",
    )

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()
