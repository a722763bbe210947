"""Evaluation: per-task metrics on labelled rows only, Δm%, and single-task baselines."""

from polytask.evaluation.metrics import (
    SUMMARY_METRICS,
    EvaluationError,
    delta_m,
    evaluate,
    mean_primary,
    pooled_explained_variance,
    predict_outputs,
)

__all__ = [
    "SUMMARY_METRICS",
    "EvaluationError",
    "delta_m",
    "evaluate",
    "mean_primary",
    "pooled_explained_variance",
    "predict_outputs",
]
