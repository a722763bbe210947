"""Small helpers shared by the balancing methods: validation, seeded randomness, solver guards.

Private to :mod:`polytask.balancing`; nothing here is a balancer.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from polytask.balancing.base import (
    Balancer,
    BalancerError,
    Combination,
    Needs,
    StepInfo,
    scatter_present,
)

__all__ = [
    "GramianWeightingBalancer",
    "check_choice",
    "check_finite_weights",
    "check_int",
    "check_max_failures",
    "check_number",
    "factor_of_gramian",
    "guarded",
    "least_squares_weights",
    "record_failure",
    "require_positive_losses",
    "seeded_global_rng",
    "step_cpu_generator",
    "trace_normalized",
    "warn_and_count",
]

T = TypeVar("T")


# ---------------------------------------------------------------------------------- validation
def check_number(
    method: str,
    parameter: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """``value`` as a finite float inside the given bounds, else :class:`BalancerError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BalancerError(
            f"{method}: hyper-parameter {parameter!r} must be a number, got {value!r}"
        )
    v = float(value)
    ok = math.isfinite(v)
    if ok and low is not None:
        ok = v >= low if low_inclusive else v > low
    if ok and high is not None:
        ok = v <= high if high_inclusive else v < high
    if not ok:
        lo = "" if low is None else f"{'>=' if low_inclusive else '>'} {low}"
        hi = "" if high is None else f"{'<=' if high_inclusive else '<'} {high}"
        bounds = " and ".join(b for b in (lo, hi) if b) or "finite"
        raise BalancerError(
            f"{method}: hyper-parameter {parameter!r} must be {bounds}, got {value!r}"
        )
    return v


def check_int(method: str, parameter: str, value: Any, *, low: int) -> int:
    """``value`` as an int ``>= low``, else :class:`BalancerError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BalancerError(
            f"{method}: hyper-parameter {parameter!r} must be an integer >= {low}, got {value!r}"
        )
    return int(value)


def check_choice(method: str, parameter: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise BalancerError(
            f"{method}: hyper-parameter {parameter!r} must be one of {list(choices)}, got {value!r}"
        )
    return str(value)


# ---------------------------------------------------------------------------------- losses
def require_positive_losses(
    method: str, step: int, task_names: Sequence[str], losses: Tensor, present: Tensor
) -> None:
    """Log-based methods need every present loss finite and strictly positive."""
    values = losses.detach().double().tolist()
    for name, value, here in zip(task_names, values, present.tolist(), strict=True):
        if here and not (math.isfinite(value) and value > 0):
            raise BalancerError(
                f"{method}: the loss of task {name!r} is {value} at step {step}; {method} takes "
                "the logarithm of the losses, which must be finite and strictly positive"
            )


# ---------------------------------------------------------------------------------- randomness
def _seed_from(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def step_cpu_generator(generator: torch.Generator) -> torch.Generator:
    """A CPU generator seeded exactly as :func:`seeded_global_rng` seeds the global CPU RNG.

    For code of ours that used to draw from the global CPU RNG inside :func:`seeded_global_rng`
    (e.g. ``torch.randperm`` on the CPU): drawing from this generator gives the same numbers,
    without forking and restoring the global RNG states.
    """
    return torch.Generator(device="cpu").manual_seed(_seed_from(generator))


@contextmanager
def seeded_global_rng(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Run third-party code that draws from the *global* RNG deterministically.

    The global RNG of the CPU (and of ``device`` when it is an accelerator) is forked, seeded from
    the step's generator, and restored afterwards, so the training's own randomness (dropout,
    shuffling) is untouched and every DDP rank draws the same numbers.
    """
    seed = _seed_from(generator)
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            yield
        return
    module = torch.get_device_module(device.type)
    index = device.index if device.index is not None else module.current_device()
    with torch.random.fork_rng(devices=[index], device_type=device.type):
        torch.random.default_generator.manual_seed(seed)
        with module.device(index):
            module.manual_seed(seed)
        yield


# ---------------------------------------------------------------------------------- Gramians
def trace_normalized(gramian: Tensor) -> Tensor | None:
    """``G / trace(G)`` in float64 (symmetrised), or ``None`` when every gradient is zero.

    torchjd's QP-based weightings normalise the Gramian themselves but treat any Gramian whose
    trace is below an *absolute* ``1e-4`` as zero: with small gradients (late in training) UPGrad
    and DualProj silently degrade to the mean and CAGrad to zero weights. Every weighting we call
    through this helper is invariant to a positive rescaling of ``G``, so we hand it a Gramian of
    trace 1 and the absolute threshold never triggers.
    """
    g = gramian.detach().double()
    g = 0.5 * (g + g.T)
    trace = float(g.diagonal().sum())
    if not math.isfinite(trace):
        raise BalancerError(f"non-finite Gramian (trace {trace})")
    if trace <= 0.0:
        return None
    return g / trace


def factor_of_gramian(gramian: Tensor) -> Tensor:
    """A square matrix ``F`` with ``F Fᵀ = G`` (for Jacobian-only APIs that only read ``J Jᵀ``)."""
    g = gramian.detach().double()
    eigenvalues, vectors = torch.linalg.eigh(0.5 * (g + g.T))
    return vectors * eigenvalues.clamp(min=0.0).sqrt()


# ---------------------------------------------------------------------------------- solvers
def torchjd_weighting(method: str, class_name: str, **kwargs: Any) -> Any:
    """An instance of ``torchjd.aggregation.<class_name>``, or a BalancerError naming ``method``.

    Built lazily by the methods whose reference solver is torchjd's (its extras, e.g. cvxpy, may
    be missing when only the fast solver is used).
    """
    try:
        import torchjd.aggregation as aggregation

        return getattr(aggregation, class_name)(**kwargs)
    except ImportError as err:
        raise BalancerError(f"{method}: {err}") from None


def guarded(method: str, step: int, what: str, fn: Callable[[], T]) -> T:
    """Call a solver; any exception becomes a :class:`BalancerError` naming method and step."""
    try:
        return fn()
    except BalancerError:
        raise
    except Exception as err:  # solver libraries raise anything (ValueError, SolverError, ...)
        raise BalancerError(
            f"{method}: {what} failed at step {step}: {type(err).__name__}: {err}"
        ) from err


def check_finite_weights(method: str, step: int, weights: Tensor) -> Tensor:
    if not bool(torch.isfinite(weights).all()):
        raise BalancerError(
            f"{method}: produced non-finite task weights {weights.tolist()} at step {step}"
        )
    return weights


def warn_and_count(balancer: Balancer, key: str, message: str) -> None:
    """A documented recovery or fallback was used: count it, and warn the first time.

    Why both: the count reaches the run's metrics (``warning/balancer/<key>``, drained by the
    training loop every epoch) and its report, so no fallback is silent; the Python warning is
    only raised for the first occurrence of ``key`` in this balancer, because a recurring event
    would otherwise bury the log under identical lines while the count already says how often.
    """
    balancer.count_warning(key)
    if key in balancer.warned_keys:
        return
    balancer.warned_keys.add(key)
    warnings.warn(
        f"{message} [counted as warning/balancer/{key} in the run's metrics; later occurrences "
        "are counted without a warning]",
        RuntimeWarning,
        stacklevel=3,
    )


def check_max_failures(method: str, value: Any) -> int:
    """The ``max_failures`` option: how many failed steps in a row a balancer tolerates (>= 0)."""
    return check_int(method, "max_failures", value, low=0)


def record_failure(
    balancer: Balancer,
    key: str,
    message: str,
    step: int,
    max_failures: int,
    consecutive: Tensor,
) -> None:
    """A step whose update is *not* the method's own (stale or zero weights, an unsolved system).

    Counted and warned like any fallback (:func:`warn_and_count`); ``consecutive`` (a one-element
    counter buffer, reset by the caller after a successful step) counts the failed steps in a row,
    and past ``max_failures`` of them a :class:`BalancerError` naming the step stops training. Why:
    a method that keeps failing trains with something else than what its name says (equal or stale
    weights, no update at all), and a run must not report results under that name.
    """
    with torch.no_grad():
        consecutive += 1
    failures = int(consecutive)
    if failures > max_failures:
        balancer.count_warning(key)
        raise BalancerError(
            f"{message}; that is {failures} failed steps in a row (the last at step {step}), more "
            f"than max_failures={max_failures}: stopping rather than training with an update "
            "that is not the method's (raise max_failures to tolerate more)"
        )
    warn_and_count(
        balancer,
        key,
        f"{message} (failed step {failures} in a row; at most max_failures={max_failures} are "
        "tolerated)",
    )


# ---------------------------------------------------------------------------------- base class
class GramianWeightingBalancer(Balancer):
    """Base of the balancers that map the Gramian of the present tasks to weights.

    Subclasses implement :meth:`weigh` (float64 Gramian in, weights out). The Gramian is handed
    over trace-normalised (see :func:`trace_normalized`) unless ``scale_invariant`` is False;
    an all-zero Jacobian gives uniform weights (the update is zero whatever the weights). Solver
    exceptions become :class:`BalancerError` naming the method and the step. Weightings that draw
    from torch's global RNG set ``uses_global_rng`` and run seeded from the step's generator.
    """

    family = "gradient"
    needs = Needs(gradients="gramian")
    scale_invariant: ClassVar[bool] = True
    uses_global_rng: ClassVar[bool] = False
    solver_description: ClassVar[str] = "the weighting"

    def weigh(self, gramian: Tensor, step: StepInfo) -> Tensor:
        raise NotImplementedError

    def combine(self, step: StepInfo) -> Combination:
        assert step.gramian is not None
        method = self.name
        if self.scale_invariant:
            gramian = guarded(
                method,
                step.step,
                "Gramian normalisation",
                lambda: trace_normalized(
                    step.gramian  # type: ignore[arg-type]
                ),
            )
        else:
            gramian = step.gramian.detach().double()
        if gramian is None:
            m = int(step.present.sum())
            weights = torch.full((m,), 1.0 / m, dtype=torch.float64)
        elif self.uses_global_rng:
            with seeded_global_rng(step.generator, step.gramian.device):
                weights = guarded(
                    method, step.step, self.solver_description, lambda: self.weigh(gramian, step)
                )
        else:
            weights = guarded(
                method, step.step, self.solver_description, lambda: self.weigh(gramian, step)
            )
        check_finite_weights(method, step.step, weights)
        return Combination(
            weights=scatter_present(
                weights.to(device=step.losses.device, dtype=step.losses.dtype), step.present
            )
        )


def least_squares_weights(jacobian: Tensor, gramian: Tensor, direction: Tensor) -> Tensor:
    """``w`` minimising ``||Jᵀ w - d||`` (exact when ``d`` lies in the row space of ``J``).

    Used to *report* task weights for methods that return a direction: ``w = G⁺ J d``.
    """
    g = gramian.detach().double()
    rhs = jacobian.detach().double() @ direction.detach().double()
    return torch.linalg.pinv(g, hermitian=True) @ rhs
