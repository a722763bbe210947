"""Run and experiment directories written to the training loop's on-disk format.

The writers produce exactly what training writes (``metrics.csv`` long format, ``weights.csv``,
``experts.csv``, ``results.json``, ``config.yaml``, ``summary.json``), so the report tests pin the
reader to that format. Tests get them, and the task definitions, from the ``files`` fixture.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

LEFT = {"name": "left", "kind": "binary", "primary_metric": "auroc", "higher_is_better": True}
DEPTH = {"name": "depth", "kind": "regression", "primary_metric": "mae", "higher_is_better": False}
TASK_METRICS = {"left": ("accuracy", "auroc"), "depth": ("mae", "mse")}
CONFIG_TEXT = "model:\n  trunk: mlp  # a<b & <script>alert(1)</script>\nbalancer: equal\n"


# ------------------------------------------------------------------------------------ writers
def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _metric_value(task: str, metric: str, epoch: int, offset: float) -> float:
    if metric in ("accuracy", "auroc"):
        return round(0.6 + 0.05 * epoch + offset, 4)
    return round(2.0 / (epoch + 1) + offset, 4)


def write_run(
    directory: Path,
    tasks: list[dict[str, object]],
    *,
    name: str = "run",
    epochs: int = 4,
    steps_per_epoch: int = 40,
    offset: float = 0.0,
    delta_m: float | None = 3.14159,
    experts: bool = True,
    results: bool = True,
) -> Path:
    """A run directory following the training loop's on-disk format."""
    directory.mkdir(parents=True, exist_ok=True)
    names = [str(t["name"]) for t in tasks]
    rows: list[list[object]] = []
    for epoch in range(epochs):
        rows.append([epoch, "train", "", "loss", 1.0 / (epoch + 1)])
        rows.append([epoch, "train", "", "lr", 1e-3 * 0.9**epoch])
        rows.append([epoch, "train", "", "epoch_time_s", 1.5])
        rows.append([epoch, "train", "", "warning/nan_loss", 1 if epoch == 1 else 0])
        rows.append([epoch, "val", "", "selection_score", 0.5 + 0.1 * epoch])
        if delta_m is not None:
            rows.append([epoch, "val", "", "delta_m", 5.0 - epoch])
        for task in names:
            rows.append([epoch, "train", task, "loss", 0.9 / (epoch + 1)])
            rows.append([epoch, "val", task, "loss", 1.0 / (epoch + 1) + 0.05])
            for metric in TASK_METRICS[task]:
                rows.append(
                    [epoch, "val", task, metric, _metric_value(task, metric, epoch, offset)]
                )
    if results:
        for task in names:
            for metric in TASK_METRICS[task]:
                value = _metric_value(task, metric, epochs - 1, offset - 0.01)
                rows.append([epochs - 2, "test", task, metric, value])  # at the best epoch
        if delta_m is not None:
            rows.append([epochs - 2, "test", "", "delta_m", delta_m])
    _write_csv(directory / "metrics.csv", ["epoch", "split", "task", "metric", "value"], rows)

    weight_rows: list[list[object]] = []
    for step in range(epochs * steps_per_epoch):
        for i, task in enumerate(names):
            weight = 1.0 + (0.3 if i == 0 else -0.3) * math.sin(step / 7.0)
            weight_rows.append([step, step // steps_per_epoch, task, round(weight, 5)])
    _write_csv(directory / "weights.csv", ["step", "epoch", "task", "weight"], weight_rows)

    if experts:
        expert_rows: list[list[object]] = []
        for epoch in range(epochs):
            for i, task in enumerate(names):
                raw = [1.0 + i + e * (epoch + 1) for e in range(3)]
                for e, w in enumerate(raw):
                    expert_rows.append([epoch, task, e, round(w / sum(raw), 5)])
        _write_csv(directory / "experts.csv", ["epoch", "task", "expert", "weight"], expert_rows)

    (directory / "config.yaml").write_text(CONFIG_TEXT, encoding="utf-8")
    if results:
        best = epochs - 2
        last = {t: {m: _metric_value(t, m, best, offset) for m in TASK_METRICS[t]} for t in names}
        test = {
            t: {m: _metric_value(t, m, epochs - 1, offset - 0.01) for m in TASK_METRICS[t]}
            for t in names
        }
        payload = {
            "name": name,
            "balancer": "equal",
            "architecture": "hard-sharing mlp",
            "tasks": tasks,
            "best_epoch": best,
            "selection": "val delta_m",
            "val": last,
            "test": test,
            "delta_m": delta_m,
            "stl_reference": {"left": {"auroc": 0.8}, "depth": {"mae": 0.5}},
            "time_s": 12.5,
            "epochs": epochs,
            "num_parameters": 12345,
            "warnings": {"nan_loss": 1},
        }
        (directory / "results.json").write_text(json.dumps(payload), encoding="utf-8")
    return directory


def write_experiment(directory: Path) -> Path:
    """Four compared trainings: two MTL balancers and one single-task baseline per task."""
    write_run(directory / "runs" / "equal", [LEFT, DEPTH], name="equal", offset=0.0, delta_m=-1.5)
    write_run(
        directory / "runs" / "uncertainty",
        [LEFT, DEPTH],
        name="uncertainty",
        offset=0.02,
        delta_m=2.0,
        experts=False,
    )
    write_run(directory / "runs" / "stl-left", [LEFT], name="stl:left", delta_m=None, experts=False)
    write_run(
        directory / "runs" / "stl-depth", [DEPTH], name="stl:depth", delta_m=None, experts=False
    )
    summary = {
        "title": "Demo: <left> & depth",
        "tasks": [LEFT, DEPTH],
        "rows": [
            {
                "label": "equal",
                "run_dir": "runs/equal",
                "kind": "mtl",
                "test": {"left": {"auroc": 0.81}, "depth": {"mae": 0.60}},
                "delta_m": -1.5,
                "time_s": 30.0,
            },
            {
                "label": "uncertainty",
                "run_dir": "runs/uncertainty",
                "kind": "mtl",
                "test": {"left": {"auroc": 0.85}, "depth": {"mae": 0.55}},
                "delta_m": 2.0,
                "time_s": 31.0,
            },
            {
                "label": "stl:left",
                "run_dir": "runs/stl-left",
                "kind": "stl",
                "test": {"left": {"auroc": 0.80}},
                "delta_m": None,
                "time_s": 12.0,
            },
            {
                "label": "stl:depth",
                "run_dir": "runs/stl-depth",
                "kind": "stl",
                "test": {"depth": {"mae": 0.50}},
                "delta_m": None,
                "time_s": 11.0,
            },
        ],
        "notes": ["Δm is relative to the stl rows."],
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return directory


def relations_payload(tasks: list[str], epochs: int = 3, **skip: Any) -> dict[str, Any]:
    """A ``relations.json`` in the documented format (version 1), deterministic values."""
    n = len(tasks)

    def matrix(epoch: int, scale: float) -> list[list[float]]:
        return [
            [1.0 if i == j else round(scale * math.cos(i + 2 * j + epoch), 4) for j in range(n)]
            for i in range(n)
        ]

    measures = {
        name: {
            "description": f"{name} between tasks",
            "per_epoch": [matrix(e, s) for e in range(epochs)],
        }
        for name, s in (
            ("grad_cosine", 0.9),
            ("conflict_frequency", 0.5),
            ("lookahead_affinity", 0.1),
        )
        if name not in skip
    }
    return {
        "version": 1,
        "tasks": tasks,
        "measures": measures,
        "loss_ratio": {
            "per_epoch": [
                {t: 1.0 / (e + 1 + i) for i, t in enumerate(tasks)} for e in range(epochs)
            ]
        },
        "counts": {"steps_recorded": 12, "skipped_missing": {t: 0 for t in tasks}},
    }


FILES = SimpleNamespace(
    LEFT=LEFT,
    DEPTH=DEPTH,
    TASK_METRICS=TASK_METRICS,
    CONFIG_TEXT=CONFIG_TEXT,
    write_run=write_run,
    write_experiment=write_experiment,
    relations_payload=relations_payload,
)


@pytest.fixture(scope="session")
def files() -> SimpleNamespace:
    """The writers and task definitions above (``files.write_run(...)``, ``files.LEFT``)."""
    return FILES
