"""QM9 loader: the package's data files, the seeded subset, target names, a local CSV copy."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("rdkit")

from polytask.data import load_dataset, qm9
from polytask.data.base import DataError
from polytask.data.qm9 import QM9_DEFAULT_TARGETS, QM9_TARGETS, load_qm9

# Not pytest.importorskip("qm9pack"): importing qm9pack 1.0.3 fails on current setuptools (it
# imports pkg_resources), which importorskip would turn into a silent skip although the data is
# installed. The loader only needs the package's files, so that is what the skip checks.
HAVE_QM9PACK = importlib.util.find_spec("qm9pack") is not None
needs_qm9pack = pytest.mark.skipif(not HAVE_QM9PACK, reason="pip install 'polytask[qm9]'")


@pytest.fixture(autouse=True)
def _cache_in_tmp(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path_factory.getbasetemp() / "qm9-cache"))


def _ids(splits: object) -> list[int]:
    return sorted(
        int(i) for s in ("train", "val", "test") for i in getattr(splits, s).row_ids.tolist()
    )


@needs_qm9pack
def test_subset_loads_eleven_standardized_targets() -> None:
    splits = load_qm9(subset=200, seed=0)
    assert [t.name for t in splits.tasks] == list(QM9_DEFAULT_TARGETS)
    assert len(splits.tasks) == 11 and "Cv" not in splits.train.targets
    assert (len(splits.train), len(splits.val), len(splits.test)) == (160, 20, 20)
    for part in (splits.train, splits.val, splits.test):
        assert torch.isfinite(part.inputs).all()
        assert part.inputs.shape[1] == 2048 + splits.info["featurizer"]["descriptors"]  # type: ignore[index]
    desc = splits.train.inputs[:, 2048:]
    assert desc.mean(dim=0).abs().max() < 1e-3  # standardized on the training split
    for task in splits.tasks:
        assert task.kind.value == "regression"
        y = splits.train.targets[task.name].double()
        assert task.target_mean_ == pytest.approx(float(y.mean()), rel=1e-4, abs=1e-6)
    assert splits.info["subset"] == {"size": 200, "of": qm9.QM9_TOTAL, "seed": 0}
    assert splits.info["skipped"] == {"count": 0, "rows": []}
    ids = _ids(splits)
    assert len(set(ids)) == 200 and min(ids) >= 1 and max(ids) <= 133_885


@needs_qm9pack
def test_subset_is_deterministic_under_the_seed() -> None:
    a = load_qm9(subset=50, seed=3, features="ecfp")
    b = load_qm9(subset=50, seed=3, features="ecfp")
    assert torch.equal(a.train.row_ids, b.train.row_ids)  # type: ignore[arg-type]
    assert torch.equal(a.test.inputs, b.test.inputs)
    c = load_qm9(subset=50, seed=4, features="ecfp")
    assert _ids(c) != _ids(a)
    # subset_seed keeps the molecules while the split seed reshuffles them
    d = load_qm9(subset=50, seed=4, subset_seed=3, features="ecfp")
    assert _ids(d) == _ids(a)
    assert not torch.equal(d.train.row_ids, a.train.row_ids)  # type: ignore[arg-type]


@needs_qm9pack
def test_target_names_and_registry() -> None:
    splits = load_dataset("qm9", subset=20, targets=["u0", "GAP", "Heatcapacity_Cv_cal_mol_K"])
    assert [t.name for t in splits.tasks] == ["U0", "gap", "Cv"]
    assert splits.info["targets"]["Cv"] == "Heatcapacity_Cv_cal_mol_K [cal/(mol K)]"  # type: ignore[index]
    assert [t.name for t in load_qm9(subset=20, targets="all", features="ecfp").tasks] == list(
        QM9_TARGETS
    )


def test_unknown_target_is_refused_by_name() -> None:
    with pytest.raises(DataError, match=r"unknown QM9 target 'enthalpy'"):
        load_qm9(subset=20, targets=["gap", "enthalpy"])
    with pytest.raises(DataError, match="twice"):
        load_qm9(subset=20, targets=["U0", "InternalEnergy_0K_au"])


@pytest.mark.parametrize("bad", [0, 9, -5, 200_000, True, 2.5, "100"])
def test_bad_subset_size_is_refused(bad: object) -> None:
    with pytest.raises(DataError, match="subset must be"):
        load_qm9(subset=bad)  # type: ignore[arg-type]


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qm9.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"polytask\[qm9\]"):
        load_qm9(subset=20)


def _local_csv(path: Path, smiles: list[str]) -> Path:
    """A QM9-shaped CSV with made-up targets: what a saved ``qm9pack.get_data()`` looks like."""
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"Index": np.arange(1, len(smiles) + 1) * 7, "SMILES": smiles})
    for spec in QM9_TARGETS.values():
        table[spec.column] = rng.normal(size=len(smiles))
    table.to_csv(path, index=False)
    return path


def test_local_csv_works_without_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qm9.importlib.util, "find_spec", lambda name: None)
    smiles = ["C", "CC", "CCC", "CCO", "CC(=O)O", "c1ccccc1", "CCN", "not-a-smiles", "OCCO", "CCCC"]
    smiles += ["CCCCO", "C1CC1"]
    file = _local_csv(tmp_path / "qm9.csv", smiles)
    with pytest.warns(UserWarning, match=r"qm9: skipped 1 molecule\(s\).*QM9 numbers 56"):
        splits = load_qm9(path=file, features="ecfp+rdkit2d")
    assert splits.info["skipped"] == {"count": 1, "rows": [56]}
    assert splits.info["file"] == str(file)
    assert sum(len(getattr(splits, s)) for s in ("train", "val", "test")) == 11
    assert 56 not in _ids(splits) and 7 in _ids(splits)


def test_package_folder_with_other_bytes_is_refused(tmp_path: Path) -> None:
    for name in qm9.QM9_PACKAGE_FILES:
        (tmp_path / name).write_text("Index,SMILES\n1,C\n")
    with pytest.raises(DataError, match=r"not qm9pack 1\.0\.3's"):
        load_qm9(path=tmp_path)
