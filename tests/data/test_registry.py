"""The data set registry: names, descriptions, loading by name and a light package import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from polytask.data import DataError, Splits, available, load_dataset, register_dataset, registry

EXPECTED = {"multimnist", "tox21", "toxcast", "sider", "clintox", "qm8", "census", "school"}


def test_available_lists_every_loader_with_one_line() -> None:
    names = available()
    assert set(names) >= EXPECTED
    assert all(desc and "\n" not in desc for desc in names.values())


def test_load_by_name_forwards_arguments(data_dir: Path, tmp_path: Path) -> None:
    splits = load_dataset("multimnist", n=300, seed=1)
    assert isinstance(splits, Splits) and len(splits.train) == 210
    school = load_dataset("school", seed=1)
    assert len(school.tasks) == 139


def test_unknown_name_is_a_key_error_listing_names() -> None:
    with pytest.raises(DataError) as err:
        load_dataset("imagenet")
    assert isinstance(err.value, KeyError)
    assert "imagenet" in str(err.value) and "tox21" in str(err.value)


def test_register_a_new_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    calls = []

    @register_dataset("tiny", "a tiny test set")
    def tiny(**kwargs: object) -> Splits:
        calls.append(kwargs)
        return load_dataset("multimnist", n=60)

    assert available()["tiny"] == "a tiny test set"
    load_dataset("tiny", flavour="x")
    assert calls == [{"flavour": "x"}]
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("tiny", "again")(lambda **kw: tiny())


def test_no_optional_extra_is_imported_at_module_level() -> None:
    """rdkit and pyarrow may only be imported inside functions (``import polytask.data`` stays
    light). Checked on the source, since other tests in this process import rdkit anyway."""
    package = Path(registry.__file__).parent
    for module in package.glob("*.py"):
        tree = ast.parse(module.read_text())
        for node in tree.body:
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in {"rdkit", "pyarrow"}, f"{module.name}: {name}"
