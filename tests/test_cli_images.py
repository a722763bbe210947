"""`polytask fit LABELS.csv --images DIR`: images read lazily from disk train like a table."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from polytask.cli import app
from polytask.config import load_config
from polytask.data.image_table import load_image_table
from polytask.data.images import write_digit_folder
from polytask.data.loader import DatasetData


def test_fit_on_a_folder_of_real_digit_images(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    csv = write_digit_folder(tmp_path / "digits", n=120, seed=0)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "fit", str(csv), "--images", str(csv.parent), "--target", "digit", "--target",
        "is_even", "--epochs", "1", "--width", "4", "--batch-size", "32", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert "equal" in json.dumps(summary)
    run = json.loads((out / "equal-seed0" / "results.json").read_text())
    assert run["test"]["digit"]["labelled"] > 0 and "delta_m" in run
    assert (out / "stl-digit-seed0" / "results.json").exists()
    assert (out / "report.html").exists()
    advice = json.loads((out / "advice.json").read_text())  # fit's default: the quick choice
    assert advice["mode"] == "quick" and advice["structure"] in {"all-shared", "separate"}
    for path in advice["configs"]:  # each model's config still reads the same image folder
        config = load_config(path)
        assert config.data.images == str(csv.parent) and set(config.data.targets) <= {
            "digit", "is_even"
        }


def test_image_splits_are_lazy_datasets_with_train_only_augmentation(tmp_path) -> None:
    csv = write_digit_folder(tmp_path / "d", n=40, seed=1)
    splits = load_image_table(str(csv), str(csv.parent), transforms={"flip": True}, seed=0)
    assert all(isinstance(s, DatasetData) for s in (splits.train, splits.val, splits.test))
    assert len(splits.train) + len(splits.val) + len(splits.test) == 40
    train_t, val_t = splits.train.dataset.transform, splits.val.dataset.transform
    assert "Flip" in repr(train_t) and "Flip" not in repr(val_t)
    x, y = next(iter(splits.val.batches(4)))
    assert x.shape == (4, 1, 28, 28) and set(y) == {"digit", "is_even"}


def test_a_missing_image_is_named_with_its_csv_line(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    csv = write_digit_folder(tmp_path / "d", n=20, seed=2)
    first = csv.read_text().splitlines()[1].split(",")[0]
    (csv.parent / first).unlink()
    result = CliRunner().invoke(app, [
        "fit", str(csv), "--images", str(csv.parent), "--target", "digit", "--epochs", "1",
        "--out", str(tmp_path / "run"),
    ])
    assert result.exit_code != 0
    assert f"line 2: {first}" in result.output
    assert not (tmp_path / "run" / "equal-seed0").exists()
