"""``MultiTaskLearner``: the short Python path from one's own data to predictions.

Why an estimator: the pieces (``MultiTaskData`` -> ``random_split`` -> ``create_model`` ->
``fit``, then an ``ExperimentConfig`` for the single-task baselines and Δm) are what the CLI
assembles, and a user working from Python should not have to assemble them by hand or know their
names. ``MultiTaskLearner`` does what ``polytask fit`` does, on data already in memory:

    >>> learner = MultiTaskLearner(epochs=5).fit(X, {"toxic": y1, "solubility": y2})
    >>> learner.results_["test"], learner.delta_m_          # doctest: +SKIP
    >>> learner.save("model/"); MultiTaskLearner.load("model/").predict(X_new)  # doctest: +SKIP

It adds no training logic of its own: data go through the same classes as everywhere else
(:class:`~polytask.data.base.MultiTaskData`, :class:`~polytask.data.loader.DatasetData`, the table
preprocessing of :mod:`polytask.data.table`), and training, the single-task baselines (cached),
Δm and the run directory are :func:`polytask.experiment.run_experiment`'s. What it keeps beside
the model is what is needed to predict in the targets' own units later, anywhere: the tasks with
their fitted regression scalers, the original class labels, and a table's fitted preprocessing.

Everything that can be wrong with the input (an unsupported type, y keys that are no task, lengths
that differ, NaN inputs, unknown trunk / architecture / balancer names) is refused before any
training starts, with a message that says what is accepted.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import ValidationError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from polytask.config import ExperimentConfig, TrainingConfig, format_validation_error
from polytask.data.base import DataError, MultiTaskData, Splits, TaskData, random_split
from polytask.data.batch import Inputs, batch_len
from polytask.data.loader import DatasetData
from polytask.data.table import LabelEncoding, TablePreprocessor, infer_kind, table_splits
from polytask.evaluation.metrics import evaluate, predict_outputs
from polytask.models.base import MultiTaskModel
from polytask.tasks import Task, TaskKind

__all__ = ["FORMAT_VERSION", "MultiTaskLearner"]

FORMAT_VERSION = 1
"""Version of the directory written by :meth:`MultiTaskLearner.save` (bumped on any change)."""

_DATA_NAME = "python"
"""``data.dataset`` of the configs written by the learner: data given from Python, not a loader."""

_TOKEN_TRUNKS = frozenset({"transformer", "hf"})
"""Trunks that read integer token ids; every other trunk gets integer arrays as float32."""

_MODEL_INFO = ("cardinalities",)
"""Keys of a data set's ``info`` that building its model reads (``build_model(data_info=...)``)."""

_LEARNER_ARGS = frozenset({"epochs", "batch_size", "lr", "weight_decay", "device", "progress"})
"""Training settings that are the learner's own arguments (not accepted again in ``**training``)."""

ACCEPTED = (
    "X may be: a NumPy array or torch tensor [N, ...] with y a dict {task: array of N labels}; "
    "a dict {input name: array or tensor} (several inputs) with y a dict; a pandas DataFrame with "
    "y the target column name(s); a torch Dataset whose items are (inputs, {task: target}), with "
    "tasks=[Task(...), ...] given to MultiTaskLearner; a polytask TaskData (MultiTaskData, "
    "DatasetData) or ready Splits"
)

Metrics = dict[str, dict[str, float]]


class MultiTaskLearner:
    """Train one model on several tasks, with single-task baselines and Δm; save, load, predict.

    Args:
        tasks: the tasks: ``Task`` objects (their kinds, weights, losses are used as given), or a
            dict ``{name: kind}`` to fix kinds, or ``None`` to infer them from ``y`` (binary,
            multiclass or regression, by :func:`polytask.data.table.infer_kind`). A torch
            Dataset needs them (its items do not say their kinds).
        trunk, trunk_options: the shared trunk by registered name (``polytask list trunks``);
            ``in_features`` is read from the data.
        architecture, model_options: the multi-task architecture (``polytask list
            architectures``) and its options.
        balancer, balancer_options: how task losses or gradients are combined (``polytask list
            balancers``).
        epochs, batch_size, lr, weight_decay: training; any other setting of
            :class:`polytask.config.TrainingConfig` goes in ``**training`` (``scheduler="cosine"``,
            ``patience=5``, ``engine="gramian"``, ...).
        seed: seeds the split, the initialisation and the batches.
        baselines: also train one single-task model per task (same trunk and settings, cached
            under ``$POLYTASK_CACHE``) to report Δm, and select the epoch by validation Δm.
        split: train / validation / test fractions for data that are not already ``Splits``.
        out_dir: where the run directories go (default: a new temporary directory); a run of
            the same balancer and seed already there is replaced.
        device: ``"auto"`` (CUDA, then MPS, then CPU), or a torch device name.
        num_workers: DataLoader workers for torch Datasets.
        progress: print what is being trained and show progress bars.
        report: also render ``report.html`` in ``out_dir`` (seconds of plotting per fit).

    After :meth:`fit`: ``model_`` (the selected model), ``tasks_``, ``results_`` (``{"val":
    metrics, "test": metrics}``, metrics per task), ``delta_m_`` (test Δm% against the baselines,
    ``None`` without them), ``baselines_`` (their metrics, same layout), ``run_dir_`` (reloadable
    with :func:`polytask.inference.load_run`), ``classes_`` (the original labels of each
    classification task that had them; a binary prediction is the probability of ``classes_[t][1]``).
    """

    def __init__(
        self,
        tasks: Sequence[Task] | Mapping[str, str] | None = None,
        *,
        trunk: str = "mlp",
        trunk_options: Mapping[str, Any] | None = None,
        architecture: str = "hard_sharing",
        model_options: Mapping[str, Any] | None = None,
        balancer: str = "equal",
        balancer_options: Mapping[str, Any] | None = None,
        epochs: int = 20,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
        baselines: bool = True,
        split: tuple[float, float, float] = (0.8, 0.1, 0.1),
        out_dir: str | Path | None = None,
        device: str = "auto",
        num_workers: int = 0,
        progress: bool = False,
        report: bool = False,
        **training: Any,
    ) -> None:
        self.tasks = tasks
        self.trunk = trunk
        self.trunk_options = dict(trunk_options or {})
        self.architecture = architecture
        self.model_options = dict(model_options or {})
        self.balancer = balancer
        self.balancer_options = dict(balancer_options or {})
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.seed = seed
        self.baselines = baselines
        self.split = tuple(split)
        self.out_dir = out_dir
        self.device = device
        self.num_workers = num_workers
        self.progress = progress
        self.report = report
        self.training = dict(training)
        self._reset()

    def _reset(self) -> None:
        self.model_: MultiTaskModel | None = None
        self.tasks_: list[Task] = []
        self.results_: dict[str, Metrics] = {}
        self.delta_m_: float | None = None
        self.baselines_: dict[str, Metrics] | None = None
        self.run_dir_: Path | None = None
        self.out_dir_: Path | None = None
        self.encodings_: dict[str, LabelEncoding] = {}
        self.preprocessor_: TablePreprocessor | None = None
        self.input_spec_: dict[str, Any] = {}
        self.data_info_: dict[str, Any] = {}

    # ------------------------------------------------------------------ parameters
    def get_params(self) -> dict[str, Any]:
        """The constructor's arguments (``**training`` spread out), as given."""
        return {
            "tasks": self.tasks, "trunk": self.trunk, "trunk_options": self.trunk_options,
            "architecture": self.architecture, "model_options": self.model_options,
            "balancer": self.balancer, "balancer_options": self.balancer_options,
            "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
            "weight_decay": self.weight_decay, "seed": self.seed, "baselines": self.baselines,
            "split": list(self.split), "out_dir": None if self.out_dir is None else str(self.out_dir),
            "device": self.device, "num_workers": self.num_workers, "progress": self.progress,
            "report": self.report, **self.training,
        }

    def __repr__(self) -> str:
        defaults = MultiTaskLearner().get_params()
        changed = {
            k: v for k, v in self.get_params().items() if k not in defaults or defaults[k] != v
        }
        return f"MultiTaskLearner({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    def _config(self, fingerprint: str = "") -> ExperimentConfig:
        """The experiment this learner runs; every name and setting is checked here."""
        from polytask.balancing import available as available_balancers
        from polytask.models import available_architectures, available_trunks

        for what, name, choices in (
            ("trunk", self.trunk, available_trunks()),
            ("architecture", self.architecture, available_architectures()),
            ("balancer", self.balancer, available_balancers()),
        ):
            if name not in choices:
                raise ValueError(f"unknown {what} {name!r}; choose one of: {', '.join(choices)}")
        allowed = sorted(set(TrainingConfig.model_fields) - _LEARNER_ARGS - {"sampling"})
        stray = sorted(set(self.training) - set(allowed))
        if stray:
            raise TypeError(
                f"MultiTaskLearner got unexpected argument(s) {stray}; other training settings "
                f"are: {', '.join(allowed)}"
            )
        if (
            len(self.split) != 3
            or any(not isinstance(f, int | float) or f < 0 for f in self.split)
            or abs(sum(self.split) - 1) > 1e-6
        ):
            raise ValueError(f"split must be 3 non-negative fractions summing to 1, got {self.split}")
        training = {
            "tensorboard": False, **self.training, "epochs": self.epochs,
            "batch_size": self.batch_size, "lr": self.lr, "weight_decay": self.weight_decay,
            "device": self.device, "progress": self.progress,
        }
        raw = {
            "name": "learner",
            "data": {"dataset": _DATA_NAME, "options": {"fingerprint": fingerprint}},
            "model": {
                "trunk": self.trunk, "trunk_options": dict(self.trunk_options),
                "architecture": self.architecture, "options": dict(self.model_options),
            },
            "balancers": [{"name": self.balancer, "options": dict(self.balancer_options)}],
            "training": training,
            "baselines": {"stl": bool(self.baselines)},
            "seeds": [self.seed],
        }
        try:
            return ExperimentConfig.model_validate(raw)
        except ValidationError as err:
            raise ValueError(format_validation_error(err, "", "MultiTaskLearner setting")) from None

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any = None) -> MultiTaskLearner:
        """Train on ``X`` (and ``y``); see the class docstring and :data:`ACCEPTED` for the types.

        Returns the learner, fitted (``model_``, ``results_``, ``delta_m_``, ...).
        """
        from polytask.experiment import run_experiment

        self._config()  # names and settings, before any data is touched
        self._reset()
        splits = self._splits(X, y)
        splits.validate()
        self.tasks_ = list(splits.tasks)
        self.input_spec_ = _input_spec(splits.train.example())
        self.data_info_ = {k: splits.info[k] for k in _MODEL_INFO if k in splits.info}
        config = self._config(_fingerprint(splits))
        out = Path(self.out_dir) if self.out_dir is not None else Path(
            tempfile.mkdtemp(prefix="polytask-")
        )
        log: Callable[[str], None] = print if self.progress else _quiet
        result = run_experiment(
            config, out, log=log, splits_override=splits, report=self.report, overwrite=True
        )
        mtl = next(r for r in result.runs if r.kind == "mtl")
        stl = [r for r in result.runs if r.kind == "stl"]
        self.results_ = {"val": mtl.val, "test": mtl.test}
        self.delta_m_ = mtl.delta_m
        self.baselines_ = None
        if stl:
            self.baselines_ = {
                split: {t: m for r in stl for t, m in getattr(r, split).items()}
                for split in ("val", "test")
            }
        self.run_dir_, self.out_dir_ = mtl.run_dir, result.out_dir
        self.model_ = self._load_selected(config, splits.train.example(), mtl.run_dir)
        return self

    def _load_selected(self, config: ExperimentConfig, example: Inputs, run_dir: Path) -> MultiTaskModel:
        """The model selected on validation, rebuilt and read from the run's checkpoint."""
        from polytask.experiment import build_model
        from polytask.training.checkpoint import load_checkpoint, load_model_state

        with torch.random.fork_rng(devices=[]):  # building draws weights: leave the user's RNG be
            model = build_model(config, self.tasks_, example, data_info=self.data_info_)
        path = run_dir / "checkpoints" / "best.pt"
        if not path.exists():  # no epoch was ever scored (all NaN): the last one is what fit kept
            path = run_dir / "checkpoints" / "last.pt"
        state = load_checkpoint(path, task_names=[t.name for t in self.tasks_], map_location="cpu")
        load_model_state(model, state, path)
        return model.to(self._device()).eval()

    def _device(self) -> torch.device:
        from polytask.training.loop import resolve_device

        return resolve_device(self.device)

    # ------------------------------------------------------------------ data in
    def _given_tasks(self) -> tuple[list[Task] | None, dict[str, str]]:
        """``tasks`` as fresh Task copies (fit fills their scalers), or as kinds to enforce."""
        if self.tasks is None:
            return None, {}
        if isinstance(self.tasks, Mapping):
            return None, {str(k): str(v) for k, v in self.tasks.items()}
        given = [self.tasks] if isinstance(self.tasks, Task) else list(self.tasks)
        bad = [t for t in given if not isinstance(t, Task)]
        if bad:
            raise TypeError(
                f"tasks must be Task objects or a dict {{name: kind}}, got {type(bad[0]).__name__}"
            )
        return [copy.copy(t) for t in given], {}

    def _required_tasks(self, what: str) -> list[Task]:
        tasks, kinds = self._given_tasks()
        if tasks is None and kinds:
            tasks = [Task(name, kind) for name, kind in kinds.items()]
        if not tasks:
            raise ValueError(
                f"{what} does not say its tasks: give them, MultiTaskLearner(tasks=[Task('a', "
                "'binary'), Task('b', 'multiclass', num_classes=3), ...])"
            )
        return tasks

    def _splits(self, X: Any, y: Any) -> Splits:
        """Any accepted input as train / validation / test splits (kinds, encodings learned)."""
        _refuse_unsupported(X)
        if isinstance(X, Splits):
            _no_y(y, "Splits")
            self._check_task_names(X.tasks, "the Splits")
            return X
        if isinstance(X, MultiTaskData | DatasetData) or _is_task_data(X):
            _no_y(y, type(X).__name__)
            self._check_task_names(X.tasks, f"the {type(X).__name__}")
            return random_split(X, self.split, self.seed)
        if isinstance(X, pd.DataFrame):
            return self._table_splits(X, y)
        if isinstance(X, IterableDataset):
            raise TypeError(
                "an IterableDataset has no rows to cut into train / val / test: give ready splits, "
                "Splits(DatasetData(train_ds, tasks), DatasetData(val_ds, tasks), "
                "DatasetData(test_ds, tasks))"
            )
        if isinstance(X, Dataset):
            _no_y(y, "a torch Dataset")
            data = DatasetData(
                X, self._required_tasks("a torch Dataset"), name=type(X).__name__,
                num_workers=self.num_workers,
            )
            return random_split(data, self.split, self.seed)
        inputs = self._inputs(X)
        n = batch_len(inputs)
        targets, tasks = self._targets(y, n)
        data = MultiTaskData(inputs, targets, tasks, name="X").validate()
        return random_split(data, self.split, self.seed)

    def _check_task_names(self, tasks: Sequence[Task], what: str) -> None:
        given, kinds = self._given_tasks()
        names = [t.name for t in given] if given is not None else list(kinds)
        if names and sorted(names) != sorted(t.name for t in tasks):
            raise ValueError(
                f"tasks {names} differ from those of {what} {[t.name for t in tasks]}; "
                "leave tasks=None to use the data's"
            )

    def _inputs(self, X: Any, where: str = "X") -> Inputs:
        """Arrays, tensors or a dict of them as model inputs (dtypes the trunk reads)."""
        if isinstance(X, Mapping):
            if not X:
                raise ValueError(f"{where} is an empty dict; give {{input name: array}}")
            lengths = {str(k): _length(v, f"{where}[{k!r}]") for k, v in X.items()}
            if len(set(lengths.values())) > 1:
                raise ValueError(f"the inputs of {where} have different lengths: {lengths}")
            return {
                str(k): _to_tensor(v, f"{where}[{k!r}]", self._token_input(str(k)))
                for k, v in X.items()
            }
        return _to_tensor(X, where, self._token_input(None))

    def _token_input(self, key: str | None) -> bool:
        """Whether the trunk reading input ``key`` takes integer token ids (kept as integers)."""
        if key is None or self.trunk != "multi_input":
            return self.trunk in _TOKEN_TRUNKS
        spec = (self.trunk_options.get("encoders") or {}).get(key)
        return isinstance(spec, Mapping) and spec.get("trunk") in _TOKEN_TRUNKS

    def _targets(self, y: Any, n: int) -> tuple[dict[str, Tensor], list[Task]]:
        """``y`` as label tensors, with the tasks (given or inferred) and their label encodings."""
        given, kinds = self._given_tasks()
        if y is None:
            raise ValueError("y is missing: give the targets, y={task name: array of labels}")
        if not isinstance(y, Mapping):
            if given is not None and len(given) == 1 and not isinstance(y, str):
                y = {given[0].name: y}
            else:
                raise TypeError(
                    "y must be a dict {task name: array of labels} (one entry per task), got "
                    f"{type(y).__name__}"
                )
        if not y:
            raise ValueError("y is an empty dict; give at least one task's labels")
        names = [t.name for t in given] if given is not None else list(kinds)
        if names:
            stray = [str(k) for k in y if str(k) not in names]
            if stray:
                raise ValueError(f"y has key(s) {stray} that are no task; the tasks are {names}")
            absent = [k for k in names if k not in y]
            if absent:
                raise ValueError(f"y has no labels for task(s) {absent}; it has {list(map(str, y))}")
        order = names or [str(k) for k in y]
        by_name = {t.name: t for t in given or []}
        targets: dict[str, Tensor] = {}
        tasks: list[Task] = []
        for name in order:
            value = y[name]
            m = _length(value, f"y[{name!r}]")
            if m != n:
                raise ValueError(f"y[{name!r}] has {m} labels but X has {n} rows")
            target, task, encoding = _encode_target(
                name, value, by_name.get(name), kinds.get(name)
            )
            targets[name] = target
            tasks.append(task)
            if encoding is not None:
                self.encodings_[name] = encoding
        return targets, tasks

    def _table_splits(self, X: pd.DataFrame, y: Any) -> Splits:
        """A DataFrame through :mod:`polytask.data.table`: encodings, train-only preprocessing."""
        frame = X
        if y is None:
            raise ValueError("a DataFrame needs y: the target column name(s), e.g. y=['a', 'b']")
        if isinstance(y, str):
            targets = [y]
        elif isinstance(y, list | tuple) and all(isinstance(c, str) for c in y):
            targets = list(y)
        elif isinstance(y, pd.DataFrame | pd.Series | Mapping):
            extra = y.to_frame() if isinstance(y, pd.Series) else y
            targets = [str(c) for c in extra]
            clash = [c for c in targets if c in map(str, X.columns)]
            if clash:
                raise ValueError(f"y's column(s) {clash} are also columns of X")
            frame = X.reset_index(drop=True).copy()
            for c in targets:
                value = extra[c]
                m = _length(value, f"y[{c!r}]")
                if m != len(X):
                    raise ValueError(f"y[{c!r}] has {m} labels but X has {len(X)} rows")
                frame[c] = np.asarray(value)
        else:
            raise TypeError(
                "with a DataFrame, y is the target column name(s) (a str or a list of str), or a "
                f"DataFrame / dict of target columns; got {type(y).__name__}"
            )
        given, kinds = self._given_tasks()
        if given is not None:
            kinds = {t.name: t.kind.value for t in given}
        if kinds:
            stray = [c for c in targets if c not in kinds]
            if stray:
                raise ValueError(f"target column(s) {stray} are no task; the tasks are {list(kinds)}")
            absent = [k for k in kinds if k not in targets]
            if absent:
                raise ValueError(f"no target column for task(s) {absent}; y names {targets}")
        # The tabular trunk learns an embedding per categorical column: it reads integer codes.
        encoding = {"categorical_encoding": "embedding"} if self.trunk == "tabular" else {}
        splits = table_splits(
            frame, targets, kinds or None, fractions=self.split, seed=self.seed,  # type: ignore[arg-type]
            name="DataFrame", where="DataFrame", **encoding,
        )
        pre = TablePreprocessor.from_dict(splits.info["preprocessing"])  # type: ignore[arg-type]
        if given is not None:
            splits = _replace_tasks(splits, given, pre)
        self.preprocessor_ = pre
        self.encodings_ = {t: e for t, e in pre.labels_.items() if e.classes is not None}
        return splits

    # ------------------------------------------------------------------ predict and evaluate
    def _check_fitted(self) -> MultiTaskModel:
        if self.model_ is None:
            raise RuntimeError("this MultiTaskLearner is not fitted: call fit(X, y) or load(path)")
        return self.model_

    def _data(self, X: Any, y: Any = None, *, labelled: bool = False) -> tuple[TaskData, list[Task]]:
        """Inputs (and, for evaluation, targets) in the form the learner was trained on."""
        _refuse_unsupported(X)
        if isinstance(X, Splits):
            raise TypeError("give one split (splits.test), not Splits")
        if isinstance(X, MultiTaskData | DatasetData) or _is_task_data(X):
            _no_y(y, type(X).__name__)
            known = {t.name for t in self.tasks_}
            return X, [t for t in self.tasks_ if t.name in {s.name for s in X.tasks} & known]
        if isinstance(X, Dataset):
            _no_y(y, "a torch Dataset")
            if labelled:
                return DatasetData(X, self.tasks_, num_workers=self.num_workers), self.tasks_
            return DatasetData(_InputsOnly(X), [], num_workers=self.num_workers), []
        kind = self.input_spec_.get("kind")
        if isinstance(X, pd.DataFrame):
            if self.preprocessor_ is None:
                raise TypeError(
                    "this learner was trained on arrays / tensors, not a DataFrame: pass "
                    "X.to_numpy() or the same kind of input as in fit"
                )
            inputs: Inputs = self.preprocessor_.transform(X)
        else:
            if self.preprocessor_ is not None:
                raise TypeError(
                    "this learner was trained on a DataFrame: pass a DataFrame with the feature "
                    f"columns {self.preprocessor_.features}"
                )
            inputs = self._inputs(X)
            _check_shapes(inputs, self.input_spec_, kind)
        n = batch_len(inputs)
        targets: dict[str, Tensor] = {}
        if labelled:
            targets = self._eval_targets(X, y, n)
        tasks = [t for t in self.tasks_ if t.name in targets]
        return MultiTaskData(inputs, targets, tasks, name="X").validate(), tasks

    def _eval_targets(self, X: Any, y: Any, n: int) -> dict[str, Tensor]:
        """Labels for :meth:`evaluate`, encoded with the encodings learned in fit."""
        if isinstance(X, pd.DataFrame) and y is None:  # the task columns that X has
            y = [t.name for t in self.tasks_ if t.name in X.columns]
        if isinstance(X, pd.DataFrame) and isinstance(y, str | list | tuple):
            columns = [y] if isinstance(y, str) else list(y)
            missing = [c for c in columns if c not in X.columns]
            if missing:
                raise ValueError(f"target column(s) {missing} not in X")
            y = {c: X[c] for c in columns}
        if not isinstance(y, Mapping) or not y:
            raise TypeError("evaluate needs y: a dict {task name: labels} (or column names)")
        names = [t.name for t in self.tasks_]
        stray = [str(k) for k in y if str(k) not in names]
        if stray:
            raise ValueError(f"y has key(s) {stray} that are no task; the tasks are {names}")
        targets = {}
        for task in self.tasks_:
            if task.name not in y:
                continue
            m = _length(y[task.name], f"y[{task.name!r}]")
            if m != n:
                raise ValueError(f"y[{task.name!r}] has {m} labels but X has {n} rows")
            encoding = self.encodings_.get(task.name)
            if self.preprocessor_ is not None and task.name in self.preprocessor_.labels_:
                encoding = self.preprocessor_.labels_[task.name]
            targets[task.name] = _encode_target(task.name, y[task.name], task, None, encoding)[0]
        return targets

    def predict(self, X: Any) -> dict[str, np.ndarray]:
        """Predictions per task in the targets' own units, as NumPy arrays.

        Binary: the probability of the positive label (``classes_[task][1]`` when the labels
        were not 0/1); multiclass: the class label (the original label when the data had them);
        regression: the value on the original scale; multilabel: probabilities ``[N, k]``.
        """
        model = self._check_fitted()
        data, _ = self._data(X)
        outputs = predict_outputs(model, data, device=self._device())
        return {t.name: self._decode(t, outputs[t.name]) for t in self.tasks_}

    def predict_proba(self, X: Any) -> dict[str, np.ndarray]:
        """Class probabilities of the classification tasks (``[N, k]`` for multiclass)."""
        model = self._check_fitted()
        data, _ = self._data(X)
        outputs = predict_outputs(model, data, device=self._device())
        out = {}
        for t in self.tasks_:
            if t.kind is TaskKind.MULTICLASS:
                out[t.name] = torch.softmax(outputs[t.name], dim=-1).numpy()
            elif t.kind in (TaskKind.BINARY, TaskKind.MULTILABEL):
                out[t.name] = t.predict(outputs[t.name]).numpy()
        return out

    def _decode(self, task: Task, output: Tensor) -> np.ndarray:
        pred = task.predict(output).numpy()
        encoding = self.encodings_.get(task.name)
        if task.kind is TaskKind.MULTICLASS and encoding is not None and encoding.classes:
            return np.asarray(encoding.classes)[pred]
        return pred

    @property
    def classes_(self) -> dict[str, list[Any]]:
        """The original labels of each classification task that had labels other than codes."""
        return {k: list(e.classes) for k, e in self.encodings_.items() if e.classes is not None}

    def evaluate(self, X: Any, y: Any = None) -> Metrics:
        """Metrics per task (those labelled in ``y``, or every task of a Dataset) on ``X``."""
        model = self._check_fitted()
        data, tasks = self._data(X, y, labelled=True)
        if not tasks:
            raise ValueError("nothing to evaluate: no target of a task of this learner was given")
        return evaluate(model, tasks, data, device=self._device())[0]

    # ------------------------------------------------------------------ save and load
    def save(self, path: str | Path) -> Path:
        """Write a self-contained directory: ``learner.json`` (spec) and ``model.pt`` (weights).

        ``learner.json`` holds the trunk / architecture names and options, the tasks with their
        fitted scalers, the label encodings, a table's preprocessing, the input shapes and the
        format version; ``model.pt`` is the state dict, loadable with ``weights_only=True``.
        No training data is stored. Tasks with a Python callable (own head, loss or metrics)
        cannot be described in JSON and are refused.
        """
        model = self._check_fitted()
        for t in self.tasks_:
            own = [a for a in ("head", "metrics") if getattr(t, a) is not None]
            own += ["loss"] if callable(t.loss) else []
            if own:
                raise ValueError(
                    f"task {t.name!r} has its own {', '.join(own)} (Python callables): save() "
                    "writes JSON only; save model_.state_dict() yourself and rebuild the task"
                )
        from polytask import __version__
        from polytask.training.loop import json_safe

        params = self.get_params()
        params.update(tasks=None, out_dir=None)
        spec = {
            "format": "polytask-learner",
            "format_version": FORMAT_VERSION,
            "polytask_version": __version__,
            "params": params,
            "tasks": [t.to_config() for t in self.tasks_],
            "encodings": {k: e.to_dict() for k, e in self.encodings_.items()},
            "preprocessing": None if self.preprocessor_ is None else self.preprocessor_.to_dict(),
            "inputs": self.input_spec_,
            "data_info": self.data_info_,
            "results": self.results_,
            "delta_m": self.delta_m_,
            "baselines": self.baselines_,
        }
        try:
            text = json.dumps(json_safe(spec), indent=2)
        except TypeError as err:
            raise ValueError(
                f"cannot save: an option is not JSON ({err}); trunk_options, model_options and "
                "balancer_options must hold plain values"
            ) from None
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        (out / "learner.json").write_text(text)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, out / "model.pt")
        return out

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> MultiTaskLearner:
        """Rebuild a learner saved by :meth:`save`, ready to predict (no training data needed)."""
        from polytask.inference import _tasks_from_json

        root = Path(path)
        spec_path = root / "learner.json"
        if not spec_path.is_file() or not (root / "model.pt").is_file():
            raise FileNotFoundError(
                f"{root} is not a saved MultiTaskLearner (learner.json and model.pt expected)"
            )
        spec = json.loads(spec_path.read_text())
        if spec.get("format") != "polytask-learner":
            raise ValueError(f"{spec_path} is not a MultiTaskLearner file")
        if int(spec.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(
                f"{root} was saved in format {spec['format_version']} by polytask "
                f"{spec.get('polytask_version')}; this polytask reads format {FORMAT_VERSION}"
            )
        params = dict(spec["params"])
        params["split"] = tuple(params["split"])
        if device is not None:
            params["device"] = device
        learner = cls(**params)
        learner.tasks_ = _tasks_from_json(spec["tasks"])
        learner.encodings_ = {
            k: LabelEncoding.from_dict(e) for k, e in spec.get("encodings", {}).items()
        }
        if spec.get("preprocessing") is not None:
            learner.preprocessor_ = TablePreprocessor.from_dict(spec["preprocessing"])
        learner.input_spec_ = spec["inputs"]
        learner.data_info_ = spec.get("data_info") or {}
        learner.results_ = spec.get("results") or {}
        learner.delta_m_ = spec.get("delta_m")
        learner.baselines_ = spec.get("baselines")
        from polytask.experiment import build_model

        with torch.random.fork_rng(devices=[]):
            model = build_model(
                learner._config(), learner.tasks_, _zero_example(learner.input_spec_),
                data_info=learner.data_info_,
            )
        state = torch.load(root / "model.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        learner.model_ = model.to(learner._device()).eval()
        return learner


# ---------------------------------------------------------------------------------------- helpers
def _quiet(message: str) -> None:
    """A ``log`` that says nothing (``progress=False``)."""


def _is_task_data(X: Any) -> bool:
    """A user's own implementation of the :class:`TaskData` protocol (not a plain Dataset)."""
    return not isinstance(X, Dataset) and isinstance(X, TaskData)


def _refuse_unsupported(X: Any) -> None:
    """TypeError for inputs that are no data the learner reads, saying what it reads."""
    if isinstance(X, DataLoader):
        raise TypeError(
            "got a DataLoader: pass its Dataset (loader.dataset); the learner builds its own "
            "loader (seeded batches, the collate; num_workers=... is a MultiTaskLearner "
            f"argument). {ACCEPTED}"
        )
    if hasattr(X, "column_names") and hasattr(X, "__getitem__") and not isinstance(X, pd.DataFrame):
        raise TypeError(
            "got a Hugging Face dataset: wrap it to say which columns are inputs, "
            "polytask.data.loader.DatasetData(ds, tasks, input_keys=[...]), and pass that. "
            + ACCEPTED
        )
    ok = (Tensor, np.ndarray, Mapping, pd.DataFrame, Dataset, Splits, MultiTaskData, DatasetData)
    if not isinstance(X, ok) and not _is_task_data(X):
        raise TypeError(f"X of type {type(X).__name__} is not accepted. {ACCEPTED}")


def _no_y(y: Any, what: str) -> None:
    if y is not None:
        raise ValueError(f"{what} carries its own targets; call fit(X) without y")


def _length(value: Any, where: str) -> int:
    if isinstance(value, Tensor | np.ndarray) and value.ndim == 0:
        raise ValueError(f"{where} is a scalar; give one value per row")
    try:
        return len(value)
    except TypeError:
        raise TypeError(
            f"{where} must be an array, tensor or list with one entry per row, got "
            f"{type(value).__name__}"
        ) from None


def _to_tensor(value: Any, where: str, token_ids: bool) -> Tensor:
    """An array / tensor as a model input: floats as float32, integers kept only as token ids."""
    if isinstance(value, Tensor):
        t = value.detach().cpu()
    elif isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise DataError(
                f"{where} holds {value.dtype} values; inputs must be numbers (encode text and "
                "categories first, or pass a DataFrame: its text columns are one-hot encoded)"
            )
        t = torch.from_numpy(np.ascontiguousarray(value))
    elif isinstance(value, pd.DataFrame | pd.Series):
        t = torch.from_numpy(np.ascontiguousarray(value.to_numpy(dtype=np.float32)))
    else:
        raise TypeError(
            f"{where} must be a NumPy array or torch tensor, got {type(value).__name__}. {ACCEPTED}"
        )
    if t.ndim == 0:
        raise ValueError(f"{where} is a scalar; give one row per sample")
    if t.is_complex():
        raise DataError(f"{where} holds complex numbers; inputs must be real")
    if t.dtype == torch.bool or t.is_floating_point() or not token_ids:
        return t.float()
    return t.long()


def _encode_target(
    name: str,
    value: Any,
    task: Task | None,
    kind: str | None,
    encoding: LabelEncoding | None = None,
) -> tuple[Tensor, Task, LabelEncoding | None]:
    """One task's labels as the tensor its Task expects, and the encoding of original labels.

    Labels that already are the task's codes (0/1 for binary, ``0..k-1`` for a given multiclass
    task, numbers for regression) pass as they are; others (strings, ``{-1, 1}``, ``{3, 7, 9}``)
    are encoded by :class:`~polytask.data.table.LabelEncoding` (sorted classes), and that encoding
    maps predictions back. NaN or None marks a missing label (or ``ignore_index`` for a given
    multiclass task).
    """
    arr = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
    if arr.ndim == 2 and arr.shape[1] == 1 and (task is None or task.output_dim == 1):
        arr = arr[:, 0]
    if arr.ndim > 1:
        if task is None:
            raise ValueError(
                f"y[{name!r}] has shape {list(arr.shape)}: a target of several columns needs its "
                f"Task in tasks=, e.g. Task({name!r}, 'multilabel', num_classes={arr.shape[1]}) "
                f"or Task({name!r}, 'regression', out_dim={arr.shape[1]})"
            )
        return torch.as_tensor(arr.astype(np.float32)), task, None
    series = pd.Series(arr, name=name)
    if encoding is None and task is not None:
        codes = _as_codes(arr, task)
        if codes is not None:
            return codes, task, None
    if encoding is None:
        kind = task.kind.value if task is not None else kind or infer_kind(series)
        if kind not in ("binary", "multiclass", "regression"):
            raise ValueError(f"y[{name!r}]: a {kind} task needs 2-D targets [N, k]")
        encoding = LabelEncoding.fit(series, kind)
    target = torch.from_numpy(encoding.encode(series))
    if task is None:
        task = encoding.task()
    elif (
        task.kind is TaskKind.MULTICLASS
        and encoding.num_classes is not None
        and encoding.num_classes != task.num_classes
    ):
        raise ValueError(
            f"task {name!r} has num_classes={task.num_classes} but y[{name!r}] has "
            f"{encoding.num_classes} distinct labels {encoding.classes[:10]}"  # type: ignore[index]
        )
    return target, task, encoding if encoding.classes is not None else None


def _as_codes(arr: np.ndarray, task: Task) -> Tensor | None:
    """``arr`` as the task's label tensor when it already holds the task's codes, else None."""
    if arr.dtype.kind not in "biuf":
        return None
    values = arr.astype(np.float64)
    missing = np.isnan(values)
    if task.kind is TaskKind.MULTICLASS:
        missing |= values == task.ignore_index
        labelled = values[~missing]
        n = task.num_classes or 0
        if (labelled != np.round(labelled)).any() or (labelled < 0).any() or (labelled >= n).any():
            return None
        codes = np.where(missing, task.ignore_index, values).astype(np.int64)
        return torch.from_numpy(codes)
    if task.kind is TaskKind.BINARY and not np.isin(values[~missing], (0.0, 1.0)).all():
        return None
    return torch.from_numpy(values.astype(np.float32))


def _replace_tasks(splits: Splits, tasks: list[Task], pre: TablePreprocessor) -> Splits:
    """A table's splits with the user's Task objects in place of the inferred ones."""
    for t in tasks:
        enc = pre.labels_.get(t.name)
        if t.kind is TaskKind.MULTICLASS and enc is not None and enc.num_classes != t.num_classes:
            raise ValueError(
                f"task {t.name!r} has num_classes={t.num_classes} but its column has "
                f"{enc.num_classes} distinct labels {(enc.classes or [])[:10]}"
            )
    parts = [part.with_tasks(tasks) for part in (splits.train, splits.val, splits.test)]
    return Splits(*parts, info=splits.info).fit_target_scalers()


def _input_spec(example: Inputs) -> dict[str, Any]:
    """Per-row shape and dtype of the inputs: what predict checks and load rebuilds from."""

    def one(t: Tensor) -> dict[str, Any]:
        return {"shape": list(t.shape[1:]), "dtype": str(t.dtype).removeprefix("torch.")}

    if isinstance(example, Tensor):
        return {"kind": "tensor", "inputs": {"": one(example)}}
    return {"kind": "dict", "inputs": {k: one(v) for k, v in example.items()}}


def _zero_example(spec: Mapping[str, Any]) -> Inputs:
    """Two rows of zeros shaped like the training inputs (a model is built from shapes only)."""
    made = {
        k: torch.zeros((2, *s["shape"]), dtype=getattr(torch, s["dtype"]))
        for k, s in spec["inputs"].items()
    }
    return made[""] if spec["kind"] == "tensor" else made


def _check_shapes(inputs: Inputs, spec: Mapping[str, Any], kind: str | None) -> None:
    """Refuse inputs whose per-row shape or keys differ from training, naming both."""
    if not spec:
        return
    if kind == "tensor" and not isinstance(inputs, Tensor):
        raise ValueError("the model was trained on one input array; got a dict of inputs")
    if kind == "dict" and not isinstance(inputs, dict):
        names = sorted(spec["inputs"])
        raise ValueError(f"the model was trained on named inputs {names}; give a dict of them")
    named = {"": inputs} if isinstance(inputs, Tensor) else inputs
    if set(named) != set(spec["inputs"]):
        raise ValueError(f"inputs {sorted(named)} differ from the trained ones {sorted(spec['inputs'])}")
    for k, t in named.items():
        want = spec["inputs"][k]["shape"]
        if list(t.shape[1:]) != want:
            what = f"input {k!r}" if k else "X"
            raise ValueError(
                f"{what} has rows of shape {list(t.shape[1:])}; the model was trained on {want}"
            )


def _fingerprint(splits: Splits) -> str:
    """A hash of in-memory splits, so cached single-task baselines are reused only on the same data.

    The baselines' cache key (:func:`polytask.experiment.train_single_task_baseline`) covers
    the data config; for data from Python that is this fingerprint. A Dataset's content cannot be hashed without
    reading it all, so it gets a fresh random one: its baselines are never reused.
    """
    h = hashlib.sha256()
    for part in (splits.train, splits.val, splits.test):
        if not isinstance(part, MultiTaskData):
            return uuid.uuid4().hex[:16]
        named = part.inputs if isinstance(part.inputs, dict) else {"": part.inputs}
        for key, t in [*sorted(named.items()), *sorted(part.targets.items())]:
            t = t.detach().cpu().contiguous()
            h.update(f"{key}|{t.dtype}|{list(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


class _InputsOnly(Dataset):
    """A Dataset's items with their targets dropped: predict reads inputs only."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        item = self.dataset[index]
        if isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[1], Mapping):
            return item[0], {}
        return item, {}
