"""MultiTaskEstimator: scikit-learn's own estimator checks, multi-output targets with missing
labels, Pipeline / GridSearchCV / cross-validation on real data, determinism, refusals.

Why: the estimator exists so that scikit-learn's tools can drive polytask, and those tools rely on
an exact contract (constructor stores, fit validates and returns self, fitted attributes end in
``_``, ``n_features_in_`` checked on predict, clone / pickle / idempotent refits). scikit-learn's
checks are the authority on that contract; the multi-output part, which they do not exercise for
an estimator that is neither a classifier nor a regressor, is tested here. One-epoch fits of a
4- or 8-wide MLP on at most a few hundred rows keep the file to seconds per test.
"""

from __future__ import annotations

import pickle
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import polytask
from polytask.data.base import DataError, split_indices
from polytask.data.census import NUMERIC_COLUMNS, read_census
from polytask.data.school import load_school_raw
from polytask.sklearn import MultiTaskEstimator

TINY: dict[str, Any] = {"epochs": 1, "batch_size": 32, "trunk_options": {"hidden": [4]}}

# Every scikit-learn check passes, so none is marked as expected to fail (the mechanism would be
# `expected_failed_checks={check name: reason}`). scikit-learn itself skips
# `check_array_api_input` unless SCIPY_ARRAY_API=1 is set before SciPy is imported; the
# estimator does not declare array-API support (it converts X to a NumPy float32 array).
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


@parametrize_with_checks(
    [MultiTaskEstimator(**TINY, random_state=0)],
    expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS,
)
def test_scikit_learn_estimator_checks(estimator: MultiTaskEstimator, check: Any) -> None:
    with warnings.catch_warnings():
        # one-epoch fits on the checks' tiny data: ROC-AUC undefined on a one-class validation
        # split is reported (and counted) by polytask; it is not what these checks test
        warnings.filterwarnings("ignore", message=".*undefined.*")
        check(estimator)


def _mixed(n: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """X and a 3-column Y: binary 0/1, regression, multiclass {3, 5, 7}; NaN = missing label."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    Y = np.column_stack(
        [
            (X[:, 0] > 0).astype(float),
            3.0 * X[:, 1] + 10.0,
            np.array([3.0, 5.0, 7.0])[(X[:, 2] > 0).astype(int) + (X[:, 3] > 0.5)],
        ]
    )
    Y[::2, 1] = np.nan  # half the rows have no regression label
    Y[1::4, 0] = np.nan  # a quarter have no binary label
    return X, Y


@pytest.fixture(scope="module")
def mixed_fit() -> tuple[np.ndarray, np.ndarray, MultiTaskEstimator]:
    X, Y = _mixed()
    return X, Y, MultiTaskEstimator(**TINY, random_state=0).fit(X, Y)


# ------------------------------------------------------------------------------ the contract
def test_constructor_stores_arguments_as_given_and_fit_validates_them() -> None:
    options = {"hidden": [4]}
    est = MultiTaskEstimator(trunk_options=options, balancer="no-such", validation_fraction=2)
    assert est.get_params()["trunk_options"] is options  # stored, not copied or checked
    assert clone(est).get_params()["balancer"] == "no-such"
    X, Y = _mixed()
    with pytest.raises(ValueError, match="validation_fraction must be a number in \\(0, 1\\)"):
        est.fit(X, Y)
    est.set_params(validation_fraction=0.1)
    with pytest.raises(ValueError, match="unknown balancer 'no-such'; choose one of"):
        est.fit(X, Y)
    assert not hasattr(est, "model_")


def test_available_from_the_package_namespace() -> None:
    assert polytask.MultiTaskEstimator is MultiTaskEstimator


# ------------------------------------------------------------------------------ multi-output
def test_mixed_tasks_with_missing_labels_are_masked_not_dropped(
    mixed_fit: tuple[np.ndarray, np.ndarray, MultiTaskEstimator],
) -> None:
    X, Y, est = mixed_fit
    assert [(t.name, t.kind.value) for t in est.tasks_] == [
        ("y0", "binary"), ("y1", "regression"), ("y2", "multiclass"),
    ]  # fmt: skip
    assert est.n_features_in_ == 5
    assert list(est.classes_) == ["y0", "y2"]
    np.testing.assert_array_equal(est.classes_["y2"], [3.0, 5.0, 7.0])
    # the validation rows: each task counts exactly its own labelled rows there, so a row
    # without a regression label still scores (and trained) the other two tasks
    _, val, _ = split_indices(len(X), (0.9, 0.1, 0.0), est.seed_)
    for j, task in enumerate(est.tasks_):
        labelled = int((~np.isnan(Y[val.numpy(), j])).sum())
        assert est.validation_scores_[task.name]["labelled"] == labelled
    assert est.validation_scores_["y0"]["labelled"] > est.validation_scores_["y1"]["labelled"]

    pred = est.predict(X)
    assert pred.shape == (len(X), 3) and np.isfinite(pred).all()
    assert set(np.unique(pred[:, 0])) <= {0.0, 1.0}
    assert set(np.unique(pred[:, 2])) <= {3.0, 5.0, 7.0}
    proba = est.predict_proba(X)
    assert [p.shape for p in proba] == [(len(X), 2), (len(X), 3)]
    for p in proba:
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    # predict is the most probable class of predict_proba
    np.testing.assert_array_equal(pred[:, 2], est.classes_["y2"][proba[1].argmax(axis=1)])
    np.testing.assert_array_equal(pred[:, 0], est.classes_["y0"][proba[0].argmax(axis=1)])
    assert np.isfinite(est.score(X, Y))


def test_string_labels_one_dimensional_target() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 3))
    y = np.where(X[:, 0] + 0.2 * rng.normal(size=120) > 0, "spam", "ham")
    est = MultiTaskEstimator(**TINY, random_state=0).fit(X, y)
    pred = est.predict(X)
    assert pred.shape == (120,) and set(pred) <= {"ham", "spam"}
    proba = est.predict_proba(X)
    assert isinstance(proba, np.ndarray) and proba.shape == (120, 2)
    np.testing.assert_array_equal(est.classes_["y"], ["ham", "spam"])
    assert est.score(X, y) == pytest.approx(float(np.mean(pred == y)))


def test_dataframe_and_dict_targets_name_the_tasks_in_their_order() -> None:
    X, Y = _mixed(120)
    frame = pd.DataFrame({"clicked": Y[:, 0], "spend": Y[:, 1]})
    est = MultiTaskEstimator(**TINY, random_state=0).fit(X, frame)
    assert [t.name for t in est.tasks_] == ["clicked", "spend"]
    from_dict = MultiTaskEstimator(**TINY, random_state=0).fit(
        X, {"spend": Y[:, 1], "clicked": Y[:, 0]}
    )
    assert [t.name for t in from_dict.tasks_] == ["spend", "clicked"]
    with pytest.raises(ValueError, match=r"Y has the columns \['spend', 'clicked'\]"):
        est.score(X, {"spend": Y[:, 1], "clicked": Y[:, 0]})  # not the fitted order


def test_given_kinds_override_inference_and_are_checked() -> None:
    X, Y = _mixed(120)
    # integer-valued column with 3 values would be inferred multiclass: forced to regression
    est = MultiTaskEstimator(**TINY, tasks=["binary", "regression", "regression"], random_state=0)
    est.fit(X, Y)
    assert [t.kind.value for t in est.tasks_] == ["binary", "regression", "regression"]
    assert list(est.classes_) == ["y0"]  # the forced column has no classes
    named = MultiTaskEstimator(**TINY, tasks={"a": "binary", "b": "regression"}, random_state=0)
    named.fit(X, Y[:, :2])
    assert [t.name for t in named.tasks_] == ["a", "b"]
    with pytest.raises(ValueError, match="tasks= gives 2 kind\\(s\\) but Y has 3 column"):
        MultiTaskEstimator(**TINY, tasks=["binary", "regression"]).fit(X, Y)
    with pytest.raises(ValueError, match="unknown kind\\(s\\) \\{'y1': 'count'\\}"):
        MultiTaskEstimator(**TINY, tasks=["binary", "count", "multiclass"]).fit(X, Y)


def test_regression_only_model_has_no_predict_proba() -> None:
    X, Y = _mixed(120)
    est = MultiTaskEstimator(**TINY, random_state=0)
    assert hasattr(est, "predict_proba")  # unfitted: it exists (and raises NotFittedError)
    est.fit(X, Y[:, [1]])
    assert not hasattr(est, "predict_proba")
    assert est.predict(X).shape == (120, 1)  # a 2-D Y of one column stays 2-D


# ------------------------------------------------------------------------------ randomness
def test_random_state_makes_fits_identical_and_leaves_global_rngs_alone() -> None:
    X, Y = _mixed(120)
    np.random.seed(123)
    torch.manual_seed(123)
    np_before, torch_before = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    a = MultiTaskEstimator(**TINY, random_state=7).fit(X, Y).predict(X)
    assert np.array_equal(np.random.get_state()[1], np_before)
    assert torch.equal(torch.get_rng_state(), torch_before)
    b = MultiTaskEstimator(**TINY, random_state=7).fit(X, Y).predict(X)
    np.testing.assert_array_equal(a, b)
    c = MultiTaskEstimator(**TINY, random_state=8).fit(X, Y).predict(X)
    assert not np.array_equal(a[:, 1], c[:, 1])
    # a RandomState draws the seed (kept as seed_, so the fit can be repeated)
    drawn = MultiTaskEstimator(**TINY, random_state=np.random.RandomState(5)).fit(X, Y)
    assert drawn.seed_ == np.random.RandomState(5).randint(np.iinfo(np.int32).max)


def test_pickled_estimator_predicts_the_same(
    mixed_fit: tuple[np.ndarray, np.ndarray, MultiTaskEstimator],
) -> None:
    X, _, est = mixed_fit
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(est)).predict(X), est.predict(X))


# ------------------------------------------------------------------------------ refusals
def test_refusals_before_training_name_the_problem() -> None:
    X, Y = _mixed(120)
    with pytest.raises(ValueError, match="requires y to be passed"):
        MultiTaskEstimator(**TINY).fit(X, None)
    _, val, _ = split_indices(120, (0.9, 0.1, 0.0), 0)  # the rows fit holds out
    no_train_label = Y.copy()
    no_train_label[:, 1] = np.nan
    no_train_label[val[:2].numpy(), 1] = [1.0, 2.5]  # labelled in validation rows only
    with pytest.raises(DataError, match="task 'y1' has no label in the training split"):
        MultiTaskEstimator(**TINY, random_state=0).fit(X, no_train_label)
    with pytest.raises(ValueError, match="3 samples cannot be cut into training and validation"):
        MultiTaskEstimator(**TINY).fit(X[:3], Y[:3, 0])
    with pytest.raises(ValueError, match=r"inconsistent numbers of samples.*'b' has 119"):
        MultiTaskEstimator(**TINY).fit(X, {"a": Y[:, 0], "b": Y[:119, 1]})
    with pytest.raises(TypeError, match="unexpected argument\\(s\\) \\['epoch'\\]"):
        MultiTaskEstimator(**TINY, training={"epoch": 3}).fit(X, Y)
    with pytest.raises(ValueError, match=r"training= repeats \['lr', 'seed'\]"):
        MultiTaskEstimator(**TINY, training={"lr": 0.1, "seed": 1}).fit(X, Y)


def test_score_leaves_out_an_unlabelled_task_with_a_warning(
    mixed_fit: tuple[np.ndarray, np.ndarray, MultiTaskEstimator],
) -> None:
    X, Y, est = mixed_fit
    Y_eval = Y.copy()
    Y_eval[:, 1] = np.nan
    with pytest.warns(UserWarning, match=r"1 task\(s\) left out of the mean.*\['y1'\]"):
        partial = est.score(X, Y_eval)
    pred = est.predict(X)
    labelled = ~np.isnan(Y[:, 0])
    expected = np.mean([np.mean(pred[labelled, 0] == Y[labelled, 0]), np.mean(pred[:, 2] == Y[:, 2])])
    assert partial == pytest.approx(expected)
    with pytest.raises(ValueError, match="does not take sample_weight"):
        est.score(X, Y, sample_weight=np.ones(len(X)))


# ------------------------------------------------------------------------------ real data
def test_pipeline_and_grid_search_over_lr_and_balancer_on_census(data_dir: Any) -> None:
    """400 real Census rows: income (two string labels) and marital status (six strings)."""
    df = read_census(max_rows=400)
    X = df[NUMERIC_COLUMNS].to_numpy(dtype=np.float64)
    Y = df[["income", "marital_status"]]
    pipe = Pipeline(
        [
            ("scale", StandardScaler()),
            ("mtl", MultiTaskEstimator(epochs=2, batch_size=64, trunk_options={"hidden": [8]},
                                       random_state=0)),
        ]
    )  # fmt: skip
    grid = {"mtl__lr": [1e-3, 1e-2], "mtl__balancer": ["equal", "upgrad"]}
    search = GridSearchCV(pipe, grid, cv=2, error_score="raise").fit(X, Y)
    scores = search.cv_results_["mean_test_score"]
    assert len(scores) == 4 and np.isfinite(scores).all() and (scores > 0).all()
    assert search.best_score_ == pytest.approx(scores.max())
    best = search.best_estimator_.named_steps["mtl"]
    assert [t.name for t in best.tasks_] == ["income", "marital_status"]
    pred = search.predict(X)
    assert pred.shape == (400, 2) and pred.dtype == object
    assert set(pred[:, 0]) <= {"- 50000.", "50000+."}
    assert set(pred[:, 1]) <= set(df["marital_status"])


def test_school_tasks_label_disjoint_rows_cross_validated(data_dir: Any) -> None:
    """Three real schools as three regression tasks: each student labels only his own school's
    column (the rest is NaN), so every row misses two of the three labels."""
    schools = load_school_raw()[:3]
    X = np.concatenate([x[:, :27] for x, _ in schools])
    Y = np.full((len(X), 3), np.nan)
    start = 0
    for j, (_, y) in enumerate(schools):
        Y[start : start + len(y), j] = y
        start += len(y)
    pipe = Pipeline(
        [("scale", StandardScaler()), ("mtl", MultiTaskEstimator(**TINY, random_state=0))]
    )
    folds = KFold(2, shuffle=True, random_state=0)
    scores = cross_val_score(pipe, X, Y, cv=folds)
    assert scores.shape == (2,) and np.isfinite(scores).all()
    pred = pipe.fit(X, Y).predict(X)
    assert pred.shape == (len(X), 3) and np.isfinite(pred).all()  # every school for every row
