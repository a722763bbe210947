"""Faults a new user meets get a message that says what is wrong and where, never a traceback.

An empty table to predict, a zero-byte checkpoint, a bad cell (named by the file's line as an
editor shows it), and GradNorm's non-finite inputs (named by task and step).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from polytask.balancing import create_balancer
from polytask.balancing.base import BalancerError, StepInfo
from polytask.cli import app
from polytask.data import load_table
from polytask.data.base import DataError
from polytask.data.table import TablePreprocessor, infer_kind
from polytask.inference import load_run
from polytask.training import CheckpointError, load_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch ``polytask fit`` run on a small table (what ``predict`` needs)."""
    root = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(80, 3)), columns=["a", "b", "c"])
    frame["y"] = (frame["a"] > 0).astype(int)
    frame.to_csv(root / "train.csv", index=False)
    result = CliRunner().invoke(app, [
        "fit", str(root / "train.csv"), "-t", "y", "--epochs", "1", "--no-stl", "--hidden", "8",
        "--out", str(root / "out"),
    ])
    assert result.exit_code == 0, result.output
    return root / "out" / "equal-seed0"


def test_predict_on_a_table_without_rows(run: Path, tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("a,b,c\n")
    with pytest.raises(DataError, match=r"empty\.csv has no data rows \(only a header with columns a, b, c\)"):
        load_run(run).predict_table(tmp_path / "empty.csv")
    result = CliRunner().invoke(app, ["predict", str(run), str(tmp_path / "empty.csv"), "-o",
                                      str(tmp_path / "p.csv")])
    assert result.exit_code == 2 and "no data rows" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "p.csv").exists()


def test_predict_names_the_line_of_a_bad_cell(run: Path, tmp_path: Path) -> None:
    lines = ["a,b,c", "0.1,0.2,0.3", "", "0.5,oops,0.6"]  # a blank line, skipped by pandas
    (tmp_path / "new.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"'oops' at line 4 of .*new\.csv"):
        load_run(run).predict_table(tmp_path / "new.csv")


def test_zero_byte_and_truncated_checkpoints(run: Path, tmp_path: Path) -> None:
    empty = tmp_path / "best.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"best\.pt is empty \(0 bytes\).*truncated"):
        load_checkpoint(empty)
    whole = (run / "checkpoints" / "best.pt").read_bytes()
    half = tmp_path / "half.pt"
    half.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError, match=r"half\.pt is corrupt .*: \S"):
        load_checkpoint(half)
    (run / "checkpoints" / "best.pt").write_bytes(b"")  # last test of the module to use `run`
    try:
        result = CliRunner().invoke(app, ["evaluate", str(run)])
    finally:
        (run / "checkpoints" / "best.pt").write_bytes(whole)
    assert result.exit_code == 2
    assert str(run / "checkpoints" / "best.pt") in result.output and "0 bytes" in result.output


def test_table_errors_name_the_line_an_editor_shows(tmp_path: Path) -> None:
    rows = ["x,note,y", "1.0,plain,0.5", '2.0,"two', 'lines",1.5', "", "3.0,plain,bad", "4.0,p,2.5"]
    path = tmp_path / "t.csv"
    path.write_text("\n".join(rows) + "\n")
    # data row 2 (from 0) starts on line 6: the quoted cell spans lines 3-4, line 5 is blank
    with pytest.raises(DataError, match=rf"value 'bad' at line 6 of {path}"):
        load_table(path, ["y"], kinds={"y": "regression"}, fractions=(0.5, 0.25, 0.25))


def test_rows_of_a_frame_not_read_from_a_file_say_what_they_are() -> None:
    with pytest.raises(DataError, match=r"infinite value at row 1 \(index label\)"):
        infer_kind(pd.Series([1.0, np.inf, 2.5], name="y"))
    pre = TablePreprocessor(["x"], None, {}).fit(pd.DataFrame({"x": [1.0, 2.0]}))
    with pytest.raises(DataError, match=r"NaN at row 'b' \(index label\)"):
        pre.transform(pd.DataFrame({"x": [1.0, np.nan]}, index=["a", "b"]))


def test_gradnorm_names_task_and_step() -> None:
    balancer = create_balancer("gradnorm", ["a", "b"])
    step = StepInfo(
        losses=torch.tensor([1.0, float("nan")]), present=torch.tensor([True, True]), step=7,
        epoch=2, generator=torch.Generator(), gramian=torch.eye(2),
    )
    with pytest.raises(BalancerError, match=r"task\(s\) \['b'\] .* at step 7 \(epoch 2\)"):
        balancer.combine(step)
    step.losses = torch.tensor([1.0, 2.0])
    step.gramian = torch.tensor([[1.0, 0.0], [0.0, float("inf")]])
    with pytest.raises(BalancerError, match=r"non-finite at step 7 \(epoch 2\).*task\(s\) \['b'\]"):
        balancer.combine(step)
