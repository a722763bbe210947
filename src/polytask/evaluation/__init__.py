"""Evaluation: per-task metrics on labelled rows only, Δm%, and single-task baselines."""

from polytask.evaluation.metrics import (
    EvaluationError,
    delta_m,
    evaluate,
    mean_primary,
    predict_outputs,
)

__all__ = ["EvaluationError", "delta_m", "evaluate", "mean_primary", "predict_outputs"]
