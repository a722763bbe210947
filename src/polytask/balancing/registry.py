"""Name -> balancer class registry, the factory, and the listing shown by ``polytask list``.

A name may be registered as a declared *alias* of another (``alias_of``, with the reason): a
published method that provably gives the same update as one already here keeps its name, for
users who look for it, but the listing and the docs say which method it is, and the contract test
that every pair of methods differs exempts it (and checks instead that the two updates agree).
"""

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
    """One line of ``polytask list balancers``: what a method costs and where it comes from.

    ``source`` is where its gradients are taken (``"mode"``: as the engine's mode says;
    ``"representation"``: always at the shared representation). ``alias_of`` names the method whose
    update this one equals (``None`` for a method of its own) and ``alias_reason`` says why.
    """

    name: str
    family: str
    gradients: str
    after_step: bool
    cost: str
    reference: str
    source: str = "mode"
    alias_of: str | None = None
    alias_reason: str = ""


def register_balancer(
    name: str, *, alias_of: str | None = None, alias_reason: str = ""
) -> Callable[[B], B]:
    """Class decorator: make the balancer reachable by ``name`` from Python, YAML and the CLI.

    ``alias_of`` declares that the method gives exactly the update of that registered method;
    ``alias_reason`` (required with it) is the one-line proof shown to users.
    """
    if alias_of is not None and not alias_reason:
        raise ValueError(f"balancer {name!r}: an alias must say why (alias_reason)")
    if alias_of == name:
        raise ValueError(f"balancer {name!r} cannot be an alias of itself")

    def wrap(cls: B) -> B:
        if name in _REGISTRY:
            raise ValueError(f"balancer {name!r} is already registered")
        if not cls.reference:
            raise ValueError(f"balancer {name!r} must state its reference")
        cls.name = name
        cls.alias_of = alias_of
        cls.alias_reason = alias_reason if alias_of is not None else ""
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_builtins() -> None:
    import polytask.balancing  # noqa: F401  (importing the package registers every method)

    # An alias may be registered before its target (import order), so it is checked once all are.
    for name, cls in _REGISTRY.items():
        if cls.alias_of is not None and cls.alias_of not in _REGISTRY:
            raise ValueError(f"balancer {name!r} is an alias of unknown balancer {cls.alias_of!r}")


def get_balancer_class(name: str) -> type[Balancer]:
    _load_builtins()
    if name not in _REGISTRY:
        raise KeyError(f"unknown balancer {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def _cost(cls: type[Balancer]) -> str:
    need = cls.needs.gradients
    if need == "none":
        base = "loss values only (~1x EW)"
    elif cls.needs.source == "representation":
        base = (
            "per-task gradients of the shared representation, their Gramian, in every engine "
            "mode (needs a model with one shared representation)"
        )
    elif need == "gramian":
        base = "per-task gradients; Gramian suffices (jacobian/gramian/representation modes)"
    else:
        base = "per-task gradients; full Jacobian (jacobian/representation modes)"
    base += " + one extra no-grad forward" if cls.needs.after_step else ""
    if cls.alias_of is not None:
        # First in the line that ``polytask list balancers`` prints: what the method really is.
        base = f"alias of {cls.alias_of} (same update: {cls.alias_reason}); {base}"
    return base


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
            source=cls.needs.source,
            alias_of=cls.alias_of,
            alias_reason=cls.alias_reason,
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
