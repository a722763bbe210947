"""Generic tables: kind inference, train-only preprocessing, serialisation and named errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from polytask.data.base import DataError
from polytask.data.table import (
    MISSING_CATEGORY,
    TablePreprocessor,
    infer_kind,
    load_table,
)


# ---------------------------------------------------------------------------------------- kinds
@pytest.mark.parametrize(
    ("values", "kind"),
    [
        ([0.5, 1.25, 3.0, np.nan], "regression"),
        (["yes", "no", "yes", None], "binary"),
        ([3, 7, 7, 3], "binary"),
        ([0.0, 1.0, np.nan, 1.0], "binary"),
        ([True, False, True], "binary"),
        ([0, 1, 2, 3, 4, 2], "multiclass"),
        (["cat", "dog", "bird", "dog"], "multiclass"),
        ([1.0, 2.0, 3.0, np.nan], "multiclass"),
        (list(range(50)), "regression"),
    ],
)
def test_infer_kind(values: list[object], kind: str) -> None:
    assert infer_kind(pd.Series(values, name="y")) == kind


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([np.nan, None], "no non-missing value"),
        ([4, 4, 4], "single distinct value"),
        ([f"s{i}" for i in range(30)], "30 distinct string values"),
        ([1.0, np.inf, 2.5], "infinite value at row 1"),
    ],
)
def test_infer_kind_refuses_to_guess(values: list[object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        infer_kind(pd.Series(values, name="y"))


# ---------------------------------------------------------------------------------------- loading
def _frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "num": rng.normal(5.0, 2.0, n),
            "count": rng.integers(0, 100, n),
            "color": rng.choice(["red", "green", "blue"], n),
            "y_reg": rng.normal(0, 1, n).round(3) + 0.001,
            "y_bin": rng.choice(["no", "yes"], n),
            "y_multi": rng.integers(0, 4, n).astype(float),
        }
    )
    df.loc[[2, 5], "y_reg"] = np.nan
    df.loc[[3], "y_bin"] = None
    df.loc[[4, 7], "y_multi"] = np.nan
    return df


TARGETS = ["y_reg", "y_bin", "y_multi"]


def test_load_table_kinds_targets_and_train_statistics(tmp_path: Path) -> None:
    csv = tmp_path / "t.csv"
    df = _frame()
    df.to_csv(csv, index=False)
    splits = load_table(csv, TARGETS, seed=1)
    assert splits.info["kinds"] == {
        "y_reg": "regression",
        "y_bin": "binary",
        "y_multi": "multiclass",
    }
    by_name = {t.name: t for t in splits.tasks}
    assert by_name["y_multi"].num_classes == 4
    assert [len(splits.train), len(splits.val), len(splits.test)] == [48, 6, 6]

    all_ids = torch.cat([splits.train.row_ids, splits.val.row_ids, splits.test.row_ids])
    y = {
        k: torch.cat([getattr(splits, s).targets[k] for s in ("train", "val", "test")])
        for k in TARGETS
    }
    assert y["y_reg"].dtype == torch.float32 and y["y_multi"].dtype == torch.int64
    order = all_ids.tolist()
    assert torch.isnan(y["y_reg"][[order.index(2), order.index(5)]]).all()
    assert torch.isnan(y["y_bin"][order.index(3)])
    assert (y["y_multi"][[order.index(4), order.index(7)]] == -1).all()
    expected_bin = (df["y_bin"] == "yes").astype(float).to_numpy()[order]
    labelled = ~torch.isnan(y["y_bin"])
    assert np.array_equal(y["y_bin"][labelled].numpy(), expected_bin[labelled.numpy()])

    pre = splits.info["preprocessing"]
    assert isinstance(pre, dict)
    json.dumps(pre)  # plain JSON
    assert pre["targets"]["y_bin"]["classes"] == ["no", "yes"]
    assert pre["targets"]["y_multi"]["classes"] == [0, 1, 2, 3]
    assert pre["feature_names"] == ["num", "count", "color=blue", "color=green", "color=red"]
    train_rows = df.iloc[splits.train.row_ids.numpy()]
    assert pre["means"]["num"] == pytest.approx(train_rows["num"].mean())
    x = splits.train.inputs
    assert x[:, :2].mean(0).abs().max() < 1e-5
    assert torch.allclose(x[:, :2].std(0, unbiased=False), torch.ones(2), atol=1e-4)
    assert torch.equal(x[:, 2:].sum(1), torch.ones(len(x)))  # one-hot
    # regression targets get scalers fitted on train labels only
    reg = by_name["y_reg"]
    t = splits.train.targets["y_reg"]
    assert reg.target_mean_ == pytest.approx(float(t[~torch.isnan(t)].double().mean()))


def test_preprocessor_round_trip_transforms_a_new_table(tmp_path: Path) -> None:
    csv = tmp_path / "t.csv"
    df = _frame()
    df.to_csv(csv, index=False)
    splits = load_table(csv, TARGETS)
    pre = TablePreprocessor.from_dict(json.loads(json.dumps(splits.info["preprocessing"])))
    new = pd.read_csv(csv).drop(columns=TARGETS)  # what `polytask predict` sees
    x = pre.transform(new.iloc[splits.test.row_ids.numpy()])
    assert torch.allclose(x, splits.test.inputs)
    encoded = pre.encode_targets(df.iloc[splits.val.row_ids.numpy()])
    for k in TARGETS:
        torch.testing.assert_close(encoded[k], splits.val.targets[k], equal_nan=True)


def test_unseen_categories_are_zero_and_counted(tmp_path: Path) -> None:
    df = _frame(20)
    df["split"] = ["train"] * 14 + ["val"] * 3 + ["test"] * 3
    df.loc[18, "color"] = "purple"
    df.loc[19, "color"] = None
    csv = tmp_path / "t.csv"
    df.to_csv(csv, index=False)
    splits = load_table(csv, TARGETS, split_column="split")
    assert splits.test.row_ids.tolist() == [17, 18, 19]
    names = splits.info["preprocessing"]["feature_names"]
    assert "split" not in " ".join(names)
    onehot = splits.test.inputs[:, 2:]
    assert onehot[1].sum() == 0 and onehot[2].sum() == 0  # "purple" and missing: unseen
    assert splits.info["unseen_categories"] == {"val": {}, "test": {"color": 2}}
    assert MISSING_CATEGORY not in splits.info["preprocessing"]["categories"]["color"]


def test_parquet_matches_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pyarrow")
    df = _frame()
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet")
    a = load_table(tmp_path / "t.csv", TARGETS)
    b = load_table(tmp_path / "t.parquet", TARGETS)
    assert torch.allclose(a.train.inputs, b.train.inputs)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "pyarrow" else real(n, *a)
    )
    with pytest.raises(ImportError, match=r"polytask\[parquet\]"):
        load_table(tmp_path / "t.parquet", TARGETS)


# ---------------------------------------------------------------------------------------- errors
def _write(tmp_path: Path, df: pd.DataFrame) -> Path:
    csv = tmp_path / "bad.csv"
    df.to_csv(csv, index=False)
    return csv


def test_missing_target_column_lists_available(tmp_path: Path) -> None:
    csv = _write(tmp_path, _frame())
    with pytest.raises(DataError, match=r"\['income'\] not found; available columns: \['num'"):
        load_table(csv, ["y_reg", "income"])


def test_non_numeric_regression_target_names_column_and_row(tmp_path: Path) -> None:
    df = _frame()
    df["y_reg"] = df["y_reg"].astype(object)
    df.loc[3, "y_reg"] = "abc"
    csv = _write(tmp_path, df)
    with pytest.raises(DataError, match=r"'y_reg' is not numeric: value 'abc' at line 5 of .*bad\.csv"):
        load_table(csv, ["y_reg"], kinds={"y_reg": "regression"})


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_feature_names_column_and_row(tmp_path: Path, bad: float) -> None:
    df = _frame()
    df.loc[11, "num"] = bad
    csv = _write(tmp_path, df)
    with pytest.raises(DataError, match=r"feature column 'num' has (NaN|inf) at line 13 of "):
        load_table(csv, TARGETS)


def test_task_without_train_label_is_named(tmp_path: Path) -> None:
    df = _frame(20)
    df["split"] = ["train"] * 14 + ["val"] * 3 + ["test"] * 3
    df["y_late"] = [np.nan] * 17 + [1.5, 2.5, 3.25]
    csv = _write(tmp_path, df)
    with pytest.raises(DataError, match="task 'y_late' has no label in the training split"):
        load_table(csv, ["y_reg", "y_late"], features=["num", "color"], split_column="split")


def test_other_bad_inputs_are_named(tmp_path: Path) -> None:
    df = _frame(20)
    df["split"] = ["train"] * 14 + ["val"] * 3 + ["holdout"] * 3
    csv = _write(tmp_path, df)
    with pytest.raises(DataError, match=r"'holdout' at line 19 of "):
        load_table(csv, ["y_reg"], split_column="split")
    with pytest.raises(DataError, match="unknown kind 'ordinal'"):
        load_table(csv, ["y_reg"], kinds={"y_reg": "ordinal"})
    typo = _frame()
    typo["num"] = typo["num"].astype(object)
    typo.loc[9, "num"] = "5,3"
    with pytest.raises(DataError, match=r"'num' is numeric except for '5,3' at line 11 of "):
        load_table(_write(tmp_path, typo), TARGETS)
    with pytest.raises(DataError, match="binary column 'y_multi' has 4 distinct values"):
        load_table(_write(tmp_path, _frame()), ["y_multi"], kinds={"y_multi": "binary"})
