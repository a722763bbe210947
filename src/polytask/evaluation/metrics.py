"""Per-task evaluation with torchmetrics, and Δm% against single-task baselines.

Δm% (Maninis et al. 2019; Navon et al. 2022) averages, over tasks, the relative change of each
task's primary metric with respect to its single-task baseline, signed so that lower is better:

    Δm% = 100/T · Σ_i (-1)^{h_i} (M_i - B_i) / |B_i|

where ``M_i`` is the multi-task model's metric, ``B_i`` the single-task baseline's and ``h_i = 1``
when higher is better. A negative Δm means that sharing helped.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from polytask.data.base import TaskData
from polytask.data.batch import move_to
from polytask.tasks import Task

__all__ = [
    "SUMMARY_METRICS",
    "EvaluationError",
    "delta_m",
    "evaluate",
    "pooled_explained_variance",
    "predict_outputs",
]

Metrics = dict[str, dict[str, float]]


class EvaluationError(ValueError):
    pass


@torch.no_grad()
def predict_outputs(
    model: nn.Module, data: TaskData, batch_size: int = 512, device: torch.device | None = None
) -> dict[str, torch.Tensor]:
    """Raw model outputs for every row of ``data``, concatenated per task (on the CPU)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {}
    try:
        for x, _ in data.batches(batch_size):
            for name, out in model(move_to(x, device)).items():
                chunks.setdefault(name, []).append(out.float().cpu())
    finally:
        model.train(was_training)
    return {k: torch.cat(v) for k, v in chunks.items()}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tasks: Sequence[Task],
    data: TaskData,
    batch_size: int = 512,
    device: torch.device | None = None,
) -> tuple[Metrics, dict[str, int]]:
    """Metrics per task on the labelled rows of ``data``, the mean loss, and a warning count.

    Streams: each batch's outputs update the torchmetrics states and the loss sums and are then
    dropped, so evaluating dense outputs (a mask per image) never holds the split's outputs at once.

    A metric that is undefined on this split (e.g. ROC-AUC when the labelled rows hold a single
    class) is reported as NaN *and* counted under ``undefined_metric/<task>/<metric>`` with a
    warning: it is never silently replaced by a number.
    """
    device = device or next(model.parameters()).device
    collections = {t.name: t.make_metrics() for t in tasks}
    loss_sum = dict.fromkeys(collections, 0.0)
    counts = dict.fromkeys(collections, 0)
    fed = dict.fromkeys(collections, 0)
    classes: dict[str, set[float]] = {t.name: set() for t in tasks}
    was_training = model.training
    model.eval()
    try:
        for x, y in data.batches(batch_size):
            outputs = model(move_to(x, device))
            for task in tasks:
                out, target = outputs[task.name].float().cpu(), y[task.name]
                per, count = task.sample_losses(out, target)
                loss_sum[task.name] += float(per.double().sum())
                counts[task.name] += count
                fed[task.name] += task.update_metrics(collections[task.name], out, target)
                if task.kind.value == "binary" and len(classes[task.name]) < 2:
                    labelled = target[task.label_mask(target)]
                    classes[task.name].update(labelled.unique().tolist())
    finally:
        model.train(was_training)
    results: Metrics = {}
    warnings_count: dict[str, int] = {}
    for task in tasks:
        scores: dict[str, float] = {}
        count = counts[task.name]
        scores["loss"] = loss_sum[task.name] / count if count else math.nan
        scores["labelled"] = float(count)
        if fed[task.name] == 0:
            key = f"no_labels/{task.name}"
            warnings_count[key] = warnings_count.get(key, 0) + 1
            warnings.warn(f"task {task.name!r}: no labelled row in {data.name}; metrics are NaN", stacklevel=2)
            scores.update({m: math.nan for m in task.metric_factories()})
            results[task.name] = scores
            continue
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            computed = collections[task.name].compute()
        for name, value in computed.items():
            scores[name] = float(value.float().mean()) if value.numel() else math.nan
        single_class = task.kind.value == "binary" and len(classes[task.name]) < 2
        if single_class and "auroc" in scores:
            scores["auroc"] = math.nan
            key = f"undefined_metric/{task.name}/auroc"
            warnings_count[key] = warnings_count.get(key, 0) + 1
            warnings.warn(
                f"task {task.name!r}: ROC-AUC undefined on {data.name} (one class among the "
                "labelled rows); reported as NaN",
                stacklevel=2,
            )
        results[task.name] = scores
    return results, warnings_count


def delta_m(
    metrics: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]],
    tasks: Sequence[Task],
) -> float:
    """Δm% of ``metrics`` against ``baseline`` on each task's primary metric (lower is better)."""
    terms = []
    for task in tasks:
        key = task.primary
        if task.name not in baseline or key not in baseline[task.name]:
            raise EvaluationError(f"no baseline value of {key!r} for task {task.name!r}")
        m, b = float(metrics[task.name][key]), float(baseline[task.name][key])
        if not (math.isfinite(m) and math.isfinite(b)) or b == 0:
            raise EvaluationError(
                f"Δm undefined for task {task.name!r}: metric {key} = {m}, baseline = {b}"
            )
        sign = -1.0 if task.primary_higher_is_better else 1.0
        terms.append(sign * (m - b) / abs(b))
    return 100.0 * sum(terms) / len(terms)


def mean_primary(metrics: Mapping[str, Mapping[str, float]], tasks: Sequence[Task]) -> float:
    """Mean primary metric, signed so that higher is better (used when no baseline is known)."""
    values = []
    for task in tasks:
        v = float(metrics[task.name][task.primary])
        values.append(v if task.primary_higher_is_better else -v)
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else -math.inf


def pooled_explained_variance(
    model: nn.Module,
    tasks: Sequence[Task],
    data: TaskData,
    batch_size: int = 512,
    device: torch.device | None = None,
) -> float:
    """Explained variance in %, pooled over every labelled entry of every regression task.

    Why: on School (one task per school) the literature scores the model as a whole, as
    ``1 - SSE / SST`` over all test students of all schools (:func:`school_explained_variance`),
    which per-task metrics cannot give: ``SST`` is around the *pooled* mean, so predicting each
    school's mean already explains some variance. Predictions are in the targets' own units
    (:meth:`Task.predict` undoes the training-split standardisation).
    """
    from polytask.data.school import school_explained_variance
    from polytask.tasks import TaskKind

    outputs = predict_outputs(model, data, batch_size, device)
    truth, pred = [], []
    for task in tasks:
        if task.kind is not TaskKind.REGRESSION:
            continue
        y = data.targets[task.name]
        mask = task.label_mask(y)
        p = task.predict(outputs[task.name]).reshape(y.shape)
        truth.append(y[mask].double())
        pred.append(p[mask].double())
    if not truth:
        raise EvaluationError("pooled explained variance needs at least one regression task")
    return school_explained_variance(torch.cat(truth), torch.cat(pred))


#: Whole-model metrics a config can ask for (``summary_metrics``), by name.
SUMMARY_METRICS = {"pooled_explained_variance": pooled_explained_variance}
