"""A name -> loader registry, so configs and the CLI can say ``dataset: tox21``.

Loaders register themselves with :func:`register_dataset`; :func:`load_dataset` forwards keyword
arguments to the loader, and :func:`available` lists names with one-line descriptions (what
``polytask datasets`` prints). Registering never imports optional extras such as rdkit: the
loaders import them only when called.

Several-datasets loaders (:func:`register_multisource`) return
:class:`~polytask.data.multisource.MultiSourceSplits` instead of :class:`Splits`: the training
rows come as separate sources and a sampler decides which source feeds each step. They live in
their own table so that :func:`load_dataset` keeps returning plain :class:`Splits`, and
:func:`is_multisource` lets the experiment runner pick the right path by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from polytask.data.base import DataError, Splits
from polytask.data.census import load_census
from polytask.data.cityscapes import load_cityscapes
from polytask.data.mnist_scenes import load_mnist_scenes
from polytask.data.molecules import MOLECULENET, load_moleculenet
from polytask.data.multimnist import load_multimnist
from polytask.data.multisource import MultiSourceSplits, multimnist_two_sources, sources_by_task
from polytask.data.nyuv2 import load_nyuv2
from polytask.data.qm9 import load_qm9
from polytask.data.school import load_school

__all__ = [
    "UnknownDatasetError",
    "available",
    "is_multisource",
    "load_dataset",
    "load_multisource",
    "register_dataset",
    "register_multisource",
]

Loader = Callable[..., Splits]
L = TypeVar("L", bound=Loader)

MultiLoader = Callable[..., MultiSourceSplits]
M = TypeVar("M", bound=MultiLoader)

_REGISTRY: dict[str, tuple[str, Loader]] = {}
_MULTI: dict[str, tuple[str, MultiLoader]] = {}


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
        if (name in _REGISTRY and _REGISTRY[name][1] is not loader) or name in _MULTI:
            raise ValueError(f"data set {name!r} is already registered")
        _REGISTRY[name] = (description, loader)
        return loader

    return decorator


def register_multisource(name: str, description: str) -> Callable[[M], M]:
    """Decorator registering ``loader(**kwargs) -> MultiSourceSplits`` under ``name``."""
    if not name or not isinstance(name, str):
        raise ValueError(f"data set name must be a non-empty string, got {name!r}")
    if "\n" in description:
        raise ValueError(f"data set {name!r}: the description must be one line")

    def decorator(loader: M) -> M:
        if name in _REGISTRY or (name in _MULTI and _MULTI[name][1] is not loader):
            raise ValueError(f"data set {name!r} is already registered")
        _MULTI[name] = (description, loader)
        return loader

    return decorator


def available() -> dict[str, str]:
    """Registered data set names -> one-line descriptions, sorted by name."""
    entries = {name: d for name, (d, _) in _REGISTRY.items()}
    entries.update({name: f"[several datasets] {d}" for name, (d, _) in _MULTI.items()})
    return {name: entries[name] for name in sorted(entries)}


def is_multisource(name: str) -> bool:
    """Whether ``name`` is a several-datasets loader (returns :class:`MultiSourceSplits`)."""
    return name in _MULTI


def _unknown(name: str) -> UnknownDatasetError:
    return UnknownDatasetError(
        f"unknown data set {name!r}; available: {', '.join(sorted([*_REGISTRY, *_MULTI]))}"
    )


def load_dataset(name: str, **kwargs: Any) -> Splits:
    """Load the registered data set ``name``; ``kwargs`` go to its loader."""
    entry = _REGISTRY.get(name)
    if entry is None:
        if name in _MULTI:
            raise DataError(
                f"data set {name!r} is several data sets: load it with load_multisource"
            )
        raise _unknown(name)
    return entry[1](**kwargs)


def load_multisource(name: str, **kwargs: Any) -> MultiSourceSplits:
    """Load the registered several-datasets loader ``name``; ``kwargs`` go to it."""
    entry = _MULTI.get(name)
    if entry is None:
        if name in _REGISTRY:
            raise DataError(f"data set {name!r} is a single data set: load it with load_dataset")
        raise _unknown(name)
    return entry[1](**kwargs)


register_dataset(
    "multimnist",
    "MultiMNIST (Sener & Koltun 2018): two overlaid real MNIST digits, tasks left/right (10-class)",
)(load_multimnist)
register_dataset(
    "mnist_scenes",
    "MNIST scenes: 2-4 real digits at random depths on a 48x48 canvas, per-pixel segmentation "
    "(11 classes) and depth (dense; boxes kept)",
)(load_mnist_scenes)
register_dataset(
    "census",
    "UCI Census-income (KDD) test file, MMoE tasks income>50K and never-married (binary)",
)(load_census)
register_dataset(
    "school",
    "ILEA School: 15,362 students, 139 per-school exam-score regression tasks (missing labels)",
)(load_school)
register_dataset(
    "nyuv2",
    "NYUv2 (MTAN's preprocessed .npy files, 288x384, no download): 13-class segmentation, "
    "depth, surface normals; read per item",
)(load_nyuv2)
register_dataset(
    "cityscapes",
    "Cityscapes (MTAN's preprocessed .npy files, 128x256, no download): 7- or 19-class "
    "segmentation and inverse depth; read per item",
)(load_cityscapes)
register_dataset(
    "qm9",
    "QM9 (qm9pack): 130,831 molecules, 11 DFT property regression targets, ECFP4 + RDKit 2-D",
)(load_qm9)


def _forwarding_signature(
    outer: Callable[..., Any], inner: Callable[..., Any], drop: tuple[str, ...] = ()
) -> inspect.Signature:
    """``outer``'s signature with its ``**options`` replaced by what ``inner`` (which gets them) takes.

    Set as ``__signature__`` on loaders that pass options on, so that ``inspect.signature`` (and
    :func:`polytask.validation.validate_components`, which rejects a misspelt option before any
    training) sees the options they really accept.
    """
    own = [
        p for p in inspect.signature(outer).parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    names = {p.name for p in own} | set(drop)
    passed = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for p in inspect.signature(inner).parameters.values()
        if p.name not in names
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    return inspect.Signature([*own, *passed], return_annotation=inspect.signature(outer).return_annotation)


def _moleculenet_loader(set_name: str) -> Loader:
    def loader(**kwargs: Any) -> Splits:
        return load_moleculenet(set_name, **kwargs)

    loader.__signature__ = _forwarding_signature(loader, load_moleculenet, drop=("name",))  # type: ignore[attr-defined]
    loader.__name__ = f"load_{set_name}"
    loader.__doc__ = (
        f"``load_moleculenet({set_name!r}, **kwargs)``: {MOLECULENET[set_name].description}."
    )
    return loader


for _name, _spec in MOLECULENET.items():
    register_dataset(_name, f"{_spec.description} (MoleculeNet, ECFP4 fingerprints)")(
        _moleculenet_loader(_name)
    )


@register_multisource(
    "multimnist_two_sources",
    "MultiMNIST as two data sets: one labels only the left digit, a disjoint one only the right",
)
def load_multimnist_two_sources(
    seed: int = 0, left_fraction: float = 0.5, **options: Any
) -> MultiSourceSplits:
    """:func:`load_multimnist` (``options``), training rows cut into a left and a right source."""
    splits = load_multimnist(seed=seed, **options)
    return multimnist_two_sources(splits, seed=seed, left_fraction=left_fraction)


@register_multisource(
    "school_sources",
    "ILEA School as 139 data sets, one per school (one regression task each)",
)
def load_school_sources(seed: int = 0, **options: Any) -> MultiSourceSplits:
    """:func:`load_school` (``options``; ``seed`` draws the 75/25 split), one source per school."""
    return sources_by_task(load_school(seed=seed, **options))


for _loader, _inner in ((load_multimnist_two_sources, load_multimnist), (load_school_sources, load_school)):
    _loader.__signature__ = _forwarding_signature(_loader, _inner)  # type: ignore[attr-defined]
