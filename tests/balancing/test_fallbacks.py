"""Every fallback is visible: counted, warned about once, and fatal when it keeps happening.

Why: a Nash-MTL solve that failed kept equal weights for up to 19 steps before raising, and CAGrad
at a Pareto-stationary point returned a zero update without a word, so a run could report results
under a method's name that were another method's. A step whose update is not the method's own is a
*failure*: counted in ``balancer.warning_counts`` (the training loop drains it into the run's
metrics as ``warning/balancer/<key>``), announced by one ``RuntimeWarning`` the first time, and
after more than ``max_failures`` (default 3) failed steps in a row a ``BalancerError`` names the
step. Recoveries that still give the method's update (another solver, a restarted state) are
counted and announced the same way, without the limit.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor

from polytask.balancing import Balancer, BalancerError, StepInfo, create_balancer


def names(m: int) -> list[str]:
    return [f"t{i}" for i in range(m)]


def info(
    gramian: Tensor, step: int, jacobian: Tensor | None = None, present: Tensor | None = None
) -> StepInfo:
    m = gramian.shape[0] if present is None else int(present.shape[0])
    here = torch.ones(m, dtype=torch.bool) if present is None else present
    return StepInfo(
        losses=torch.ones(m, dtype=torch.float64),
        present=here,
        step=step,
        epoch=0,
        generator=torch.Generator().manual_seed(step),
        jacobian=jacobian,
        gramian=gramian,
    )


#: Two opposite gradients: ``G α = 1/α`` has no solution (adding both rows gives 0 = 1/α₁ + 1/α₂).
OPPOSITE = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
#: Orthogonal gradients: every method here solves them.
ORTHOGONAL = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
#: Two opposite gradients and a third orthogonal to them: 0 is in the convex hull (Pareto-
#: stationary) and CAGrad's dual optimum has g_w = 0, where torchjd's convention gives no update,
#: although the mean gradient (which improves the third task and harms neither other) is in the
#: ball when c < 1.
_J3 = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
STATIONARY = _J3 @ _J3.T


def run_steps(
    balancer: Balancer, gramians: list[Tensor], first_step: int = 0
) -> tuple[list[Tensor], list[str]]:
    """Combine at steps ``first_step``, ...; the weights and every RuntimeWarning raised."""
    out = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step, gramian in enumerate(gramians, start=first_step):
            out.append(balancer.combine(info(gramian, step)).weights)
    return out, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_the_default_tolerance_is_small() -> None:
    for name in ("nash_mtl", "cagrad", "fairgrad"):
        assert create_balancer(name, names(2)).hyperparameters()["max_failures"] == 3, name
        with pytest.raises(BalancerError, match="max_failures"):
            create_balancer(name, names(2), max_failures=-1)


def test_nash_mtl_keeps_stale_weights_visibly_and_stops_past_max_failures() -> None:
    balancer = create_balancer("nash_mtl", names(2), max_failures=2, max_norm=0.0)
    weights, said = run_steps(balancer, [ORTHOGONAL, OPPOSITE, OPPOSITE])
    # the failed steps reuse the last solved weights (those of step 0: 1/|g_i| = 1, 0.5) ...
    torch.testing.assert_close(weights[0], torch.tensor([1.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(weights[1], weights[0])
    torch.testing.assert_close(weights[2], weights[0])
    # ... are counted at every step but announced once
    assert balancer.warning_counts.get("nash_mtl/solver_failed") == 2
    failed = [m for m in said if "bargaining solve" in m]
    assert len(failed) == 1 and "step 1" in failed[0], said
    assert "warning/balancer/nash_mtl/solver_failed" in failed[0]
    # a third failure in a row exceeds max_failures=2: stop, naming the step
    with pytest.raises(BalancerError, match=r"3 failed steps in a row \(the last at step 3\)"):
        run_steps(balancer, [OPPOSITE], first_step=3)


def test_nash_mtl_failures_must_be_consecutive_to_stop_training() -> None:
    balancer = create_balancer("nash_mtl", names(2), max_failures=1)
    sequence = [OPPOSITE, ORTHOGONAL, OPPOSITE, ORTHOGONAL, OPPOSITE]
    run_steps(balancer, sequence)  # never two in a row: no error
    assert balancer.warning_counts["nash_mtl/solver_failed"] == 3
    # the last of those steps failed: one more failure in a row is one too many
    with pytest.raises(BalancerError, match=r"2 failed steps in a row \(the last at step 5\)"):
        run_steps(balancer, [OPPOSITE], first_step=5)


def test_cagrad_zero_update_at_a_pareto_stationary_point_is_counted_and_limited() -> None:
    balancer = create_balancer("cagrad", names(3), max_failures=1)
    weights, said = run_steps(balancer, [STATIONARY])
    assert bool((weights[0] == 0).all())  # no update of the shared parameters
    assert balancer.warning_counts == {"cagrad/pareto_stationary": 1}
    assert len(said) == 1 and "Pareto-stationary" in said[0] and "step 0" in said[0], said
    with pytest.raises(BalancerError, match=r"outside CAGrad's ball.*the last at step 1\)"):
        run_steps(balancer, [STATIONARY], first_step=1)


def test_cagrad_zero_update_is_its_own_answer_when_the_ball_contains_zero() -> None:
    """With c >= 1 the zero update lies in CAGrad's ball and is optimal: counted, never fatal."""
    balancer = create_balancer("cagrad", names(3), c=2.0, max_failures=0)
    weights, said = run_steps(balancer, [STATIONARY] * 5)
    assert all(bool((w == 0).all()) for w in weights)
    assert balancer.warning_counts == {"cagrad/pareto_stationary": 5}
    assert len(said) == 1, said


def test_cagrad_success_resets_the_count_of_failures_in_a_row() -> None:
    balancer = create_balancer("cagrad", names(3), max_failures=1)
    solvable = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    run_steps(balancer, [STATIONARY, solvable, STATIONARY, solvable, STATIONARY])
    assert balancer.warning_counts["cagrad/pareto_stationary"] == 3


def test_fairgrad_unsolved_system_is_a_failure() -> None:
    pytest.importorskip("scipy")
    balancer = create_balancer("fairgrad", names(2), max_failures=1)
    _, said = run_steps(balancer, [OPPOSITE])
    counts = balancer.warning_counts
    # Newton finds no solution (there is none), scipy's least squares leaves a residual
    assert counts == {"fairgrad/newton_fallback": 1, "fairgrad/inexact_solution": 1}, counts
    assert len(said) == 2, said
    with pytest.raises(BalancerError, match=r"the last at step 1\)"):
        run_steps(balancer, [OPPOSITE], first_step=1)


@pytest.mark.parametrize(("name", "buffer"), [("sdmgrad", "simplex"), ("moco", "lambdas")])
def test_weights_restarted_for_present_tasks_without_mass_are_counted(
    name: str, buffer: str
) -> None:
    """All the simplex mass on a task absent now: the present tasks' weights restart, visibly."""
    balancer = create_balancer(name, names(3))
    with torch.no_grad():
        getattr(balancer, buffer).copy_(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    present = torch.tensor([False, True, True])
    jacobian = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        combination = balancer.combine(
            info(jacobian @ jacobian.T, 0, jacobian=jacobian, present=present)
        )
    assert balancer.warning_counts == {f"{name}/weights_restarted": 1}
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert bool(torch.isfinite(combination.weights).all())
    assert float(combination.weights[0]) == 0.0
