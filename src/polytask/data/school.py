"""ILEA School: 139 small regression tasks, one per school, as one missing-label data set.

Why: the Inner London Education Authority exam data (15,362 students in 139 schools, 1985-87) is
the classic *many small tasks* multi-task benchmark (Bakker & Heskes 2003; Evgeniou & Pontil 2004;
Argyriou, Evgeniou & Pontil 2008). Each school is a task predicting a student's exam score.

Here the schools share one :class:`MultiTaskData`: 139 regression tasks ``school_000`` ..
``school_138``, and each row (a student) is labelled only for its own school's task (NaN
elsewhere). That is the "missing labels" view of several data sets stacked together, and it lets
the same trainer handle it as any other multi-task set.

File (``school/school.mat``, MATLAB v5, MALSAR): ``X`` a 1x139 cell of ``n_i x 28`` arrays and
``Y`` a 1x139 cell of ``n_i x 1`` scores. The 28 columns are the 27 standard features (year of the
exam one-hot, % free school meals, % VR band 1, gender, VR band one-hot, ethnic group one-hot,
school gender and denomination one-hot) plus a constant bias column. The loader **drops the bias
column** (the model's layers have their own biases) and standardizes the non-binary columns (the
two school-level percentages) with training statistics; binary columns stay 0/1.

Split: the literature reports the mean over 10 random 75 / 25 splits *per school*. ``load_school``
makes one such split per seed: within every school, a seeded shuffle puts ``train_fraction`` of
its students in the training part, and ``val_fraction_of_train`` of that part is carved out as a
validation slice; the rest of the school is the test split. Score with
:func:`school_explained_variance` on the pooled test students.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from polytask.data import files
from polytask.data.base import DataError, MultiTaskData, Splits
from polytask.tasks import Task

__all__ = [
    "N_SCHOOLS",
    "N_STUDENTS",
    "SCHOOL_FILE",
    "load_school",
    "load_school_raw",
    "school_explained_variance",
    "school_task_names",
]

SCHOOL_FILE = "school/school.mat"
N_SCHOOLS = 139
N_STUDENTS = 15362
N_COLUMNS = 28


def school_task_names(n: int = N_SCHOOLS) -> list[str]:
    return [f"school_{i:03d}" for i in range(n)]


def load_school_raw(
    path: str | os.PathLike[str] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per school ``(X_i float64 [n_i, 28], y_i float64 [n_i])`` exactly as stored (bias included)."""
    from scipy.io import loadmat

    file = files.resolve(SCHOOL_FILE, path)
    try:
        mat = loadmat(file)
    except (ValueError, OSError, NotImplementedError) as err:
        raise DataError(f"{file}: not a readable MATLAB v5 file ({err})") from None
    for key in ("X", "Y"):
        if key not in mat:
            raise DataError(f"{file}: variable {key!r} missing; found {sorted(mat)}")
    X, Y = mat["X"], mat["Y"]
    if X.shape != (1, N_SCHOOLS) or Y.shape != (1, N_SCHOOLS):
        raise DataError(f"{file}: X and Y must be 1x{N_SCHOOLS} cells, got {X.shape} and {Y.shape}")
    schools: list[tuple[np.ndarray, np.ndarray]] = []
    for i in range(N_SCHOOLS):
        x = np.asarray(X[0, i], dtype=np.float64)
        y = np.asarray(Y[0, i], dtype=np.float64).reshape(-1)
        if x.ndim != 2 or x.shape[1] != N_COLUMNS or x.shape[0] != y.shape[0]:
            raise DataError(
                f"{file}: school {i} has X {x.shape} and Y {y.shape}; expected [n, 28] and [n]"
            )
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise DataError(f"{file}: school {i} contains NaN or inf")
        schools.append((x, y))
    return schools


def load_school(
    path: str | os.PathLike[str] | None = None,
    seed: int = 0,
    train_fraction: float = 0.75,
    val_fraction_of_train: float = 0.2,
    target_scaling: str = "per_school",
) -> Splits:
    """One 139-task :class:`Splits` of the School data (see the module docstring).

    Inputs are ``float32 [N, 27]`` (bias column dropped); ``row_ids`` are positions in the
    concatenation of the schools in file order, and a row's school is its one labelled task.

    ``target_scaling`` chooses how the exam scores are standardized for training (metrics are
    always on the original scale): ``"per_school"`` (each school's own training mean and std, the
    historical default) or ``"pooled"`` (one mean and std over every school's training students).
    Pooled keeps the schools on one scale, so the effect a feature has on the score is the same
    number in every task and the difference between schools stays in the targets; with only ~66
    training students per school it is the better choice for models that share their weights
    (see :meth:`Splits.fit_target_scalers`).
    """
    modes = {"per_school": "per_task", "pooled": "pooled"}
    if target_scaling not in modes:
        raise DataError(f"target_scaling must be one of {sorted(modes)}, got {target_scaling!r}")
    if not 0 < train_fraction < 1:
        raise DataError(f"train_fraction must be in (0, 1), got {train_fraction}")
    if not 0 <= val_fraction_of_train < 1:
        raise DataError(f"val_fraction_of_train must be in [0, 1), got {val_fraction_of_train}")
    schools = load_school_raw(path)
    x_all = np.concatenate([x for x, _ in schools])[:, : N_COLUMNS - 1]
    y_all = np.concatenate([y for _, y in schools])
    school_of = np.concatenate([np.full(len(y), i) for i, (_, y) in enumerate(schools)])
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    start = 0
    for i, (_, y) in enumerate(schools):
        n = len(y)
        order = start + rng.permutation(n)
        n_fit = round(train_fraction * n)
        n_val = round(val_fraction_of_train * n_fit)
        if n_fit - n_val < 1 or n - n_fit < 1:
            raise DataError(
                f"school {i} has {n} students: too few for train_fraction={train_fraction}, "
                f"val_fraction_of_train={val_fraction_of_train}"
            )
        parts["val"].append(order[:n_val])
        parts["train"].append(order[n_val:n_fit])
        parts["test"].append(order[n_fit:])
        start += n
    index = {k: np.sort(np.concatenate(v)) for k, v in parts.items()}
    train_x = x_all[index["train"]]
    binary = np.all((train_x == 0) | (train_x == 1), axis=0)
    means = np.where(binary, 0.0, train_x.mean(axis=0))
    stds = np.where(binary, 1.0, train_x.std(axis=0))
    stds = np.where(stds > 1e-12, stds, 1.0)
    inputs = torch.from_numpy(((x_all - means) / stds).astype(np.float32))
    names = school_task_names(len(schools))
    tasks = [Task(name, "regression") for name in names]
    data: dict[str, MultiTaskData] = {}
    for split, idx in index.items():
        owner = school_of[idx]
        targets: dict[str, Tensor] = {}
        for i, name in enumerate(names):
            col = np.full(len(idx), np.nan, dtype=np.float32)
            mine = owner == i
            col[mine] = y_all[idx[mine]]
            targets[name] = torch.from_numpy(col)
        data[split] = MultiTaskData(
            inputs=inputs[torch.from_numpy(idx)],
            targets=targets,
            tasks=tasks,
            name="school",
            row_ids=torch.from_numpy(idx.astype(np.int64)),
        )
    splits = Splits(
        train=data["train"],
        val=data["val"],
        test=data["test"],
        info={
            "dataset": "school",
            "file": SCHOOL_FILE,
            "split": "per school: seeded shuffle, train_fraction to train+val, rest to test",
            "seed": seed,
            "train_fraction": train_fraction,
            "val_fraction_of_train": val_fraction_of_train,
            "target_scaling": target_scaling,
            "students": len(y_all),
            "preprocessing": {
                "dropped": ["column 27 (constant bias)"],
                "standardized_columns": [int(j) for j in np.flatnonzero(~binary)],
                "means": [float(m) for m in means],
                "stds": [float(s) for s in stds],
            },
        },
    )
    return splits.validate().fit_target_scalers(modes[target_scaling])


def school_explained_variance(
    y_true: Tensor | np.ndarray | Sequence[float] | Sequence[np.ndarray],
    y_pred: Tensor | np.ndarray | Sequence[float] | Sequence[np.ndarray],
) -> float:
    """Explained variance in %, as reported for School in the MTL literature.

    Following Bakker & Heskes (2003) and Argyriou, Evgeniou & Pontil (2008), "one minus the mean
    squared test error over the total variance of the data", pooled over all test students of all
    schools::

        EV = 100 * (1 - sum_i (y_i - yhat_i)^2 / sum_i (y_i - mean(y))^2)

    where ``i`` runs over every labelled test student and ``mean(y)`` is their pooled mean. Inputs
    may be flat arrays, per-school lists of arrays (concatenated), or ``[N, tasks]`` matrices with
    NaN in ``y_true`` marking missing labels (those positions are ignored).
    """
    t = _flat(y_true)
    p = _flat(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.shape} values but y_pred {p.shape}")
    keep = ~np.isnan(t)
    t, p = t[keep], p[keep]
    if t.size < 2:
        raise ValueError("explained variance needs at least 2 labelled targets")
    if not np.isfinite(p).all():
        raise ValueError("y_pred has NaN or inf where y_true is labelled")
    total = float(((t - t.mean()) ** 2).sum())
    if total == 0:
        raise ValueError("y_true is constant: explained variance is undefined")
    return 100.0 * (1.0 - float(((t - p) ** 2).sum()) / total)


def _flat(values: object) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().double().numpy().reshape(-1)
    if isinstance(values, np.ndarray):
        return values.astype(np.float64).reshape(-1)
    if isinstance(values, (list, tuple)) and values and not np.isscalar(values[0]):
        return np.concatenate([_flat(v) for v in values])
    return np.asarray(values, dtype=np.float64).reshape(-1)
