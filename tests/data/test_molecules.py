"""MoleculeNet loaders: real label statistics, skipped SMILES, scaffold splits, the feature cache."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("rdkit")

from polytask.data import molecules
from polytask.data.base import DataError
from polytask.data.molecules import (
    featurize_smiles,
    load_moleculenet,
    load_smiles_csv,
    murcko_scaffolds,
    scaffold_split,
)

TOX21_TASKS = [
    "NR-AR",
    "NR-AR-LBD",
    "NR-AhR",
    "NR-Aromatase",
    "NR-ER",
    "NR-ER-LBD",
    "NR-PPAR-gamma",
    "SR-ARE",
    "SR-ATAD5",
    "SR-HSE",
    "SR-MMP",
    "SR-p53",
]


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("polytask-cache")


@pytest.fixture(autouse=True)
def _cache_in_tmp(feature_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYTASK_CACHE", str(feature_cache))


def _all(splits: object, task: str) -> torch.Tensor:
    return torch.cat([getattr(splits, s).targets[task] for s in ("train", "val", "test")])


def test_tox21_full_statistics(data_dir: Path) -> None:
    with pytest.warns(UserWarning, match=r"tox21: skipped \d+ molecule"):
        splits = load_moleculenet("tox21")
    assert [t.name for t in splits.tasks] == TOX21_TASKS
    assert all(t.kind.value == "binary" for t in splits.tasks)
    skipped = splits.info["skipped"]
    assert isinstance(skipped, dict)
    n = len(splits.train) + len(splits.val) + len(splits.test)
    assert n + skipped["count"] == 7831
    # the skipped rows are exactly those rdkit cannot parse
    table = pd.read_csv(data_dir / "moleculenet/tox21.csv")
    _, valid = featurize_smiles(table.smiles.iloc[skipped["rows"]].tolist())
    assert skipped["count"] == len(skipped["rows"]) > 0 and not valid.any()
    missing = np.mean([torch.isnan(_all(splits, t)).float().mean().item() for t in TOX21_TASKS])
    assert missing == pytest.approx(0.171, abs=0.003)  # README: 17.1% of labels missing
    for t in TOX21_TASKS:
        y = _all(splits, t)
        positives = float(y[~torch.isnan(y)].mean())
        assert 0.025 <= positives <= 0.17  # README: 2.9-16.2% positives per task
    x = splits.train.inputs
    assert x.shape[1] == 2048 and x.dtype == torch.float32
    assert set(torch.unique(x).tolist()) == {0.0, 1.0}
    ids = torch.cat([splits.train.row_ids, splits.val.row_ids, splits.test.row_ids])
    assert len(set(ids.tolist())) == n and not set(ids.tolist()) & set(skipped["rows"])


def test_unparsable_smiles_are_counted_and_reported(tmp_path: Path) -> None:
    rows = ["CCO", "not_a_smiles", "c1ccccc1", "C1CC", "CCN", "CCC", "CCCl", "OCCO"] * 3
    rows[10] = ""  # an empty SMILES cell is skipped too
    labels = [i % 2 for i in range(len(rows))]
    csv = tmp_path / "mols.csv"
    pd.DataFrame({"smiles": rows, "active": labels, "toxic": [1, ""] * 12}).to_csv(csv, index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_smiles_csv(csv, fractions=(0.5, 0.25, 0.25))
    ours = [w for w in caught if issubclass(w.category, UserWarning)]
    assert len(ours) == 1 and "skipped 7 molecule(s)" in str(ours[0].message)
    assert ours[0].filename == __file__  # the warning points at the caller
    assert splits.info["skipped"] == {"count": 7, "rows": [1, 3, 9, 10, 11, 17, 19]}
    assert len(splits.train) + len(splits.val) + len(splits.test) == 24 - 7
    assert [t.name for t in splits.tasks] == ["active", "toxic"]
    toxic = _all(splits, "toxic")
    assert torch.isnan(toxic).any() and set(toxic[~torch.isnan(toxic)].tolist()) == {1.0}


def test_bad_label_and_missing_columns_are_named(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    pd.DataFrame({"smiles": ["CCO", "CCN", "CCC"], "y": [0, 2, 1]}).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"'y' has the label 2.0 at row 1"):
        load_smiles_csv(csv)
    with pytest.raises(DataError, match="no SMILES column 'SMILES'"):
        load_smiles_csv(csv, smiles_column="SMILES")
    with pytest.raises(DataError, match=r"\['z'\] not found"):
        load_smiles_csv(csv, targets=["z"])
    with pytest.raises(DataError, match="unknown MoleculeNet set"):
        load_moleculenet("muv")


def test_scaffold_split_shares_no_scaffold(data_dir: Path) -> None:
    splits = load_moleculenet("tox21", split="scaffold", max_rows=600)
    table = pd.read_csv(data_dir / "moleculenet/tox21.csv", nrows=600)
    seen = {}
    for name in ("train", "val", "test"):
        rows = getattr(splits, name).row_ids.tolist()
        seen[name] = set(murcko_scaffolds(table.smiles.iloc[rows].tolist()))
    assert not seen["train"] & seen["val"]
    assert not seen["train"] & seen["test"]
    assert not seen["val"] & seen["test"]
    assert len(splits.train) >= len(splits.val) > 0 and len(splits.test) > 0
    again = load_moleculenet("tox21", split="scaffold", max_rows=600, seed=99)
    assert torch.equal(again.test.row_ids, splits.test.row_ids)  # deterministic, seed-free


def test_scaffold_split_recipe_largest_groups_first() -> None:
    scaffolds = ["a", "b", "a", "c", "a", "b", "d", "a", "e", "c"]
    train, val, test = scaffold_split(scaffolds, (0.6, 0.2, 0.2))
    # groups by size: a (4), then b and c (2, b first in file), then d, e (1)
    assert train == [0, 2, 4, 7, 1, 5]
    assert val == [3, 9]
    assert test == [6, 8]


def test_fingerprints_are_morgan_bits_and_cached(
    data_dir: Path, feature_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bits, valid = featurize_smiles(["c1ccccc1", "CCO", "xx"], radius=2, n_bits=2048)
    assert bits.sum(axis=1).tolist() == [3, 6, 0]  # benzene: one environment per radius
    assert valid.tolist() == [True, True, False]
    first = load_moleculenet("clintox", max_rows=200, n_bits=1024)
    assert list((feature_cache / "features").glob("*.npz"))

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("fingerprints recomputed despite the cache")

    monkeypatch.setattr(molecules, "featurize_smiles", boom)
    second = load_moleculenet("clintox", max_rows=200, n_bits=1024)
    assert torch.equal(first.train.inputs, second.train.inputs)
    assert first.train.inputs.shape[1] == 1024
    with pytest.raises(AssertionError, match="recomputed"):
        load_moleculenet("clintox", max_rows=200, n_bits=512)  # other settings: a new key


def test_other_sets_have_their_tasks(data_dir: Path) -> None:
    sider = load_moleculenet("sider", max_rows=300)
    assert len(sider.tasks) == 27
    clintox = load_moleculenet("clintox")
    assert [t.name for t in clintox.tasks] == ["FDA_APPROVED", "CT_TOX"]
    assert len(clintox.train) + len(clintox.val) + len(clintox.test) == 1478
    with pytest.warns(UserWarning, match=r"E1-PBE0\.1 -> E1-PBE0_1"):
        qm8 = load_moleculenet("qm8", max_rows=300)
    assert len(qm8.tasks) == 16 and all(t.kind.value == "regression" for t in qm8.tasks)
    e1 = qm8.train.targets["E1-CC2"]
    assert qm8.tasks[0].target_mean_ == pytest.approx(float(e1.double().mean()))
    identical = qm8.info["identical_tasks"]
    assert ["E1-PBE0", "E1-PBE0_1"] in identical and len(identical) == 4
    assert qm8.info["renamed_tasks"]["f2-PBE0.1"] == "f2-PBE0_1"
    # the renamed tasks key model heads (a '.' made the QM8 suite fail when building the model)
    from polytask.models import create_model

    model = create_model("hard_sharing", torch.nn.Linear(2048, 8), qm8.tasks)
    assert set(model(qm8.train.inputs[:2])) == {t.name for t in qm8.tasks}
    toxcast = load_moleculenet("toxcast", max_rows=400, tasks=["TOX21_AR_BLA_Agonist_ratio"])
    assert [t.name for t in toxcast.tasks] == ["TOX21_AR_BLA_Agonist_ratio"]


def test_missing_rdkit_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rdkit", None)
    with pytest.raises(ImportError, match=r"polytask\[chem\]"):
        featurize_smiles(["CCO"])


def test_descriptors_are_standardized_on_training_rows_only(data_dir: Path) -> None:
    both = load_moleculenet("tox21", max_rows=300, features="ecfp+rdkit2d")
    bits = load_moleculenet("tox21", max_rows=300)
    n_desc = both.info["featurizer"]["descriptors"]
    assert both.train.inputs.shape[1] == 2048 + n_desc
    # the fingerprint part is untouched and the rows line up
    assert torch.equal(both.test.inputs[:, :2048], bits.test.inputs)
    assert torch.equal(both.test.row_ids, bits.test.row_ids)
    desc_train = both.train.inputs[:, 2048:]
    assert torch.isfinite(both.val.inputs).all() and torch.isfinite(both.test.inputs).all()
    live = desc_train.std(dim=0) > 0
    # training statistics: mean 0 and (population) std 1 on every informative column ...
    assert desc_train[:, live].mean(dim=0).abs().max() < 1e-4
    assert torch.allclose(
        desc_train[:, live].std(dim=0, unbiased=False), torch.ones(int(live.sum())), atol=1e-3
    )
    # ... which the held-out rows do not reproduce exactly (they were not used to fit it)
    assert both.test.inputs[:, 2048:][:, live].mean(dim=0).abs().max() > 1e-3
    only = load_moleculenet("tox21", max_rows=300, features="rdkit2d")
    assert torch.equal(only.train.inputs, desc_train)


def test_descriptor_values_and_bad_feature_name() -> None:
    values, names, valid = molecules.featurize_descriptors(["CCO", "not a smiles"])
    assert valid.tolist() == [True, False]
    assert values[0, names.index("MolWt")] == pytest.approx(46.069, abs=1e-2)  # ethanol
    assert np.isnan(values[1]).all()
    with pytest.raises(DataError, match="features must be one of"):
        load_smiles_csv(Path("unused.csv"), features="graph")
