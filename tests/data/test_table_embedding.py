"""Categorical columns as embedding codes: the codes, the unknown code, serialisation, predict.

Why: with ``categorical_encoding="embedding"`` a model's embedding tables are indexed by the codes
the preprocessor assigns, so the codes must be the same at training and prediction time (they come
from the saved vocabularies, never re-fitted), unseen values and missing cells must land on the
unknown row 0 and never on a real category's row, and ``polytask predict`` must say which column
brought unseen values.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from polytask.config import parse_config
from polytask.data import load_census, load_table
from polytask.data.base import DataError
from polytask.data.table import UNKNOWN_CODE, TablePreprocessor
from polytask.experiment import run_experiment
from polytask.inference import load_run

pytestmark = pytest.mark.usefixtures("single_thread")

TRAIN = pd.DataFrame(
    {
        "color": ["red", "blue", "green", "blue", None, "red", "green", "blue"],
        "shop": [7, 3, 7, 3, 9, 9, 3, 7],  # numbers that are codes: forced categorical
        "x": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
        "y": [0, 1, 0, 1, 0, 1, 0, 1],
    }
)


def _pre() -> TablePreprocessor:
    pre = TablePreprocessor(
        ["color", "shop", "x"], ["shop"], {"y": "binary"}, categorical_encoding="embedding"
    )
    return pre.fit_targets(TRAIN).fit(TRAIN)


def test_codes_are_sorted_training_categories_from_one() -> None:
    pre = _pre()
    assert pre.categorical_ == ["color", "shop"] and pre.numeric_ == ["x"]
    # missing cells are not a category of their own: they take the unknown code
    assert pre.categories_ == {"color": ["blue", "green", "red"], "shop": ["3", "7", "9"]}
    assert pre.cardinalities == [4, 4]  # k known categories + the unknown code
    inputs = pre.transform(TRAIN)
    assert isinstance(inputs, dict) and set(inputs) == {"numeric", "categorical"}
    codes = inputs["categorical"]
    assert codes.dtype == torch.int64 and codes.shape == (8, 2)
    assert codes[:, 0].tolist() == [3, 1, 2, 1, UNKNOWN_CODE, 3, 2, 1]
    assert codes[:, 1].tolist() == [2, 1, 2, 1, 3, 3, 1, 2]
    numeric = inputs["numeric"]
    assert numeric.dtype == torch.float32 and numeric.shape == (8, 1)
    assert float(numeric.mean()) == pytest.approx(0.0, abs=1e-6)  # standardized as in one-hot
    assert pre.unseen_ == {}  # a missing cell is unknown by design, not an unseen category
    assert pre.feature_names == ["x", "color", "shop"]


def test_unseen_categories_take_the_unknown_code_and_are_counted() -> None:
    pre = _pre()
    new = pd.DataFrame({"color": ["purple", "red", "purple", ""], "shop": [3, 42, 7, 7], "x": [1.0] * 4})
    codes = pre.transform(new)["categorical"]  # type: ignore[index]
    assert codes[:, 0].tolist() == [UNKNOWN_CODE, 3, UNKNOWN_CODE, UNKNOWN_CODE]
    assert codes[:, 1].tolist() == [1, UNKNOWN_CODE, 2, 2]
    assert pre.unseen_ == {"color": 2, "shop": 1}  # the blank cell is missing, not unseen
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pre.warn_unseen("new.csv")
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2 and all("unknown code 0" in m for m in messages)
    assert messages[0].startswith("new.csv: column 'color' has 2 row(s)")
    assert messages[1].startswith("new.csv: column 'shop' has 1 row(s)")


def test_round_trip_through_json_gives_the_same_inputs() -> None:
    pre = _pre()
    again = TablePreprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert again.categorical_encoding == "embedding"
    assert again.cardinalities == pre.cardinalities
    a, b = pre.transform(TRAIN), again.transform(TRAIN)
    assert isinstance(a, dict) and isinstance(b, dict)
    assert torch.equal(a["categorical"], b["categorical"]) and torch.equal(a["numeric"], b["numeric"])
    # files written before the option existed are read as one-hot
    old = {k: v for k, v in pre.to_dict().items() if k not in ("categorical_encoding", "cardinalities")}
    assert TablePreprocessor.from_dict(old).categorical_encoding == "onehot"


def test_onehot_stays_the_default_and_a_typo_is_refused() -> None:
    pre = TablePreprocessor(["color", "x"]).fit(TRAIN)
    out = pre.transform(TRAIN)
    assert isinstance(out, torch.Tensor) and out.shape == (8, 1 + 4)  # x + blue/green/red/<missing>
    with pytest.raises(DataError, match="categorical_encoding must be one of"):
        TablePreprocessor(categorical_encoding="embeddings")


def _csv(tmp_path: Path) -> Path:
    rows = 60
    frame = pd.DataFrame(
        {
            "city": [["paris", "rome", "oslo"][i % 3] for i in range(rows)],
            "age": [20.0 + i for i in range(rows)],
            "y": [int(i % 3 == 0) for i in range(rows)],
            "z": [float(i % 5) + 0.5 for i in range(rows)],
            "split": ["train"] * 40 + ["val"] * 10 + ["test"] * 10,
        }
    )
    frame.loc[45, "city"] = "lima"  # only in validation: unseen
    path = tmp_path / "people.csv"
    frame.to_csv(path, index=False)
    return path


def test_load_table_records_cardinalities_and_unseen(tmp_path: Path) -> None:
    path = _csv(tmp_path)
    splits = load_table(path, ["y", "z"], split_column="split", categorical_encoding="embedding")
    assert splits.info["cardinalities"] == [4]  # oslo / paris / rome + unknown
    assert splits.info["unseen_categories"] == {"val": {"city": 1}, "test": {}}
    val = splits.val.inputs
    assert isinstance(val, dict) and int(val["categorical"][5, 0]) == UNKNOWN_CODE
    assert splits.info["preprocessing"]["categorical_encoding"] == "embedding"  # type: ignore[index]
    assert "cardinalities" not in load_table(path, ["y", "z"], split_column="split").info


def test_fit_and_predict_with_unseen_categories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole run: config with the data option and the tabular trunk, then predict on new rows."""
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    path = _csv(tmp_path)
    config = parse_config(
        {
            "name": "people",
            "data": {
                "table": str(path), "targets": ["y", "z"],
                "options": {"split_column": "split", "categorical_encoding": "embedding"},
            },
            "model": {"trunk": "tabular", "trunk_options": {"hidden": [8]}},
            "training": {"epochs": 2, "batch_size": 16, "progress": False, "tensorboard": False},
            "baselines": {"stl": False},
        }
    )  # fmt: skip
    result = run_experiment(config, tmp_path / "out", log=lambda _: None, report=False)
    run_dir = result.runs[-1].run_dir
    new = pd.DataFrame({"city": ["rome", "tokyo", "tokyo", "oslo"], "age": [30.0, 41.0, 52.0, 63.0]})
    new_path = tmp_path / "new.csv"
    new.to_csv(new_path, index=False)
    loaded = load_run(run_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = loaded.predict_table(new_path)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert any("column 'city' has 2 row(s)" in m and "unknown code 0" in m for m in messages)
    assert len(frame) == 4 and list(frame.columns) == ["y=P(1)", "z"]
    assert frame["y=P(1)"].between(0, 1).all() and frame["z"].notna().all()
    # the reloaded model reproduces the run's own evaluation (same codes, same tables)
    assert set(loaded.evaluate()["test"]) == {"y", "z"}


def test_census_embedding_inputs(data_dir: Path) -> None:
    onehot = load_census(max_rows=2000, seed=1)
    emb = load_census(max_rows=2000, seed=1, categorical_encoding="embedding")
    pre = emb.info["preprocessing"]
    assert isinstance(pre, dict)
    cards = emb.info["cardinalities"]
    assert cards == [len(pre["categories"][c]) + 1 for c in pre["categorical"]]
    inputs = emb.train.inputs
    assert isinstance(inputs, dict)
    assert inputs["numeric"].shape == (1400, 7) and inputs["categorical"].shape == (1400, len(cards))
    codes = inputs["categorical"]
    assert bool((codes >= 0).all()) and bool((codes < torch.tensor(cards)).all())
    # code 0 in training only where the file has no value ("NA" in hispanic_origin, read as missing)
    unknown = (codes == UNKNOWN_CODE).any(dim=0).nonzero().flatten().tolist()
    assert [pre["categorical"][j] for j in unknown] in ([], ["hispanic_origin"])
    # the numeric block is the one-hot encoding's first columns: same standardization
    assert isinstance(onehot.train.inputs, torch.Tensor)
    assert torch.equal(inputs["numeric"], onehot.train.inputs[:, :7])
    assert torch.equal(emb.test.row_ids, onehot.test.row_ids)  # same split


def test_cli_fit_with_embeddings_then_predict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``polytask fit --categorical-encoding embedding`` trains the tabular trunk; predict warns."""
    from typer.testing import CliRunner

    import polytask.report
    from polytask.cli import app

    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(polytask.report, "write_report", lambda directory: Path(directory))
    table = tmp_path / "people.csv"
    pd.read_csv(_csv(tmp_path)).drop(columns="split").to_csv(table, index=False)
    out = tmp_path / "run"
    fitted = CliRunner().invoke(app, [
        "fit", str(table), "-t", "y", "-t", "z", "--categorical-encoding", "embedding",
        "--epochs", "1", "--hidden", "8", "--no-stl", "--out", str(out),
    ])  # fmt: skip
    assert fitted.exit_code == 0, fitted.output
    saved = json.loads((out / "preprocessing.json").read_text())
    assert saved["categorical_encoding"] == "embedding" and saved["categorical"] == ["city"]
    assert "trunk: tabular" in (out / "equal-seed0" / "config.yaml").read_text()
    new = tmp_path / "new.csv"
    pd.DataFrame({"city": ["tokyo", "rome"], "age": [30.0, 40.0]}).to_csv(new, index=False)
    with pytest.warns(UserWarning, match="column 'city' has 1 row"):
        predicted = CliRunner().invoke(
            app, ["predict", str(out / "equal-seed0"), str(new), "-o", str(tmp_path / "p.csv")]
        )
    assert predicted.exit_code == 0, predicted.output
    assert len(pd.read_csv(tmp_path / "p.csv")) == 2
    bad = CliRunner().invoke(app, [
        "fit", str(table), "-t", "y", "--categorical-encoding", "embeddings", "--out", str(out / "x"),
    ])  # fmt: skip
    assert bad.exit_code != 0 and "categorical_encoding must be one of" in bad.output
