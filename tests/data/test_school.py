"""ILEA School: 139 per-school tasks as missing labels, per-school splits, explained variance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from polytask.data.base import DataError
from polytask.data.school import load_school, load_school_raw, school_explained_variance


def test_raw_file_has_139_schools_and_15362_students(data_dir: Path) -> None:
    schools = load_school_raw()
    assert len(schools) == 139
    assert sum(len(y) for _, y in schools) == 15362
    assert all(x.shape[1] == 28 and np.all(x[:, -1] == 1) for x, _ in schools)  # bias column


def test_one_dataset_with_one_label_per_student(data_dir: Path) -> None:
    splits = load_school(seed=0)
    names = [t.name for t in splits.tasks]
    assert names[0] == "school_000" and names[-1] == "school_138" and len(names) == 139
    assert all(t.kind.value == "regression" for t in splits.tasks)
    parts = (splits.train, splits.val, splits.test)
    assert sum(len(d) for d in parts) == 15362
    ids = torch.cat([d.row_ids for d in parts])
    assert len(set(ids.tolist())) == 15362
    for data in parts:
        assert data.inputs.shape[1] == 27
        labelled = torch.stack([~torch.isnan(data.targets[n]) for n in names], dim=1)
        assert torch.equal(labelled.sum(1), torch.ones(len(data), dtype=torch.long))
    schools = load_school_raw()
    train = splits.train.label_counts()
    test = splits.test.label_counts()
    for i, (_, y) in enumerate(schools):
        name = f"school_{i:03d}"
        assert train[name] >= 1
        assert abs(test[name] - 0.25 * len(y)) <= 1  # per-school 75/25
    # the binary features stay 0/1, the two school-level percentages are standardized
    x = splits.train.inputs
    assert set(torch.unique(x[:, 0]).tolist()) <= {0.0, 1.0}
    assert splits.info["preprocessing"]["standardized_columns"] == [3, 4]
    assert x[:, 3].mean().abs() < 1e-4


def test_pooled_ridge_explains_about_a_third_of_the_variance(data_dir: Path) -> None:
    splits = load_school(seed=0)
    names = [t.name for t in splits.tasks]

    def design(data: object) -> tuple[np.ndarray, np.ndarray]:
        y = np.stack([data.targets[n].numpy() for n in names], axis=1)
        own = (~np.isnan(y)).astype(np.float64)
        return np.hstack([data.inputs.double().numpy(), own]), np.nansum(y, axis=1)

    x_tr, y_tr = design(splits.train)
    x_te, y_te = design(splits.test)
    w = np.linalg.solve(x_tr.T @ x_tr + np.eye(x_tr.shape[1]), x_tr.T @ y_tr)
    ev = school_explained_variance(y_te, x_te @ w)
    assert 30 < ev < 45  # README: pooled ridge with a school one-hot reaches about 37%


def test_explained_variance_formula() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert school_explained_variance(y, y) == pytest.approx(100.0)
    assert school_explained_variance(y, np.full(4, 2.5)) == pytest.approx(0.0)
    pred = np.array([1.5, 2.0, 3.0, 3.5])  # SSE 0.5, SST 5
    assert school_explained_variance(y, pred) == pytest.approx(90.0)
    # per-school lists are pooled, and NaN (unlabelled) entries of a matrix are ignored
    assert school_explained_variance([y[:1], y[1:]], [pred[:1], pred[1:]]) == pytest.approx(90.0)
    matrix = np.full((4, 2), np.nan)
    matrix[[0, 1], 0] = y[:2]
    matrix[[2, 3], 1] = y[2:]
    guesses = np.where(np.isnan(matrix), 0.0, np.array([[1.5], [2.0], [3.0], [3.5]]))
    assert school_explained_variance(torch.tensor(matrix), guesses) == pytest.approx(90.0)
    with pytest.raises(ValueError, match="constant"):
        school_explained_variance(np.ones(3), np.ones(3))


def test_bad_split_fractions(data_dir: Path) -> None:
    with pytest.raises(DataError, match="train_fraction"):
        load_school(train_fraction=1.0)


def test_pooled_target_scaling_puts_every_school_on_one_scale(data_dir: Path) -> None:
    splits = load_school(seed=0, target_scaling="pooled")
    assert splits.info["target_scaling"] == "pooled"
    y = torch.cat([splits.train.targets[t.name] for t in splits.tasks])
    y = y[~torch.isnan(y)].double()
    for task in splits.tasks:
        assert task.target_mean_ == pytest.approx(float(y.mean()))
        assert task.target_std_ == pytest.approx(float(y.std()))
    # the default stays per school: different schools, different scales
    per_school = load_school(seed=0)
    assert len({round(t.target_mean_, 6) for t in per_school.tasks}) > 100
    with pytest.raises(DataError, match="target_scaling"):
        load_school(seed=0, target_scaling="global")


def test_fit_target_scalers_pooled_skips_non_regression_tasks() -> None:
    from polytask.data.base import MultiTaskData, Splits
    from polytask.tasks import Task

    nan = float("nan")
    tasks = [Task("a", "regression"), Task("b", "regression"), Task("c", "binary")]
    targets = {
        "a": torch.tensor([1.0, 3.0, nan, nan]),
        "b": torch.tensor([nan, nan, 5.0, 7.0]),
        "c": torch.tensor([0.0, 1.0, 0.0, 1.0]),
    }
    data = MultiTaskData(inputs=torch.zeros(4, 2), targets=targets, tasks=tasks, name="toy")
    Splits(train=data, val=data, test=data).fit_target_scalers("pooled")
    pooled = torch.tensor([1.0, 3.0, 5.0, 7.0], dtype=torch.float64)
    for task in tasks[:2]:
        assert task.target_mean_ == pytest.approx(4.0)
        assert task.target_std_ == pytest.approx(float(pooled.std()))
    assert tasks[2].target_mean_ == 0.0 and tasks[2].target_std_ == 1.0
    with pytest.raises(DataError, match="per_task"):
        Splits(train=data, val=data, test=data).fit_target_scalers("per_source")
