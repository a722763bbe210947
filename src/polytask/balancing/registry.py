"""Name -> balancer class registry, the factory, and the listing shown by ``polytask list``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from polytask.balancing.base import Balancer, BalancerError

__all__ = [
    "BalancerInfo",
    "available",
    "create_balancer",
    "get_balancer_class",
    "register_balancer",
]

B = TypeVar("B", bound=type[Balancer])
_REGISTRY: dict[str, type[Balancer]] = {}


@dataclass(frozen=True)
class BalancerInfo:
    name: str
    family: str
    gradients: str
    after_step: bool
    cost: str
    reference: str


def register_balancer(name: str) -> Callable[[B], B]:
    """Class decorator: make the balancer reachable by ``name`` from Python, YAML and the CLI."""

    def wrap(cls: B) -> B:
        if name in _REGISTRY:
            raise ValueError(f"balancer {name!r} is already registered")
        if not cls.reference:
            raise ValueError(f"balancer {name!r} must state its reference")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_builtins() -> None:
    import polytask.balancing  # noqa: F401  (importing the package registers every method)


def get_balancer_class(name: str) -> type[Balancer]:
    _load_builtins()
    if name not in _REGISTRY:
        raise KeyError(f"unknown balancer {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def _cost(cls: type[Balancer]) -> str:
    need = cls.needs.gradients
    if need == "none":
        base = "loss values only (~1x EW)"
    elif need == "gramian":
        base = "per-task gradients; Gramian suffices (jacobian/gramian/representation modes)"
    else:
        base = "per-task gradients; full Jacobian (jacobian/representation modes)"
    return base + (" + one extra no-grad forward" if cls.needs.after_step else "")


def available() -> dict[str, BalancerInfo]:
    """Every registered balancer with its family, its cost and its reference."""
    _load_builtins()
    return {
        name: BalancerInfo(
            name=name,
            family=cls.family,
            gradients=cls.needs.gradients,
            after_step=cls.needs.after_step,
            cost=_cost(cls),
            reference=cls.reference,
        )
        for name, cls in sorted(_REGISTRY.items())
    }


def create_balancer(
    name: str,
    task_names: Sequence[str],
    *,
    task_weights: Mapping[str, float] | None = None,
    **hyperparameters: Any,
) -> Balancer:
    """Build balancer ``name``; hyper-parameters are validated by its constructor."""
    cls = get_balancer_class(name)
    if cls.uses_task_weights and "weights" not in hyperparameters and task_weights is not None:
        hyperparameters["weights"] = dict(task_weights)
    try:
        return cls(task_names, **hyperparameters)
    except TypeError as err:
        raise BalancerError(f"balancer {name!r}: {err}") from None
