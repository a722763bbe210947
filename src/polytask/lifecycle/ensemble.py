"""Ensembles of trained runs: per-task averages of their predictions, members chosen on validation.

Why per task: runs that differ by seed, architecture or balancer rarely rank the same on every
task (one balancer helps a rare assay, another a common one), so each task gets its own weighted
average of the members. Members are combined in the target's own space: probabilities for
binary / multilabel / multiclass tasks, values in the target's units for regression (a mean of
logits or of standardised values would weigh members by their confidence or by a scale they
happen to share).

Selection is Caruana et al. (2004) greedy forward selection *with replacement*: start from an
empty ensemble, repeatedly add the member whose addition most improves the task's primary metric
on the **validation** split, and keep the best prefix of those additions; a member added k times
gets weight k / total. It can only pick from what validation shows, and the test split is scored
once, with the weights already fixed.

The runs must describe the same problem: the same tasks (names and kinds), the same data options
and the same split (the same ``data.split_seed``, or the same run seed when the split follows the
seed); otherwise a member would have trained on rows another one is tested on. What differs is
named before any work.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from polytask.data.base import MultiTaskData, Splits, TaskData
from polytask.data.batch import Inputs
from polytask.evaluation.metrics import predict_outputs
from polytask.experiment import load_data
from polytask.inference import load_run
from polytask.lifecycle._run import RunModel, check_run_dir, load_run_model
from polytask.lifecycle._table import markdown_table
from polytask.models.base import MultiTaskModel
from polytask.tasks import Task

__all__ = [
    "EnsembleError",
    "EnsembleResult",
    "RunEnsemble",
    "build_ensemble",
    "check_averageable",
    "greedy_weights",
    "member_prediction",
    "score_prediction",
]

Metrics = dict[str, dict[str, float]]
_SUPPORTED = ("binary", "multilabel", "multiclass", "regression")
_EPS = 1e-15


class EnsembleError(ValueError):
    """Runs that cannot be ensembled, or a task an ensemble cannot score; names what and where."""


# ---------------------------------------------------------------------------------- prediction space
def member_prediction(task: Task, output: Tensor) -> Tensor:
    """One member's raw output as what is averaged: probabilities, or values in target units.

    Computed in the output's dtype (as the member itself reports them), then widened to float64
    so that averaging adds no rounding of its own.
    """
    kind = check_averageable(task)
    if kind == "multiclass":
        return torch.softmax(output, dim=-1).double()
    if kind == "multilabel":
        return torch.sigmoid(output).double()
    return task.predict(output).double()


def check_averageable(task: Task) -> str:
    """The task's kind, or an error naming the task and its kind if members cannot be averaged.

    Why dense, token and detection kinds are refused: their outputs are maps, sequences or sets of
    boxes whose average is not a prediction of that kind (boxes of different members do not
    correspond), and their metrics are not computed from one averaged tensor here.
    """
    kind = task.kind.value
    if kind not in _SUPPORTED:
        raise EnsembleError(
            f"task {task.name!r}: kind {kind} cannot be averaged; ensembles support {_SUPPORTED}"
        )
    return kind


def _to_output(task: Task, pred: Tensor) -> Tensor:
    """The raw output whose prediction is ``pred``: what the task's loss and metrics read."""
    kind = task.kind.value
    if kind in ("binary", "multilabel"):
        p = pred.clamp(_EPS, 1 - _EPS)
        out = torch.log(p) - torch.log1p(-p)
        return out.unsqueeze(-1) if kind == "binary" else out
    if kind == "multiclass":
        return torch.log(pred.clamp_min(_EPS))
    out = (pred - task.target_mean_) / task.target_std_ if task.standardize else pred
    return out.unsqueeze(-1) if out.ndim == 1 else out


def score_prediction(task: Task, pred: Tensor, target: Tensor) -> dict[str, float]:
    """The task's metrics (its own torchmetrics) and mean loss for a combined prediction."""
    out = _to_output(task, pred)
    metrics = task.make_metrics()
    fed = task.update_metrics(metrics, out, target)
    if fed == 0:
        raise EnsembleError(f"task {task.name!r}: no labelled row to score the ensemble on")
    per, count = task.sample_losses(out, target)
    with warnings.catch_warnings():  # a one-class split is reported as NaN below, not warned
        warnings.simplefilter("ignore")
        scores = {k: float(v.float().mean()) for k, v in metrics.compute().items()}
    if task.kind.value == "binary" and "auroc" in scores:
        labelled = target[task.label_mask(target)]
        if labelled.unique().numel() < 2:  # ROC-AUC undefined, as evaluate() reports it
            scores["auroc"] = math.nan
    scores["loss"] = float(per.double().sum()) / count
    return scores


def greedy_weights(
    preds: Sequence[Tensor], score: Callable[[Tensor], float], rounds: int
) -> list[float]:
    """Caruana greedy forward selection with replacement; ``score`` is higher-is-better.

    Returns one weight per member (summing to 1): the best-scoring prefix of ``rounds`` greedy
    additions. Ties go to the earlier member, so the result is deterministic.
    """
    if not preds:
        raise EnsembleError("greedy selection needs at least one member")
    if rounds < 1:
        raise EnsembleError(f"rounds must be >= 1, got {rounds}")
    counts = [0] * len(preds)
    total = torch.zeros_like(preds[0])
    best_counts, best_score = list(counts), -math.inf
    for step in range(1, rounds + 1):
        trial = [score((total + p) / step) for p in preds]
        finite = [s if math.isfinite(s) else -math.inf for s in trial]
        pick = int(np.argmax(finite))
        counts[pick] += 1
        total = total + preds[pick]
        if finite[pick] > best_score:
            best_score, best_counts = finite[pick], list(counts)
    if not math.isfinite(best_score):
        raise EnsembleError("every candidate ensemble scored NaN on validation")
    n = sum(best_counts)
    return [c / n for c in best_counts]


def _combine(preds: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    out = torch.zeros_like(preds[0])
    for p, w in zip(preds, weights, strict=True):
        if w:
            out = out + w * p
    return out


# ---------------------------------------------------------------------------------- compatibility
def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def check_compatible(run_dirs: Sequence[Path]) -> None:
    """Same tasks, same data, same split in every run; the first difference is named."""
    if len(run_dirs) < 2:
        raise EnsembleError(f"an ensemble needs at least 2 runs, got {len(run_dirs)}")
    if len({p.resolve() for p in run_dirs}) != len(run_dirs):
        raise EnsembleError("a run is given twice; each run is one member")
    for p in run_dirs:
        check_run_dir(p)
    first = load_run(run_dirs[0])
    for t in first.tasks:  # before any model is built or any data read
        check_averageable(t)
    ref_tasks = [(t.name, t.kind.value, t.output_dim) for t in first.tasks]
    ref_data = _flat(first.config.data.model_dump(mode="json", exclude={"split_seed"}))
    ref_split = _split_seed(first.config.data.split_seed, first.seed)
    for p in run_dirs[1:]:
        run = load_run(p)
        tasks = [(t.name, t.kind.value, t.output_dim) for t in run.tasks]
        if tasks != ref_tasks:
            raise EnsembleError(
                f"runs differ in their tasks: {run_dirs[0]} has {ref_tasks}, {p} has {tasks} "
                "(name, kind, width)"
            )
        data = _flat(run.config.data.model_dump(mode="json", exclude={"split_seed"}))
        diff = sorted(k for k in set(data) | set(ref_data) if data.get(k) != ref_data.get(k))
        if diff:
            shown = ", ".join(f"data.{k}: {ref_data.get(k)!r} vs {data.get(k)!r}" for k in diff)
            raise EnsembleError(f"runs differ in their data: {run_dirs[0]} vs {p}: {shown}")
        split = _split_seed(run.config.data.split_seed, run.seed)
        if split != ref_split:
            raise EnsembleError(
                f"runs were split differently: {run_dirs[0]} with split seed {ref_split}, {p} with "
                f"{split}; members would be scored on rows others trained on. Train the seeds "
                "with a fixed data.split_seed"
            )


def _load_members(runs: Sequence[Path], splits: Splits | None) -> tuple[Splits, list[RunModel]]:
    """Check the runs describe one problem, then load their data once and every selected model."""
    check_compatible(runs)
    if splits is None:
        first = load_run(runs[0])
        splits = load_data(first.config, first.seed)
    return splits, [load_run_model(p, splits=splits) for p in runs]


def _split_seed(split_seed: int | None, seed: int) -> int:
    return seed if split_seed is None else split_seed


# ---------------------------------------------------------------------------------- the ensemble
class RunEnsemble:
    """Trained runs combined per task with fixed weights; predicts and scores like one model.

    ``weights[task]`` holds one weight per member (summing to 1). Build one with
    :func:`build_ensemble` (weights chosen on validation), reload one with :meth:`load`.
    """

    def __init__(
        self,
        run_dirs: Sequence[str | Path],
        weights: dict[str, list[float]],
        models: Sequence[MultiTaskModel],
        tasks: Sequence[Task],
    ) -> None:
        self.run_dirs = [Path(p) for p in run_dirs]
        self.models = list(models)
        self.tasks = list(tasks)
        self.weights = {k: list(v) for k, v in weights.items()}
        if len(self.models) != len(self.run_dirs):
            raise EnsembleError(f"{len(self.models)} models for {len(self.run_dirs)} runs")
        for t in self.tasks:
            w = self.weights.get(t.name)
            if w is None or len(w) != len(self.run_dirs):
                raise EnsembleError(
                    f"task {t.name!r}: needs one weight per member ({len(self.run_dirs)}), got {w}"
                )
            if any(x < 0 for x in w) or not math.isclose(sum(w), 1.0, abs_tol=1e-6):
                raise EnsembleError(f"task {t.name!r}: weights {w} must be >= 0 and sum to 1")

    def member_predictions(self, data: TaskData) -> list[dict[str, Tensor]]:
        """Every member's predictions (probabilities / target units) for every row of ``data``."""
        out = []
        for model in self.models:
            raw = predict_outputs(model, data)
            out.append({t.name: member_prediction(t, raw[t.name]) for t in self.tasks})
        return out

    def predict_data(self, data: TaskData) -> dict[str, Tensor]:
        preds = self.member_predictions(data)
        return {
            t.name: _combine([p[t.name] for p in preds], self.weights[t.name]) for t in self.tasks
        }

    def predict(self, inputs: Inputs) -> dict[str, np.ndarray]:
        """Per task: probabilities (binary: of the positive class; multiclass: one per class) or
        values in the target's units, for the rows of ``inputs``."""
        data = MultiTaskData(inputs=inputs, targets={}, tasks=self.tasks, name="inputs")
        return {k: v.numpy() for k, v in self.predict_data(data).items()}

    def evaluate(self, data: TaskData) -> Metrics:
        """Each task's metrics on the labelled rows of ``data`` (validation or test)."""
        preds = self.predict_data(data)
        return {
            t.name: score_prediction(t, preds[t.name], data.targets[t.name]) for t in self.tasks
        }

    def save(self, out: str | Path) -> Path:
        """``ensemble.json``: the member run directories (absolute) and the weights per task."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        payload = {
            "members": [str(p.resolve()) for p in self.run_dirs],
            "tasks": [t.name for t in self.tasks],
            "weights": self.weights,
        }
        path = out / "ensemble.json"
        path.write_text(json.dumps(payload, indent=2))
        return path

    @classmethod
    def load(cls, directory: str | Path, splits: Splits | None = None) -> RunEnsemble:
        """Rebuild a saved ensemble: every member's selected model, the saved weights."""
        path = Path(directory) / "ensemble.json"
        if not path.is_file():
            raise FileNotFoundError(f"{directory} holds no ensemble.json (polytask ensemble --out)")
        payload = json.loads(path.read_text())
        runs = [Path(p) for p in payload["members"]]
        missing = [str(p) for p in runs if not p.is_dir()]
        if missing:
            raise FileNotFoundError(f"{path}: member run(s) {missing} no longer exist")
        _, loaded = _load_members(runs, splits)
        tasks = loaded[0].run.tasks
        if [t.name for t in tasks] != payload["tasks"]:
            raise EnsembleError(
                f"{path}: tasks {payload['tasks']} differ from the members' {tasks}"
            )
        return cls(runs, payload["weights"], [m.model for m in loaded], tasks)


@dataclass
class EnsembleResult:
    """The ensemble and, per task, its validation / test metric against its members."""

    ensemble: RunEnsemble
    rows: list[dict[str, Any]]
    out_dir: Path | None = None
    members: list[str] = field(default_factory=list)

    def table(self) -> str:
        header = ["task", "metric", "best member (by val)", "member val", "member test",
                  "uniform val", "uniform test", "ensemble val", "ensemble test", "weights"]  # fmt: skip
        figures = ("member_val", "member_test", "uniform_val", "uniform_test", "ensemble_val",
                   "ensemble_test")  # fmt: skip
        return markdown_table(header, (
            [r["task"], r["metric"], r["best_member"], *(f"{r[k]:.4f}" for k in figures),
             " ".join(f"{x:.2f}" for x in r["weights"])]
            for r in self.rows
        ))  # fmt: skip


def build_ensemble(
    run_dirs: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    method: str = "greedy",
    rounds: int | None = None,
    splits: Splits | None = None,
) -> EnsembleResult:
    """Combine trained runs per task, choosing weights on validation; score val and test.

    Args:
        run_dirs: finished runs on the same tasks, data and split.
        out: where to save the ensemble (``ensemble.json``, ``ensemble.md``); none: not saved.
        method: ``greedy`` (Caruana forward selection per task) or ``mean`` (equal weights).
        rounds: greedy additions per task (default: 4 x the number of members).
        splits: the runs' data when it cannot be reloaded from their config.
    """
    if method not in ("greedy", "mean"):
        raise EnsembleError(f"method must be 'greedy' or 'mean', got {method!r}")
    runs = [Path(p) for p in run_dirs]
    splits, loaded = _load_members(runs, splits)
    tasks = loaded[0].run.tasks
    labels = [_label(p) for p in runs]
    uniform = [1.0 / len(runs)] * len(runs)
    probe = RunEnsemble(runs, {t.name: uniform for t in tasks}, [m.model for m in loaded], tasks)
    val_preds = probe.member_predictions(splits.val)
    test_preds = probe.member_predictions(splits.test)
    rounds = rounds or 4 * len(runs)
    weights: dict[str, list[float]] = {}
    rows = []
    for t in tasks:
        y_val, y_test = splits.val.targets[t.name], splits.test.targets[t.name]
        sign = 1.0 if t.primary_higher_is_better else -1.0

        def score(pred: Tensor, y: Tensor, task: Task = t, s: float = sign) -> float:
            return s * score_prediction(task, pred, y)[task.primary]

        vp = [p[t.name] for p in val_preds]
        tp = [p[t.name] for p in test_preds]
        member_val = [score(p, y_val) * sign for p in vp]
        ranked = [v * sign if math.isfinite(v) else -math.inf for v in member_val]
        best = int(np.argmax(ranked))
        if method == "greedy":
            w = greedy_weights(vp, lambda p, y=y_val, f=score: f(p, y), rounds)
        else:
            w = list(uniform)
        weights[t.name] = w
        rows.append({
            "task": t.name, "metric": t.primary, "higher_is_better": t.primary_higher_is_better,
            "best_member": labels[best], "member_val": member_val[best],
            "member_test": score(tp[best], y_test) * sign,
            "uniform_val": score(_combine(vp, uniform), y_val) * sign,
            "uniform_test": score(_combine(tp, uniform), y_test) * sign,
            "ensemble_val": score(_combine(vp, w), y_val) * sign,
            "ensemble_test": score(_combine(tp, w), y_test) * sign,
            "weights": w,
        })  # fmt: skip
    ensemble = RunEnsemble(runs, weights, [m.model for m in loaded], tasks)
    result = EnsembleResult(ensemble, rows, None, labels)
    if out is not None:
        out_dir = Path(out)
        ensemble.save(out_dir)
        (out_dir / "ensemble.md").write_text(
            f"members: {', '.join(labels)}\nmethod: {method}\n\n{result.table()}\n"
        )
        (out_dir / "ensemble_results.json").write_text(
            json.dumps(
                {"method": method, "rounds": rounds, "members": labels, "rows": rows}, indent=2
            )
        )
        result.out_dir = out_dir
    return result


def _label(run_dir: Path) -> str:
    return f"{run_dir.parent.name}/{run_dir.name}" if run_dir.parent.name else run_dir.name
