"""Training: the loop, its settings, checkpoints and run-directory logging."""

from polytask.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from polytask.training.divergence import DivergenceError, DivergenceMonitor
from polytask.training.loop import FitResult, NonFiniteLossError, TrainingError, fit, resolve_device
from polytask.training.settings import TrainSettings

__all__ = [
    "CheckpointError",
    "DivergenceError",
    "DivergenceMonitor",
    "FitResult",
    "NonFiniteLossError",
    "TrainSettings",
    "TrainingError",
    "fit",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
]
