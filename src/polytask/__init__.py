"""polytask: multi-task deep learning on PyTorch.

The short path from Python is :class:`polytask.MultiTaskLearner` (``fit`` / ``predict`` / ``save``
/ ``load``); :class:`polytask.Task` describes a target. Both are imported on first use, so that
``import polytask`` (and the CLI's start-up) does not pay for torch and the models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["MultiTaskEstimator", "MultiTaskLearner", "Task", "__version__"]

if TYPE_CHECKING:
    from polytask.api import MultiTaskLearner
    from polytask.sklearn import MultiTaskEstimator
    from polytask.tasks import Task


def __getattr__(name: str) -> Any:
    if name == "MultiTaskLearner":
        from polytask.api import MultiTaskLearner

        return MultiTaskLearner
    if name == "MultiTaskEstimator":  # scikit-learn: the `sklearn` extra, imported on use
        from polytask.sklearn import MultiTaskEstimator

        return MultiTaskEstimator
    if name == "Task":
        from polytask.tasks import Task

        return Task
    raise AttributeError(f"module 'polytask' has no attribute {name!r}")
