"""MultiTaskLearner: every accepted input, Δm, save / load / predict, and every refusal.

Why these tests: the learner is the documented path for a new user, so each input type it accepts
must train and predict, a saved model must predict identically in a fresh process-like learner,
and each bad input must fail before training with a message that says what is wrong.
Tiny data, one epoch, a 16-wide MLP: the whole file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from polytask import MultiTaskLearner, Task
from polytask.data.base import DataError, MultiTaskData, random_split
from polytask.data.loader import DatasetData
from polytask.inference import load_run

N = 120
SMALL = {"epochs": 1, "batch_size": 32, "trunk_options": {"hidden": [16]}}


def _arrays(n: int = N, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    y = {
        "pos": (X[:, 0] > 0).astype(int),
        "kind": np.array(["ant", "bee", "cat"])[(X[:, 1] > 0).astype(int) + (X[:, 2] > 0.5)],
        "size": X[:, 3] * 10.0 + 50.0,
    }
    return X, y


def _learner(tmp: Path, **kw: Any) -> MultiTaskLearner:
    return MultiTaskLearner(**{**SMALL, "baselines": False, "out_dir": tmp / "runs", **kw})


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> MultiTaskLearner:
    """Arrays with inferred kinds (binary 0/1, multiclass strings, regression), with baselines."""
    root = tmp_path_factory.mktemp("api")
    X, y = _arrays()
    mp = pytest.MonkeyPatch()
    mp.setenv("POLYTASK_CACHE", str(root / "cache"))
    try:
        return MultiTaskLearner(**SMALL, out_dir=root / "runs").fit(X, y)
    finally:
        mp.undo()


# ------------------------------------------------------------------------------------ arrays
def test_arrays_give_metrics_baselines_and_delta_m(fitted: MultiTaskLearner) -> None:
    kinds = {t.name: t.kind.value for t in fitted.tasks_}
    assert kinds == {"pos": "binary", "kind": "multiclass", "size": "regression"}
    assert set(fitted.results_) == {"val", "test"}
    assert set(fitted.results_["test"]) == {"pos", "kind", "size"}
    assert fitted.baselines_ is not None and set(fitted.baselines_["test"]) == set(kinds)
    assert isinstance(fitted.delta_m_, float) and np.isfinite(fitted.delta_m_)
    assert fitted.classes_["kind"] == ["ant", "bee", "cat"]


def test_predictions_are_in_the_targets_units(fitted: MultiTaskLearner) -> None:
    X, y = _arrays(10, seed=1)
    pred = fitted.predict(X)
    assert set(pred) == {"pos", "kind", "size"}
    assert ((pred["pos"] >= 0) & (pred["pos"] <= 1)).all() and pred["pos"].shape == (10,)
    assert set(pred["kind"]) <= {"ant", "bee", "cat"}
    assert pred["size"].dtype == np.float32 and abs(float(pred["size"].mean()) - 50) < 30
    metrics = fitted.evaluate(X, y)
    assert metrics["kind"]["labelled"] == 10 and 0 <= metrics["kind"]["accuracy"] <= 1


def test_run_directory_reloads_with_load_run(fitted: MultiTaskLearner) -> None:
    assert fitted.run_dir_ is not None and (fitted.run_dir_ / "config.yaml").exists()
    run = load_run(fitted.run_dir_)
    assert [t.name for t in run.tasks] == ["pos", "kind", "size"]
    with pytest.raises(ValueError, match="pass its splits"):
        run.evaluate()


def test_save_load_round_trip_predicts_identically(
    fitted: MultiTaskLearner, tmp_path: Path
) -> None:
    X, _ = _arrays(15, seed=2)
    fitted.save(tmp_path / "model")
    spec = json.loads((tmp_path / "model" / "learner.json").read_text())
    assert spec["format_version"] == 1 and spec["params"]["trunk"] == "mlp"
    assert torch.load(tmp_path / "model" / "model.pt", weights_only=True)  # plain tensors only
    fresh = MultiTaskLearner.load(tmp_path / "model")
    before, after = fitted.predict(X), fresh.predict(X)
    for name in before:
        assert np.array_equal(before[name], after[name]), name
    assert fresh.delta_m_ == fitted.delta_m_
    assert [t.target_mean_ for t in fresh.tasks_] == [t.target_mean_ for t in fitted.tasks_]


def test_tensors_and_given_tasks(tmp_path: Path) -> None:
    X, y = _arrays()
    tasks = [Task("pos", "binary"), Task("kind3", "multiclass", num_classes=3)]
    codes = torch.as_tensor((X[:, 1] > 0).astype(int) + (X[:, 2] > 0.5))
    codes[:5] = -1  # ignore_index: missing labels
    ys = {"pos": torch.as_tensor(y["pos"]).float(), "kind3": codes}
    learner = _learner(tmp_path, tasks=tasks).fit(torch.as_tensor(X), ys)
    pred = learner.predict(torch.as_tensor(X[:7]))
    assert pred["kind3"].dtype == np.int64 and set(pred["kind3"]) <= {0, 1, 2}
    assert learner.delta_m_ is None and learner.baselines_ is None


# ------------------------------------------------------------------------------------ several inputs
def test_dict_of_named_inputs_with_the_multi_input_trunk(tmp_path: Path) -> None:
    X, y = _arrays()
    named = {"left": X[:, :2], "right": torch.as_tensor(X[:, 2:])}
    encoders = {k: {"trunk": "mlp", "options": {"hidden": [8]}} for k in named}
    learner = _learner(
        tmp_path, trunk="multi_input", trunk_options={"encoders": encoders, "fusion": "sum"}
    ).fit(named, y)
    assert learner.predict({"left": X[:3, :2], "right": X[:3, 2:]})["pos"].shape == (3,)
    with pytest.raises(ValueError, match="differ from the trained ones"):
        learner.predict({"left": X[:3, :2]})


# ------------------------------------------------------------------------------------ tables
def _frame(n: int = N) -> pd.DataFrame:
    X, _ = _arrays(n)
    df = pd.DataFrame(X[:, :3], columns=["x1", "x2", "x3"])
    df["colour"] = np.array(["red", "green"])[(X[:, 3] > 0).astype(int)]
    df["animal"] = np.array(["cat", "dog", "eel"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)]
    df["flag"] = np.where(X[:, 2] > 0, "yes", "no")
    df.loc[3, "flag"] = None  # a missing label
    return df


def test_dataframe_predicts_original_labels_with_train_only_preprocessing(tmp_path: Path) -> None:
    df = _frame()
    learner = _learner(tmp_path).fit(df, ["animal", "flag"])
    pred = learner.predict(df.drop(columns=["animal", "flag"]).head(6))
    assert set(pred["animal"]) <= {"cat", "dog", "eel"}
    assert learner.classes_["flag"] == ["no", "yes"]  # a probability of "yes"
    assert ((pred["flag"] >= 0) & (pred["flag"] <= 1)).all()
    train = torch.randperm(N, generator=torch.Generator().manual_seed(0))[: round(0.8 * N)]
    pre = learner.preprocessor_
    assert pre is not None and pre.categorical_ == ["colour"]
    assert pre.means_["x1"] == pytest.approx(float(df["x1"].iloc[train.numpy()].mean()))
    assert learner.evaluate(df)["animal"]["labelled"] == N
    fresh = MultiTaskLearner.load(learner.save(tmp_path / "table-model"))
    assert list(fresh.predict(df.head(6))["animal"]) == list(pred["animal"])


# ------------------------------------------------------------------------------------ Datasets
class PairDataset(Dataset):
    """Items ``(x, {task: target})``; task ``b`` is unlabelled (absent) on every third item."""

    def __init__(self, n: int = N) -> None:
        self.x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        x = self.x[i]
        targets: dict[str, Any] = {"a": float(x[0] > 0)}
        if i % 3:
            targets["b"] = float(x[1] * 2)
        return x, targets


TASKS = [Task("a", "binary"), Task("b", "regression")]


def test_torch_dataset(tmp_path: Path) -> None:
    ds = PairDataset()
    learner = _learner(tmp_path, tasks=TASKS).fit(ds)
    assert learner.results_["test"]["b"]["labelled"] < learner.results_["test"]["a"]["labelled"]
    assert learner.predict(ds)["a"].shape == (N,)
    assert learner.predict(ds.x[:4])["b"].shape == (4,)
    assert learner.evaluate(ds)["a"]["labelled"] == N
    with pytest.raises(ValueError, match="does not say its tasks"):
        _learner(tmp_path).fit(ds)

    class Stream(IterableDataset):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield from (ds[i] for i in range(len(ds)))

    with pytest.raises(TypeError, match=r"give ready splits, Splits\(DatasetData"):
        _learner(tmp_path, tasks=TASKS).fit(Stream())


def test_task_data_and_splits(tmp_path: Path) -> None:
    x = torch.randn(N, 4)
    data = MultiTaskData(x, {"a": (x[:, 0] > 0).float(), "b": x[:, 1]}, [Task("a", "binary"), Task("b", "regression")])
    assert _learner(tmp_path).fit(DatasetData(PairDataset(), TASKS)).predict(x)["a"].shape == (N,)
    splits = random_split(data, seed=3)
    learner = _learner(tmp_path).fit(splits)
    assert learner.results_["test"]["a"]["labelled"] == len(splits.test)


# ------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    ("X", "match"),
    [
        ([[0.0, 1.0]] * 10, r"X of type list is not accepted\. X may be: a NumPy array"),
        (DataLoader(PairDataset(8)), r"pass its Dataset \(loader\.dataset\)"),
        ("table.csv", "X of type str is not accepted"),
    ],
)
def test_unsupported_inputs_say_what_is_accepted(X: Any, match: str, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=match):
        _learner(tmp_path).fit(X, {"a": [0, 1] * 5})
    assert not (tmp_path / "runs").exists()


def _refused(tmp_path: Path, exc: type[Exception], match: str, X: Any, y: Any, **kw: Any) -> None:
    with pytest.raises(exc, match=match):
        _learner(tmp_path, **kw).fit(X, y)
    assert not (tmp_path / "runs").exists(), "nothing may be written before the data is checked"


def test_bad_inputs_fail_before_training(tmp_path: Path) -> None:
    X, y = _arrays(60)
    _refused(
        tmp_path, ValueError, r"y has key\(s\) \['kind'\] that are no task; the tasks are \['pos'\]",
        X, {"pos": y["pos"], "kind": y["kind"]}, tasks=[Task("pos", "binary")],
    )
    _refused(tmp_path, ValueError, r"y\['pos'\] has 50 labels but X has 60 rows", X, {"pos": y["pos"][:50]})
    bad = X.copy()
    bad[7, 2] = np.nan
    _refused(tmp_path, DataError, r"NaN or inf at row 7", bad, {"pos": y["pos"]})
    _refused(tmp_path, ValueError, r"inputs of X have different lengths", {"a": X, "b": X[:5]}, {"pos": y["pos"]})
    _refused(tmp_path, TypeError, r"y must be a dict \{task name: array", X, y["pos"])
    _refused(tmp_path, ValueError, r"unknown trunk 'mpl'; choose one of: .*mlp", X, y, trunk="mpl")
    _refused(tmp_path, ValueError, r"unknown architecture 'hard'; choose one of: .*hard_sharing", X, y, architecture="hard")
    _refused(tmp_path, ValueError, r"unknown balancer 'pcgrd'; choose one of: .*pcgrad", X, y, balancer="pcgrd")
    _refused(tmp_path, TypeError, r"unexpected argument\(s\) \['epoch'\]; other training settings", X, y, epoch=3)
    _refused(tmp_path, ValueError, r"training\.lr", X, y, lr=-1.0)


def test_predict_refusals(fitted: MultiTaskLearner) -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        MultiTaskLearner().predict(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"X has rows of shape \[3\]; the model was trained on \[4\]"):
        fitted.predict(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="trained on arrays"):
        fitted.predict(pd.DataFrame(np.zeros((2, 4))))
    with pytest.raises(TypeError, match=r"loader\.dataset"):
        fitted.predict(DataLoader(PairDataset(4)))


def test_low_level_fit_refuses_data_that_are_not_splits(tmp_path: Path) -> None:
    from polytask.balancing import create_balancer
    from polytask.models import create_model, create_trunk
    from polytask.training import TrainSettings, fit

    x = torch.randn(20, 4)
    data = MultiTaskData(x, {"a": (x[:, 0] > 0).float()}, [Task("a", "binary")])
    model = create_model("hard_sharing", create_trunk("mlp", in_features=4, hidden=[8]), data.tasks)
    with pytest.raises(TypeError, match=r"fit takes Splits.*random_split.*MultiTaskLearner"):
        fit(model, data, create_balancer("equal", ["a"]), TrainSettings(epochs=1), tmp_path)  # type: ignore[arg-type]
