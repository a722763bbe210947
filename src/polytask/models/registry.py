"""Name -> constructor registries for trunks and architectures (timm's ``create_model`` pattern).

Architectures are registered with a one-line description so ``polytask list architectures`` can
show them; the YAML config and the CLI only ever go through :func:`create_model`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from torch import Tensor, nn

from polytask.models.base import MultiTaskModel
from polytask.tasks import Task

__all__ = [
    "available_architectures",
    "available_trunks",
    "create_model",
    "create_trunk",
    "register_architecture",
    "register_trunk",
]

ArchitectureFactory = Callable[..., MultiTaskModel]
F = TypeVar("F", bound=Callable[..., Any])

_ARCHITECTURES: dict[str, tuple[ArchitectureFactory, str]] = {}
_TRUNKS: dict[str, tuple[Callable[..., nn.Module], str]] = {}


def register_architecture(name: str, description: str) -> Callable[[F], F]:
    """Register ``factory(trunk, tasks, *, example_input, **options) -> MultiTaskModel``."""

    def wrap(factory: F) -> F:
        if name in _ARCHITECTURES:
            raise ValueError(f"architecture {name!r} is already registered")
        _ARCHITECTURES[name] = (factory, description)
        return factory

    return wrap


def register_trunk(name: str, description: str) -> Callable[[F], F]:
    def wrap(factory: F) -> F:
        if name in _TRUNKS:
            raise ValueError(f"trunk {name!r} is already registered")
        _TRUNKS[name] = (factory, description)
        return factory

    return wrap


def _load_builtins() -> None:
    # Importing the package registers every built-in architecture and trunk.
    import polytask.models  # noqa: F401


def available_architectures() -> dict[str, str]:
    _load_builtins()
    return {k: d for k, (_, d) in sorted(_ARCHITECTURES.items())}


def available_trunks() -> dict[str, str]:
    _load_builtins()
    return {k: d for k, (_, d) in sorted(_TRUNKS.items())}


def create_trunk(name: str, **options: Any) -> nn.Module:
    _load_builtins()
    if name not in _TRUNKS:
        raise KeyError(f"unknown trunk {name!r}; available: {sorted(_TRUNKS)}")
    try:
        return _TRUNKS[name][0](**options)
    except TypeError as err:
        raise TypeError(f"trunk {name!r}: {err}") from None


def create_model(
    name: str,
    trunk: nn.Module,
    tasks: Sequence[Task],
    *,
    example_input: Tensor | None = None,
    **options: Any,
) -> MultiTaskModel:
    """Build architecture ``name`` around ``trunk`` with one output per task."""
    _load_builtins()
    if name not in _ARCHITECTURES:
        raise KeyError(f"unknown architecture {name!r}; available: {sorted(_ARCHITECTURES)}")
    try:
        model = _ARCHITECTURES[name][0](trunk, list(tasks), example_input=example_input, **options)
    except TypeError as err:
        raise TypeError(f"architecture {name!r}: {err}") from None
    model.check_ownership()
    return model
