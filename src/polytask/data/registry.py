"""A name -> loader registry, so configs and the CLI can say ``dataset: tox21``.

Loaders register themselves with :func:`register_dataset`; :func:`load_dataset` forwards keyword
arguments to the loader, and :func:`available` lists names with one-line descriptions (what
``polytask datasets`` prints). Registering never imports optional extras such as rdkit: the
loaders import them only when called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from polytask.data.base import DataError, Splits
from polytask.data.census import load_census
from polytask.data.molecules import MOLECULENET, load_moleculenet
from polytask.data.multimnist import load_multimnist
from polytask.data.school import load_school

__all__ = ["UnknownDatasetError", "available", "load_dataset", "register_dataset"]

Loader = Callable[..., Splits]
L = TypeVar("L", bound=Loader)

_REGISTRY: dict[str, tuple[str, Loader]] = {}


class UnknownDatasetError(DataError, KeyError):
    """A data set name that is not registered (a :class:`DataError` and a :class:`KeyError`)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def register_dataset(name: str, description: str) -> Callable[[L], L]:
    """Decorator registering ``loader(**kwargs) -> Splits`` under ``name``."""
    if not name or not isinstance(name, str):
        raise ValueError(f"data set name must be a non-empty string, got {name!r}")
    if "\n" in description:
        raise ValueError(f"data set {name!r}: the description must be one line")

    def decorator(loader: L) -> L:
        if name in _REGISTRY and _REGISTRY[name][1] is not loader:
            raise ValueError(f"data set {name!r} is already registered")
        _REGISTRY[name] = (description, loader)
        return loader

    return decorator


def available() -> dict[str, str]:
    """Registered data set names -> one-line descriptions, sorted by name."""
    return {name: _REGISTRY[name][0] for name in sorted(_REGISTRY)}


def load_dataset(name: str, **kwargs: Any) -> Splits:
    """Load the registered data set ``name``; ``kwargs`` go to its loader."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise UnknownDatasetError(
            f"unknown data set {name!r}; available: {', '.join(sorted(_REGISTRY))}"
        )
    return entry[1](**kwargs)


register_dataset(
    "multimnist",
    "MultiMNIST (Sener & Koltun 2018): two overlaid real MNIST digits, tasks left/right (10-class)",
)(load_multimnist)
register_dataset(
    "census",
    "UCI Census-income (KDD) test file, MMoE tasks income>50K and never-married (binary)",
)(load_census)
register_dataset(
    "school",
    "ILEA School: 15,362 students, 139 per-school exam-score regression tasks (missing labels)",
)(load_school)


def _moleculenet_loader(set_name: str) -> Loader:
    def loader(**kwargs: Any) -> Splits:
        return load_moleculenet(set_name, **kwargs)

    loader.__name__ = f"load_{set_name}"
    loader.__doc__ = (
        f"``load_moleculenet({set_name!r}, **kwargs)``: {MOLECULENET[set_name].description}."
    )
    return loader


for _name, _spec in MOLECULENET.items():
    register_dataset(_name, f"{_spec.description} (MoleculeNet, ECFP4 fingerprints)")(
        _moleculenet_loader(_name)
    )
