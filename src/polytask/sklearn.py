"""``MultiTaskEstimator``: polytask as a scikit-learn estimator (multi-output ``fit(X, Y)``).

Why a second front door beside :class:`polytask.MultiTaskLearner`: scikit-learn's tools
(``Pipeline``, ``GridSearchCV``, ``cross_val_score``, ``clone``) need an estimator that follows
their rules: the constructor stores its keyword arguments unchanged, ``fit(X, Y)`` validates and
returns ``self`` with learned attributes ending in ``_``, ``predict`` returns an array, ``score``
returns one number. The learner keeps its own conventions (dict targets, probabilities from
``predict``, Δm against baselines, run directories); this module adapts them and adds no training
logic: the targets become polytask tasks (:func:`polytask.data.table.infer_kind`,
:class:`~polytask.data.table.LabelEncoding`), the rows become :class:`~polytask.data.base.Splits`,
and :meth:`MultiTaskLearner.fit <polytask.MultiTaskLearner.fit>` trains.

The multi-output contract: ``Y`` is a 2-D array (each column a task, named ``y0``, ``y1``, ...),
a 1-D array (one task, predictions 1-D), a DataFrame or a dict ``{task: labels}`` (tasks named by
their columns / keys). NaN (or None) in ``Y`` is a missing label: that entry is masked out of its
task's loss, never dropped with its row, so rows labelled for some tasks only still train the
others. ``predict`` returns the labels in ``Y``'s own units, one column per task in ``tasks_``
order.

Splits inside ``fit``: scikit-learn scores an estimator on data it never saw (``score``,
cross-validation), so ``fit`` holds out only ``validation_fraction`` of the rows, to choose the
epoch (polytask never selects on training data). There is no test split inside ``fit``; the
learner's end-of-run evaluation, which needs one, is run on the validation rows and reported as
``validation_scores_``.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

try:
    from sklearn.base import BaseEstimator
    from sklearn.metrics import r2_score
    from sklearn.utils.metaestimators import available_if
    from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data
except ImportError as err:  # pragma: no cover - the extra is installed where this is tested
    raise ImportError(
        "polytask.sklearn (MultiTaskEstimator) needs scikit-learn >= 1.6: "
        "pip install 'polytask[sklearn]'"
    ) from err

from polytask.api import MultiTaskLearner
from polytask.data.base import MultiTaskData, Splits, split_indices
from polytask.data.table import LabelEncoding, infer_kind
from polytask.tasks import Task, TaskKind

__all__ = ["KINDS", "MultiTaskEstimator"]

KINDS = ("binary", "multiclass", "regression")
"""Task kinds a column of ``Y`` can have (``tasks=``); other kinds need MultiTaskLearner."""

_CLASSIFICATION = (TaskKind.BINARY, TaskKind.MULTICLASS)


class MultiTaskEstimator(BaseEstimator):
    """A shared-trunk multi-task network as a scikit-learn estimator: ``fit(X, Y)``, one task per
    column of ``Y`` (classification and regression mixed), missing labels as NaN.

    Args:
        tasks: the kind of each task, ``"binary"``, ``"multiclass"`` or ``"regression"``: a list
            (one per column of ``Y``, in order) or a dict ``{task name: kind}``; ``None`` infers
            each kind from its labels (:func:`polytask.data.table.infer_kind`).
        trunk, trunk_options, architecture, model_options, balancer, balancer_options: the
            network and how task losses / gradients are combined, by registered name
            (``polytask list trunks|architectures|balancers``); options as plain dicts.
        epochs, batch_size, lr, weight_decay: training.
        validation_fraction: share of the rows held out of training to select the epoch (and
            for early stopping with ``training={"patience": k}``); in (0, 1).
        baselines: also train one single-task network per task and report Δm on the validation
            rows (``validation_delta_m_``). Off by default: a grid search multiplies its cost.
        training: any other setting of :class:`polytask.config.TrainingConfig`
            (``{"scheduler": "cosine", "engine": "gramian", "grad_clip": 1.0, ...}``).
        random_state: an int for reproducible fits (the split, the initial weights, the batches,
            the balancer's randomness), or ``None`` / a ``RandomState`` to draw one (``seed_``).
        device: ``"auto"`` (CUDA, then MPS, then CPU) or a torch device name.
        out_dir: where the learner writes its run directory; ``None`` uses a temporary
            directory that is removed when ``fit`` returns (the fitted model is kept in memory).

    Attributes after :meth:`fit`: ``n_features_in_`` (and ``feature_names_in_`` for a
    DataFrame ``X``); ``tasks_`` (the :class:`polytask.Task` of each output, in column order);
    ``classes_`` (``{task: array of labels}`` for each classification task, sorted as
    ``predict_proba``'s columns); ``model_`` (the selected torch model); ``learner_`` (the
    fitted :class:`polytask.MultiTaskLearner`: ``save`` / ``load`` / ``evaluate``);
    ``validation_scores_`` (polytask's metrics per task on the validation rows);
    ``validation_delta_m_`` (Δm% there, ``None`` without baselines); ``seed_``; ``run_dir_``
    (``None`` when ``out_dir`` is ``None``).
    """

    def __init__(
        self,
        tasks: Sequence[str] | Mapping[str, str] | None = None,
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
        validation_fraction: float = 0.1,
        baselines: bool = False,
        training: Mapping[str, Any] | None = None,
        random_state: int | np.random.RandomState | None = None,
        device: str = "auto",
        out_dir: str | Path | None = None,
    ) -> None:
        # scikit-learn's rule: store the arguments unchanged; fit validates them.
        self.tasks = tasks
        self.trunk = trunk
        self.trunk_options = trunk_options
        self.architecture = architecture
        self.model_options = model_options
        self.balancer = balancer
        self.balancer_options = balancer_options
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.baselines = baselines
        self.training = training
        self.random_state = random_state
        self.device = device
        self.out_dir = out_dir

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.target_tags.single_output = True
        tags.target_tags.multi_output = True
        tags.non_deterministic = False  # given an int random_state
        return tags

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any) -> MultiTaskEstimator:
        """Train on ``X`` (numbers, ``[n_samples, n_features]``) and the targets ``y`` (``Y`` of
        the module docstring: 1-D, 2-D, a DataFrame or a dict); returns ``self``. Everything is
        validated before any training starts."""
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None"
            )
        if not (
            isinstance(self.validation_fraction, int | float)
            and 0 < self.validation_fraction < 1
        ):
            raise ValueError(
                f"validation_fraction must be a number in (0, 1), got {self.validation_fraction!r}"
            )
        own = sorted(set(self.training or {}) & {*self.get_params(), "seed"})
        if own:
            raise ValueError(
                f"training= repeats {own}: they are MultiTaskEstimator's own parameters "
                "(random_state is the seed); set them there"
            )
        X = validate_data(self, X, reset=True, dtype="numeric", ensure_min_samples=2)
        names = list(self.tasks) if isinstance(self.tasks, Mapping) else None
        columns, single = _target_columns(y, len(X), names)
        kinds = self._kinds(list(columns))
        encodings: dict[str, LabelEncoding] = {}
        targets: dict[str, torch.Tensor] = {}
        for name, series in columns.items():
            kind = kinds.get(name) or infer_kind(series)
            encodings[name] = LabelEncoding.fit(series, kind)
            targets[name] = torch.from_numpy(encodings[name].encode(series))
        tasks = [encodings[name].task() for name in columns]
        seed = _seed(self.random_state)
        splits = self._splits(X, targets, tasks, seed)
        learner = MultiTaskLearner(
            trunk=self.trunk, trunk_options=self.trunk_options,
            architecture=self.architecture, model_options=self.model_options,
            balancer=self.balancer, balancer_options=self.balancer_options,
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            weight_decay=self.weight_decay, seed=seed, baselines=self.baselines,
            device=self.device, progress=False, report=False, **dict(self.training or {}),
        )  # fmt: skip
        with _own_directory(self.out_dir) as out, _global_rng_kept():
            learner.out_dir = out
            learner.fit(splits)
        if self.out_dir is None:  # the temporary directory is gone: point at nothing
            learner.out_dir = learner.run_dir_ = learner.out_dir_ = None
        self.seed_ = seed
        self.learner_ = learner
        self.model_ = learner.model_
        self.tasks_: list[Task] = list(learner.tasks_)
        self.encodings_ = encodings
        self.classes_ = {
            t.name: np.asarray(encodings[t.name].classes) for t in tasks if t.kind in _CLASSIFICATION
        }
        self.single_output_ = single
        self.validation_scores_ = learner.results_["val"]
        self.validation_delta_m_ = learner.delta_m_
        self.run_dir_ = learner.run_dir_ if self.out_dir is not None else None
        return self

    def _kinds(self, names: list[str]) -> dict[str, str]:
        """``tasks=`` as ``{column: kind}`` (empty: infer every kind); names and kinds checked."""
        if self.tasks is None:
            return {}
        if isinstance(self.tasks, Mapping):
            given = {str(k): v for k, v in self.tasks.items()}
            if sorted(given) != sorted(names):
                raise ValueError(
                    f"tasks= names {sorted(given)} but Y has the columns {names}; give one kind "
                    "per column of Y"
                )
        elif isinstance(self.tasks, Sequence) and not isinstance(self.tasks, str):
            if len(self.tasks) != len(names):
                raise ValueError(
                    f"tasks= gives {len(self.tasks)} kind(s) but Y has {len(names)} column(s) "
                    f"{names}; give one kind per column"
                )
            given = dict(zip(names, self.tasks, strict=True))
        else:
            raise TypeError(
                "tasks= must be None, a list of kinds (one per column of Y) or a dict "
                f"{{task: kind}}, got {type(self.tasks).__name__}"
            )
        bad = {k: v for k, v in given.items() if v not in KINDS}
        if bad:
            raise ValueError(
                f"tasks=: unknown kind(s) {bad}; a column of Y is one of {list(KINDS)} "
                "(other kinds: polytask.MultiTaskLearner with Task objects)"
            )
        return given

    def _splits(
        self, X: np.ndarray, targets: dict[str, torch.Tensor], tasks: list[Task], seed: int
    ) -> Splits:
        """Training and validation rows (the validation rows also stand in for the test split)."""
        n = len(X)
        fraction = float(self.validation_fraction)
        train, val, _ = split_indices(n, (1 - fraction, fraction, 0.0), seed)
        if len(train) == 0 or len(val) == 0:
            raise ValueError(
                f"{n} samples cannot be cut into training and validation rows with "
                f"validation_fraction={fraction} (it leaves {len(train)} / {len(val)}); give more "
                "samples or change validation_fraction"
            )
        inputs = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        data = MultiTaskData(inputs, targets, tasks, name="X").validate()
        held_out = data.subset(val)
        splits = Splits(data.subset(train), held_out, held_out, info={"split": "sklearn"})
        return splits.validate().fit_target_scalers()

    # ------------------------------------------------------------------ predict and score
    def _checked(self, X: Any) -> np.ndarray:
        """``X`` as float32 after scikit-learn's checks (fitted, same number of features)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype="numeric")
        return np.ascontiguousarray(X, dtype=np.float32)

    def predict(self, X: Any) -> np.ndarray:
        """Labels in ``Y``'s units: ``[n_samples, n_tasks]`` in ``tasks_`` order, or
        ``[n_samples]`` when ``Y`` was 1-D. Classification: the most probable class (binary: the
        positive class when its probability exceeds 0.5); regression: the value."""
        X = self._checked(X)
        raw = self.learner_.predict(X)
        columns = [self._labels(task, raw[task.name]) for task in self.tasks_]
        if self.single_output_:
            return columns[0]
        if all(c.dtype.kind in "biuf" for c in columns):
            return np.column_stack(columns)
        out = np.empty((len(columns[0]), len(columns)), dtype=object)
        for j, c in enumerate(columns):
            out[:, j] = c
        return out

    def _labels(self, task: Task, raw: np.ndarray) -> np.ndarray:
        """The learner's prediction of one task as labels (it gives binary probabilities and
        multiclass codes, since the labels were encoded here)."""
        if task.kind is TaskKind.BINARY:
            return self.classes_[task.name][(raw > 0.5).astype(np.int64)]
        if task.kind is TaskKind.MULTICLASS:
            return self.classes_[task.name][raw.astype(np.int64)]
        return raw.astype(np.float64)

    def _has_classification(self) -> bool:
        """``predict_proba`` exists before fit (it raises NotFittedError) and after a fit with a
        classification task."""
        tasks = getattr(self, "tasks_", None)
        return tasks is None or any(t.kind in _CLASSIFICATION for t in tasks)

    @available_if(_has_classification)
    def predict_proba(self, X: Any) -> np.ndarray | list[np.ndarray]:
        """Class probabilities of the classification tasks, columns in ``classes_[task]`` order.

        ``[n_samples, n_classes]`` when ``Y`` was 1-D; otherwise a list with one such array per
        classification task, in ``tasks_`` order (regression tasks have none), as scikit-learn's
        multi-output classifiers return them.
        """
        X = self._checked(X)
        proba = self.learner_.predict_proba(X)
        out = []
        for task in self.tasks_:
            if task.kind is TaskKind.BINARY:
                p = proba[task.name].astype(np.float64)
                out.append(np.column_stack([1.0 - p, p]))
            elif task.kind is TaskKind.MULTICLASS:
                out.append(proba[task.name].astype(np.float64))
        return out[0] if self.single_output_ else out

    def score(self, X: Any, y: Any, sample_weight: None = None) -> float:
        """Mean over tasks of accuracy (classification) or R² (regression), each on the rows
        that label the task (NaN / None entries of ``Y`` are skipped).

        Both are higher-is-better, which ``GridSearchCV`` assumes. A task with too few labels in
        ``Y`` to be scored (none for accuracy, fewer than 2 for R²) is left out of the mean
        with a warning naming it; if no task can be scored, a ValueError.
        """
        if sample_weight is not None:
            raise ValueError("MultiTaskEstimator.score does not take sample_weight")
        X = self._checked(X)
        names = [t.name for t in self.tasks_]
        columns, _ = _target_columns(y, len(X), names)
        if list(columns) != names:
            raise ValueError(f"Y has the columns {list(columns)}; the model's tasks are {names}")
        pred = self.predict(X)
        pred = pred.reshape(len(pred), -1)
        scores, skipped = [], []
        for j, task in enumerate(self.tasks_):
            truth = columns[task.name]
            labelled = ~truth.isna().to_numpy()
            need = 1 if task.kind in _CLASSIFICATION else 2
            if labelled.sum() < need:
                skipped.append(task.name)
                continue
            y, p = truth.to_numpy()[labelled], pred[labelled, j]
            if task.kind in _CLASSIFICATION:
                scores.append(float(np.mean(p == y)))
            else:
                scores.append(float(r2_score(y.astype(np.float64), p.astype(np.float64))))
        if skipped:
            warnings.warn(
                f"score: {len(skipped)} task(s) left out of the mean, too few labels in Y: "
                f"{skipped[:10]}",
                UserWarning,
                stacklevel=2,
            )
        if not scores:
            raise ValueError(f"score: no task of {names} has enough labels in Y to be scored")
        return float(np.mean(scores))


# ---------------------------------------------------------------------------------------- helpers
def _target_columns(
    Y: Any, n: int, names: Sequence[str] | None
) -> tuple[dict[str, pd.Series], bool]:
    """``Y`` as ``{task: Series of n labels}`` and whether it was one 1-D target.

    ``names`` names the columns of an array (the keys of ``tasks=`` in ``fit``, the fitted task
    names in ``score``); without them they are ``y0``, ``y1``, ... (a 1-D array: ``y``).
    """
    if hasattr(Y, "toarray") or hasattr(Y, "tocsr"):  # scipy sparse
        raise TypeError("Y is a sparse matrix; give a dense array, a DataFrame or a dict")
    if isinstance(Y, Mapping):
        if not Y:
            raise ValueError("Y is an empty dict; give {task name: labels}")
        cols, single = {str(k): _series(v, str(k)) for k, v in Y.items()}, False
    elif isinstance(Y, pd.DataFrame):
        if Y.shape[1] == 0:
            raise ValueError("Y is a DataFrame without columns")
        cols = {str(c): Y[c].reset_index(drop=True).rename(str(c)) for c in Y.columns}
        single = False
    elif isinstance(Y, pd.Series):
        name = str(Y.name) if Y.name is not None else "y"
        cols, single = {name: Y.reset_index(drop=True).rename(name)}, True
    else:
        arr = Y.detach().cpu().numpy() if isinstance(Y, torch.Tensor) else np.asarray(Y)
        if arr.ndim not in (1, 2):
            raise ValueError(f"Y must be 1-D or 2-D, got shape {arr.shape}")
        single = arr.ndim == 1
        arr = arr.reshape(len(arr), -1)
        width = arr.shape[1]
        if names is not None and len(names) == width:
            labels = [str(k) for k in names]
        else:
            labels = ["y"] if single else [f"y{j}" for j in range(width)]
        cols = {label: pd.Series(arr[:, j], name=label) for j, label in enumerate(labels)}
    for name, series in cols.items():
        if len(series) != n:
            raise ValueError(
                f"Found input variables with inconsistent numbers of samples: X has {n} rows, "
                f"Y column {name!r} has {len(series)}"
            )
    return cols, single


def _series(value: Any, name: str) -> pd.Series:
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if arr.ndim != 1:
        raise ValueError(f"Y[{name!r}] must be 1-D (one label per row), got shape {arr.shape}")
    return pd.Series(arr, name=name)


def _seed(random_state: Any) -> int:
    """An int ``random_state`` as it is; ``None`` or a ``RandomState`` draws one."""
    if isinstance(random_state, int | np.integer) and not isinstance(random_state, bool):
        if not 0 <= int(random_state) < 2**32:
            raise ValueError(f"random_state must be in [0, 2**32), got {random_state}")
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


@contextlib.contextmanager
def _own_directory(out_dir: str | Path | None) -> Iterator[Path]:
    """The user's ``out_dir``, or a temporary directory removed afterwards."""
    if out_dir is not None:
        yield Path(out_dir)
        return
    with tempfile.TemporaryDirectory(prefix="polytask-sklearn-") as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def _global_rng_kept() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's global RNG after training.

    polytask's loop seeds them all for its own reproducibility; a scikit-learn estimator must
    not reset its caller's random streams as a side effect of ``fit``.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)

