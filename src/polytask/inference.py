"""Reload a finished run: re-evaluate its selected model, or predict on a new table.

A run directory is self-describing: ``config.yaml`` (the experiment), ``tasks.json`` (task kinds
and fitted target scalers), ``results.json`` (which balancer and seed) and, for table data,
``preprocessing.json`` in the run or experiment directory (feature columns, train statistics,
label mappings). Nothing is re-fitted at prediction time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from polytask.config import ExperimentConfig, load_config
from polytask.data.base import Splits
from polytask.data.batch import Inputs, slice_inputs
from polytask.data.registry import UnknownDatasetError
from polytask.evaluation.metrics import evaluate, predict_outputs
from polytask.experiment import build_model, load_data
from polytask.models.base import MultiTaskModel
from polytask.tasks import Task
from polytask.training.checkpoint import load_checkpoint, load_model_state

__all__ = ["LoadedRun", "load_run"]


def _tasks_from_json(items: list[dict[str, Any]]) -> list[Task]:
    tasks = []
    for d in items:
        d = dict(d)
        if d.get("loss") == "custom":
            raise ValueError(f"task {d['name']!r} used a custom loss; rebuild it in Python")
        mean, std = d.pop("target_mean_", 0.0), d.pop("target_std_", 1.0)
        task = Task(**d)
        task.target_mean_, task.target_std_ = mean, std
        tasks.append(task)
    return tasks


@dataclass
class LoadedRun:
    run_dir: Path
    config: ExperimentConfig
    tasks: list[Task]
    seed: int
    model: MultiTaskModel | None = None

    def _model(self, example: Inputs, data_info: dict[str, Any] | None = None) -> MultiTaskModel:
        if self.model is None:
            model = build_model(self.config, self.tasks, example, data_info=data_info)
            path = self.run_dir / "checkpoints" / "best.pt"
            state = load_checkpoint(path, task_names=[t.name for t in self.tasks])
            load_model_state(model, state, path)
            model.eval()
            self.model = model
        return self.model

    def evaluate(self, splits: Splits | None = None) -> dict[str, dict[str, dict[str, float]]]:
        """Validation and test metrics of the selected model, on ``splits`` or the config's data.

        A run trained on data given from Python (``MultiTaskLearner``, ``splits_override``) has no
        registered data set to reload, so its data must be passed back in.
        """
        if splits is None:
            try:
                splits = load_data(self.config, self.seed)
            except UnknownDatasetError as err:
                raise ValueError(
                    f"{self.run_dir} was trained on data given from Python ({err}); pass its "
                    "splits: load_run(run_dir).evaluate(splits)"
                ) from None
        for t, saved in zip(splits.tasks, self.tasks, strict=True):
            if t.name != saved.name:
                raise ValueError(f"data tasks {splits.tasks} differ from the run's {self.tasks}")
        model = self._model(splits.train.example(), splits.info)
        return {
            split: evaluate(model, self.tasks, getattr(splits, split))[0] for split in ("val", "test")
        }

    def predict_table(self, table: Path) -> pd.DataFrame:
        from polytask.data.table import TablePreprocessor, read_table

        pre_path = next(
            (p for p in (self.run_dir / "preprocessing.json", self.run_dir.parent / "preprocessing.json") if p.exists()),
            None,
        )
        if pre_path is None:
            raise FileNotFoundError(
                f"{self.run_dir} was not trained on a table (no preprocessing.json): "
                "predict works on runs made by `polytask fit` or a config with `data.table`"
            )
        pre = TablePreprocessor.from_dict(json.loads(pre_path.read_text()))
        frame = read_table(table)
        if len(frame) == 0:  # the model, built from the first rows, would fail with an IndexError
            from polytask.data.base import DataError

            raise DataError(
                f"{table} has no data rows (only a header with columns "
                f"{', '.join(map(str, frame.columns)) or 'none'}): nothing to predict"
            )
        inputs = pre.transform(frame)
        pre.warn_unseen(str(table))
        model = self._model(slice_inputs(inputs, slice(0, 2)), {"cardinalities": pre.cardinalities})
        from polytask.data.base import MultiTaskData

        data = MultiTaskData(inputs=inputs, targets={}, tasks=self.tasks, name=str(table))
        outputs = predict_outputs(model, data)
        columns: dict[str, Any] = {}
        for task in self.tasks:
            pred = task.predict(outputs[task.name]).numpy()
            encoding = pre.labels_.get(task.name)
            classes = encoding.classes if encoding is not None else None
            if task.kind.value == "multiclass" and classes is not None:
                columns[task.name] = [classes[int(k)] for k in pred]
            elif task.kind.value == "binary" and classes is not None:
                # probability of the positive label, named so that it cannot be misread
                columns[f"{task.name}=P({classes[1]})"] = pred
            else:
                columns[task.name] = pred
        return pd.DataFrame(columns)


def load_run(run_dir: str | Path) -> LoadedRun:
    run_dir = Path(run_dir)
    needed = ["config.yaml", "tasks.json", "checkpoints/best.pt"]
    missing = [n for n in needed if not (run_dir / n).exists()]
    if missing:
        raise FileNotFoundError(f"{run_dir} is not a run directory: missing {missing}")
    config = load_config(run_dir / "config.yaml")
    tasks = _tasks_from_json(json.loads((run_dir / "tasks.json").read_text()))
    results_path = run_dir / "results.json"
    seed = json.loads(results_path.read_text()).get("seed", 0) if results_path.exists() else 0
    return LoadedRun(run_dir=run_dir, config=config, tasks=tasks, seed=int(seed))
