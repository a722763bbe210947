"""Property tests (hypothesis) for the guarantees individual methods make.

The balancers are called directly with a :class:`StepInfo` built from a random Jacobian ``J``
(rows: task gradients) and its Gramian ``J Jᵀ``, exactly what the engine hands them. The update of
the shared parameters is ``wᵀ J`` (or the returned ``direction``).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import Tensor

from polytask.balancing import Balancer, StepInfo, create_balancer

# Derandomised (the same examples on every run: no flaky CI) and without an example database
# (nothing written into the checkout); failing examples are printed in full.
_COMMON = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow],
}
SETTINGS = settings(max_examples=30, **_COMMON)  # type: ignore[arg-type]
FEW = settings(max_examples=12, **_COMMON)  # type: ignore[arg-type]


# Tiny tensors: one intra-op thread is faster, and immune to a busy machine.
pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------------------------- strategies
@st.composite
def jacobians(
    draw: st.DrawFn, min_tasks: int = 2, max_tasks: int = 4, min_dim: int = 2, max_dim: int = 6
) -> Tensor:
    """A float64 ``[m, n]`` Jacobian whose rows are not tiny (a zero gradient has no direction)."""
    m = draw(st.integers(min_tasks, max_tasks))
    n = draw(st.integers(min_dim, max_dim))
    values = draw(
        st.lists(
            st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False, width=64),
            min_size=m * n,
            max_size=m * n,
        )
    )
    jac = torch.tensor(values, dtype=torch.float64).reshape(m, n)
    assume(bool((jac.norm(dim=1) > 0.1).all()))
    return jac


def independent(jac: Tensor, min_singular: float = 0.05) -> bool:
    """The unit task gradients are linearly independent, with some margin."""
    units = jac / jac.norm(dim=1, keepdim=True)
    if units.shape[0] > units.shape[1]:
        return False
    return float(torch.linalg.svdvals(units).min()) > min_singular


positive_scales = st.floats(1e-2, 1e2, allow_nan=False, allow_infinity=False)


def info(jac: Tensor, losses: Tensor | None = None, step: int = 0, epoch: int = 0) -> StepInfo:
    m = jac.shape[0]
    return StepInfo(
        losses=torch.ones(m, dtype=jac.dtype) if losses is None else losses,
        present=torch.ones(m, dtype=torch.bool),
        step=step,
        epoch=epoch,
        generator=torch.Generator().manual_seed(step),
        jacobian=jac,
        gramian=jac @ jac.T,
    )


def names(m: int) -> list[str]:
    return [f"t{i}" for i in range(m)]


def update(balancer: Balancer, step: StepInfo) -> tuple[Tensor, Tensor]:
    """The combined gradient of the shared part, and the weights, as the engine would apply them."""
    combination = balancer.combine(step)
    weights = combination.weights.double()
    if combination.direction is not None:
        return combination.direction.double(), weights
    assert step.jacobian is not None
    return weights @ step.jacobian, weights


def cosine(a: Tensor, b: Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


# --------------------------------------------------------------------------------- non-conflict
@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
@SETTINGS
@given(jac=jacobians())
def test_dual_cone_directions_conflict_with_no_task(name: str, jac: Tensor) -> None:
    """UPGrad and DualProj project onto the dual cone: ``g_i · d >= 0`` for every task.

    torchjd's quadprog projector solves its dual problem on ``G / tr(G) + ε I`` (``ε = reg_eps =
    1e-4``) so that a singular Gramian (e.g. two opposite gradients) stays solvable; its constraint
    ``((G / tr G + ε I) w)_i >= 0`` guarantees exactly ``g_i · d = (G w)_i >= -ε tr(G) w_i``.
    A conflict left by the mean (which UPGrad / DualProj start from) is of the order of ``tr(G)``.
    """
    for factor in (1.0, 1e-4):  # tiny gradients too (late in training): no silent mean fallback
        j = jac * factor
        d, w = update(create_balancer(name, names(j.shape[0])), info(j))
        trace = float((j @ j.T).trace())
        slack = 1.01e-4 * trace * w.abs() + 1e-9 * trace
        assert bool((j @ d >= -slack).all()), (factor, (j @ d).tolist(), w.tolist())


@FEW
@given(jac=jacobians())
def test_mgda_min_norm_direction_conflicts_with_no_task(jac: Tensor) -> None:
    """At the min-norm point ``d`` of the convex hull, ``g_i · d >= |d|²`` for every task.

    The Frank-Wolfe solver stops once its step is below ``epsilon``, so this holds approximately:
    the slack allowed is a small fraction of the squared gradient norms.
    """
    balancer = create_balancer("mgda", names(jac.shape[0]), epsilon=1e-6, max_iters=1000)
    d, _ = update(balancer, info(jac))
    scale = float((jac @ jac.T).diagonal().max())
    assert bool((jac @ d >= -1e-3 * scale).all()), ((jac @ d).tolist(), float(d @ d))
    assert bool((jac @ d >= d @ d - 1e-3 * scale).all()), ((jac @ d).tolist(), float(d @ d))


@pytest.mark.parametrize("name", ["mgda", "mgda_ub"])
@SETTINGS
@given(jac=jacobians(max_tasks=5))
def test_mgda_weights_lie_on_the_simplex_and_beat_every_vertex(name: str, jac: Tensor) -> None:
    _, w = update(create_balancer(name, names(jac.shape[0])), info(jac))
    assert bool((w >= 0).all()) and abs(float(w.sum()) - 1.0) < 1e-9, w.tolist()
    # the combination is no longer than any single gradient (each vertex is in the hull)
    d = w @ jac
    assert float(d.norm()) <= float(jac.norm(dim=1).min()) * (1 + 1e-9)


@pytest.mark.parametrize("name", ["sdmgrad", "moco"])
@FEW
@given(jac=jacobians())
def test_simplex_methods_keep_their_weights_on_the_simplex(name: str, jac: Tensor) -> None:
    balancer = create_balancer(name, names(jac.shape[0]))
    losses = torch.linspace(0.5, 2.0, jac.shape[0], dtype=torch.float64)
    for step in range(3):
        _, w = update(balancer, info(jac * (step + 1), losses, step=step))
        assert bool((w >= 0).all()) and abs(float(w.sum()) - 1.0) < 1e-9, (step, w.tolist())


@pytest.mark.parametrize("name", ["gradnorm", "excess_mtl"])
@FEW
@given(jac=jacobians())
def test_adaptive_weights_stay_positive_and_sum_to_the_number_of_tasks(
    name: str, jac: Tensor
) -> None:
    balancer = create_balancer(name, names(jac.shape[0]))
    m = jac.shape[0]
    for step in range(4):
        losses = torch.linspace(0.5, 2.0, m, dtype=torch.float64) / (step + 1)
        _, w = update(balancer, info(jac * (1 + step) ** 0.5, losses, step=step))
        assert bool((w > 0).all()) and abs(float(w.sum()) - m) < 1e-9, (step, w.tolist())


# --------------------------------------------------------------------------------- Gramian scale
def _trace_normalised_methods() -> list[str]:
    from polytask.balancing import available, get_balancer_class
    from polytask.balancing._common import GramianWeightingBalancer

    return [
        name
        for name in sorted(available())
        if issubclass(cls := get_balancer_class(name), GramianWeightingBalancer)
        and cls.scale_invariant
    ]


@pytest.mark.parametrize("name", _trace_normalised_methods())
@FEW
@given(jac=jacobians(), exponent=st.integers(-6, 6))
def test_trace_normalised_weightings_ignore_the_gradients_scale(
    name: str, jac: Tensor, exponent: int
) -> None:
    """Weightings fed a trace-normalised Gramian give the same weights for ``s·J`` (``s > 0``):
    tiny gradients late in training are weighted like large ones (no absolute thresholds)."""
    m = jac.shape[0]
    _, w = update(create_balancer(name, names(m)), info(jac))
    _, w_scaled = update(create_balancer(name, names(m)), info(jac * 10.0**exponent))
    torch.testing.assert_close(w_scaled, w, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------------- PCGrad
@SETTINGS
@given(jac=jacobians(min_tasks=2, max_tasks=2))
def test_pcgrad_removes_exactly_the_conflicting_component(jac: Tensor) -> None:
    """For two tasks: ``g1' = g1 - [g1·g2 < 0] (g1·g2/|g2|²) g2`` and the same for ``g2'``.

    PCGrad's update is ``g1' + g2'`` with ``g1' = g1 + (w2 - 1) g2`` and ``g2' = g2 + (w1 - 1) g1``,
    so the weights give the projected gradients back; each then has a non-negative dot product with
    the other task's gradient (zero when they conflicted), and the update conflicts with neither.
    """
    g1, g2 = jac
    d, w = update(create_balancer("pcgrad", names(2)), info(jac))
    p1 = g1 + (w[1] - 1) * g2
    p2 = g2 + (w[0] - 1) * g1
    tol = 1e-9 * float(g1.norm() * g2.norm())
    assert float(p1 @ g2) >= -tol and float(p2 @ g1) >= -tol
    if float(g1 @ g2) < 0:
        assert abs(float(p1 @ g2)) <= tol and abs(float(p2 @ g1)) <= tol
        # only the component along the other gradient was removed
        torch.testing.assert_close(p1 - g1, -(g1 @ g2) / (g2 @ g2) * g2)
        torch.testing.assert_close(p2 - g2, -(g1 @ g2) / (g1 @ g1) * g1)
    else:
        torch.testing.assert_close(w, torch.ones(2, dtype=w.dtype))
    assert float(d @ g1) >= -tol and float(d @ g2) >= -tol


# --------------------------------------------------------------------------------- IMTL-G, ConFIG
@SETTINGS
@given(jac=jacobians(max_tasks=3, min_dim=3))
def test_imtl_g_has_equal_projections_on_every_unit_gradient(jac: Tensor) -> None:
    assume(independent(jac))
    balancer = create_balancer("imtl_g", names(jac.shape[0]))
    d, w = update(balancer, info(jac))
    units = jac / jac.norm(dim=1, keepdim=True)
    projections = units @ d
    # equal and *positive*: the step decreases every task's loss
    assert float(projections.min()) > 0, projections.tolist()
    if balancer.warning_counts:  # the paper's Σw = 1 would reverse d: Σ|w| = 1 instead
        assert balancer.warning_counts == {"imtl_g/non_positive_sum": 1}
        assert abs(float(w.abs().sum()) - 1.0) < 1e-9
    else:
        assert abs(float(w.sum()) - 1.0) < 1e-9
    torch.testing.assert_close(
        projections, projections.mean().expand_as(projections), rtol=1e-6, atol=1e-9
    )


@SETTINGS
@given(jac=jacobians(max_tasks=3, min_dim=3))
def test_config_direction_makes_equal_angles_with_every_task(jac: Tensor) -> None:
    assume(independent(jac))
    d, _ = update(create_balancer("config", names(jac.shape[0])), info(jac))
    cosines = torch.stack([torch.tensor(cosine(d, g)) for g in jac])
    assert float(cosines.min()) > 0
    torch.testing.assert_close(cosines, cosines.mean().expand_as(cosines), rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------------- CAGrad
@SETTINGS
@given(jac=jacobians(), c=st.floats(0.0, 0.9))
def test_cagrad_stays_in_its_ball_around_the_mean_gradient(jac: Tensor, c: float) -> None:
    """``||d - g0|| <= c ||g0||`` with ``g0`` the mean gradient (the constraint of the CAGrad QP)."""
    d, w = update(create_balancer("cagrad", names(jac.shape[0]), c=c), info(jac))
    g0 = jac.mean(dim=0)
    assume(float(g0.norm()) > 1e-3 * float(jac.norm(dim=1).max()))
    assert bool((w >= -1e-9).all())
    assert float((d - g0).norm()) <= c * float(g0.norm()) * (1 + 1e-4) + 1e-9


# --------------------------------------------------------------------------------- scale invariance
def _scaled(jac: Tensor, k: int, c: float) -> Tensor:
    out = jac.clone()
    out[k] = out[k] * c
    return out


@SETTINGS
@given(jac=jacobians(max_tasks=3, min_dim=3), c=positive_scales, data=st.data())
def test_imtl_g_direction_ignores_the_scale_of_a_task_loss(
    jac: Tensor, c: float, data: st.DataObject
) -> None:
    """Scaling ``L_k`` by ``c > 0`` scales ``g_k`` by ``c``; IMTL-G's direction does not move."""
    assume(independent(jac))
    k = data.draw(st.integers(0, jac.shape[0] - 1))
    d, _ = update(create_balancer("imtl_g", names(jac.shape[0])), info(jac))
    d2, _ = update(create_balancer("imtl_g", names(jac.shape[0])), info(_scaled(jac, k, c)))
    assert cosine(d, d2) > 1 - 1e-9


@pytest.mark.parametrize(
    ("name", "settings_"), [("nash_mtl", {"max_norm": 0.0}), ("fairgrad", {"alpha": 1.0})]
)
@FEW
@given(jac=jacobians(max_tasks=3, min_dim=3), c=positive_scales, data=st.data())
def test_bargaining_update_ignores_the_scale_of_a_task_loss(
    name: str, settings_: dict[str, float], jac: Tensor, c: float, data: st.DataObject
) -> None:
    """Nash-MTL (and FairGrad with α=1, the same bargaining solution) solve ``G α = 1/α``.

    With ``g_k → c g_k`` the solution is ``α_k → α_k / c``: the update ``Σ α_i g_i`` is unchanged,
    not only its direction.
    """
    assume(independent(jac, 0.2))
    k = data.draw(st.integers(0, jac.shape[0] - 1))
    m = jac.shape[0]
    d, w = update(create_balancer(name, names(m), **settings_), info(jac))
    d2, w2 = update(create_balancer(name, names(m), **settings_), info(_scaled(jac, k, c)))
    g = jac @ jac.T
    torch.testing.assert_close(g @ w, 1.0 / w, rtol=1e-2, atol=0.0)  # the bargaining condition
    torch.testing.assert_close(d2, d, rtol=1e-2, atol=1e-2 * float(d.norm()))
    torch.testing.assert_close(w2[k] * c, w[k], rtol=1e-2, atol=0.0)


@SETTINGS
@given(jac=jacobians(), c=positive_scales, data=st.data())
def test_db_mtl_update_ignores_the_scale_of_a_task_loss(
    jac: Tensor, c: float, data: st.DataObject
) -> None:
    """DB-MTL balances ``∇ log L_i = ∇L_i / L_i``: scaling ``L_k`` (and so ``g_k``) by ``c`` changes
    nothing, over several steps of its running averages."""
    m = jac.shape[0]
    k = data.draw(st.integers(0, m - 1))
    plain = create_balancer("db_mtl", names(m))
    scaled = create_balancer("db_mtl", names(m))
    for step in range(3):
        losses = torch.linspace(0.5, 2.0, m, dtype=torch.float64) * (step + 1)
        j = jac * (1.0 + 0.5 * step)
        scaled_losses = losses.clone()
        scaled_losses[k] *= c
        d, _ = update(plain, info(j, losses, step))
        d2, _ = update(scaled, info(_scaled(j, k, c), scaled_losses, step))
        torch.testing.assert_close(d2, d, rtol=1e-6, atol=1e-9 * float(d.norm()))


@pytest.mark.parametrize("name", ["scale_invariant", "gls"])
@SETTINGS
@given(
    jac=jacobians(),
    losses=st.lists(st.floats(0.05, 20.0), min_size=4, max_size=4),
    c=positive_scales,
    data=st.data(),
)
def test_log_loss_methods_ignore_the_scale_of_a_task_loss(
    name: str, jac: Tensor, losses: list[float], c: float, data: st.DataObject
) -> None:
    """SI (``Σ log L_i``) gives exactly the same update; GLS (``(Π L_i)^(1/T)``) the same direction.

    The update is ``Σ_i w_i g_i`` with the weights the method reports (the gradient of its loss
    with respect to each task loss).
    """
    m = jac.shape[0]
    k = data.draw(st.integers(0, m - 1))
    base = torch.tensor(losses[:m], dtype=torch.float64)
    scaled_losses = base.clone()
    scaled_losses[k] *= c
    d, _ = update(create_balancer(name, names(m)), info(jac, base))
    d2, _ = update(create_balancer(name, names(m)), info(_scaled(jac, k, c), scaled_losses))
    if name == "scale_invariant":
        torch.testing.assert_close(d2, d, rtol=1e-9, atol=1e-12)
    else:
        assert cosine(d, d2) > 1 - 1e-9 or float(d.norm()) < 1e-12


@SETTINGS
@given(losses=st.lists(st.floats(0.05, 20.0), min_size=2, max_size=4), c=positive_scales)
def test_imtl_l_is_scale_invariant_at_its_learned_scales(losses: list[float], c: float) -> None:
    """IMTL-L learns ``s`` minimising ``e^s L - s``: ``e^{s_i} L_i = 1`` at the optimum, so the
    weighted loss gradient ``e^{s_i} ∇L_i = ∇L_i / L_i`` does not depend on the scale of ``L_i``."""
    m = len(losses)
    base = torch.tensor(losses, dtype=torch.float64)
    jac = torch.eye(m, dtype=torch.float64) + 0.3
    results = []
    for factor in (1.0, c):
        scaled = base.clone()
        scaled[0] *= factor
        jac_k = _scaled(jac, 0, factor)
        balancer = create_balancer("imtl_l", names(m))
        with torch.no_grad():
            balancer.log_vars.copy_(torch.log(scaled))  # the stationary point s = -log L
        combination = balancer.combine(info(jac_k, scaled.clone().requires_grad_(False)))
        assert combination.loss is not None
        combination.loss.backward()
        assert balancer.log_vars.grad is not None
        # the stationary point of the scale objective is e^{s_i} L_i = 1
        torch.testing.assert_close(balancer.log_vars.grad, torch.zeros(m), atol=1e-5, rtol=0.0)
        results.append(combination.weights.double() @ jac_k)
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-6)


def test_imtl_l_scales_converge_to_the_inverse_losses() -> None:
    """Gradient descent on IMTL-L's own parameters drives ``e^{s_i} L_i`` to 1 for every task."""
    losses = torch.tensor([0.1, 3.0, 40.0])
    balancer = create_balancer("imtl_l", names(3))
    optimizer = torch.optim.SGD(balancer.parameters(), lr=0.5)  # the curvature is 1 at the optimum
    for step in range(100):
        optimizer.zero_grad()
        combination = balancer.combine(info(torch.eye(3), losses, step))
        assert combination.loss is not None
        combination.loss.backward()
        optimizer.step()
    torch.testing.assert_close(combination.weights * losses, torch.ones(3), rtol=1e-3, atol=0.0)


@pytest.mark.parametrize("max_norm", [0.0, 1.0])
def test_nash_mtl_solves_conflicting_gradients_of_different_norms(max_norm: float) -> None:
    """Regression: from ``α = 1`` ECOS fails on this easy problem ((G α)_2 < 0 at the start), and
    the bargaining weights were silently the stale start (only a warning said so). The solution
    exists (G is positive definite): ``α ≈ (0.134976, 0.508032)`` (Newton on ``G α = 1/α``)."""
    jac = torch.tensor([[-6.0, 0.0, -7.0], [-1.0, -1.0, 2.0]], dtype=torch.float64)
    balancer = create_balancer("nash_mtl", names(2), max_norm=max_norm, solver="ecos")
    with pytest.warns(RuntimeWarning, match="Newton"):
        _, w = update(balancer, info(jac))
    assert "nash_mtl/solver_failed" not in balancer.warning_counts
    assert balancer.warning_counts.get("nash_mtl/newton_fallback") == 1
    alpha = balancer.alpha
    assert isinstance(alpha, Tensor)
    g = jac @ jac.T
    torch.testing.assert_close(g @ alpha, 1.0 / alpha, rtol=1e-8, atol=0.0)
    torch.testing.assert_close(
        alpha, torch.tensor([0.134976, 0.508032], dtype=torch.float64), rtol=1e-5, atol=0.0
    )
    if max_norm > 0:  # the update is clipped to norm max_norm; the weights keep their ratio
        assert abs(float((w @ jac).norm()) - max_norm) < 1e-9
    torch.testing.assert_close(w / w.sum(), alpha / alpha.sum())


def test_nash_mtl_newton_solver_matches_ecos() -> None:
    """The default damped-Newton solve and the paper's cvxpy/ECOS iterations solve the same
    equation ``G α = 1/α``; Newton needs no fallback on the problem where ECOS fails."""
    jac = torch.tensor([[-6.0, 0.0, -7.0], [-1.0, -1.0, 2.0]], dtype=torch.float64)
    newton = create_balancer("nash_mtl", names(2), max_norm=0.0)
    _, w = update(newton, info(jac))
    assert newton.warning_counts == {}
    torch.testing.assert_close(
        w, torch.tensor([0.134976, 0.508032], dtype=torch.float64), rtol=1e-5, atol=0.0
    )
    generator = torch.Generator().manual_seed(0)
    jac = torch.randn(5, 40, generator=generator, dtype=torch.float64)
    _, w_newton = update(create_balancer("nash_mtl", names(5), max_norm=0.0), info(jac))
    _, w_ecos = update(
        create_balancer("nash_mtl", names(5), max_norm=0.0, solver="ecos"), info(jac)
    )
    g = jac @ jac.T
    torch.testing.assert_close(g @ w_newton, 1.0 / w_newton, rtol=1e-10, atol=0.0)
    torch.testing.assert_close(w_newton, w_ecos, rtol=1e-3, atol=0.0)


def test_imtl_g_never_reverses_the_update() -> None:
    """Regression: here ``v = G⁺ |g|`` sums to a negative number; the paper's ``w = v / Σ v``
    (torchjd's weighting) gave ``d = (-5.38, 4.71, 4.71)``, with projection -4.71 on every unit
    gradient: an ascent direction for all three tasks. Doubling the third loss made ``Σ v``
    positive and flipped the direction."""
    jac = torch.tensor([[0.0, 0.0, -1.0], [1.0, -7.0, 1.0], [0.0, -2.0, 0.0]], dtype=torch.float64)
    units = jac / jac.norm(dim=1, keepdim=True)
    balancer = create_balancer("imtl_g", names(3))
    with pytest.warns(RuntimeWarning, match="ascent direction"):
        d, _ = update(balancer, info(jac))
    doubled, _ = update(create_balancer("imtl_g", names(3)), info(_scaled(jac, 2, 2.0)))
    for direction in (d, doubled):
        projections = units @ direction
        assert float(projections.min()) > 0
        torch.testing.assert_close(projections, projections.mean().expand(3))
    assert cosine(d, doubled) > 1 - 1e-9


# --------------------------------------------------------------------------------- fast solvers
def _random_gramians(seed: int, count: int) -> list[Tensor]:
    """Random Gramians ``B Bᵀ`` of 2..8 tasks, full rank and rank-deficient, some correlated."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for k in range(count):
        m = 2 + k % 7
        rank = m + 5 if k % 2 else max(1, m - 1 - k % 3)
        b = torch.randn(m, rank, generator=generator, dtype=torch.float64)
        if k % 3 == 0:
            b = b + torch.randn(rank, generator=generator, dtype=torch.float64)
        out.append(b @ b.T)
    return out


def _gramian_info(gramian: Tensor) -> StepInfo:
    m = gramian.shape[0]
    return StepInfo(
        losses=torch.ones(m, dtype=torch.float64),
        present=torch.ones(m, dtype=torch.bool),
        step=0,
        epoch=0,
        generator=torch.Generator().manual_seed(0),
        gramian=gramian,
    )


@pytest.mark.parametrize("c", [0.4, 2.0])
def test_cagrad_homotopy_matches_cvxpy(c: float) -> None:
    """The exact homotopy solve gives CAGrad's update (compared through ``G``: ``||d - d_ref||``)
    of torchjd's cvxpy/CLARABEL solve, up to CLARABEL's accuracy, and never a worse one."""
    for gramian in _random_gramians(1, 14):
        m = gramian.shape[0]
        fast = create_balancer("cagrad", names(m), c=c)
        ref = create_balancer("cagrad", names(m), c=c, solver="cvxpy")
        w = fast.combine(_gramian_info(gramian)).weights.double()
        w_ref = ref.combine(_gramian_info(gramian)).weights.double()
        # no solver fallback (a Pareto-stationary Gramian, counted, is CAGrad's own answer at c >= 1)
        assert set(fast.warning_counts) <= {"cagrad/pareto_stationary"}, fast.warning_counts
        diff = w - w_ref
        scale = float((w_ref @ gramian @ w_ref).clamp(min=0).sqrt()) + 1e-12
        gap = float((diff @ gramian @ diff).clamp(min=0).sqrt()) / scale
        # primal check: the worst improvement of the fast update is at least the reference's
        assert float((gramian @ w).min()) >= float((gramian @ w_ref).min()) - 1e-9 * scale**2
        assert gap < 2e-3
        if gramian.shape[0] <= 4 and bool(torch.linalg.eigvalsh(gramian)[0] > 1e-3):
            assert gap < 1e-4


def test_fairgrad_newton_matches_least_squares() -> None:
    """Newton solves ``G w = w^(-1/α)`` to rounding; it agrees with scipy's least_squares wherever
    that one converged."""
    for alpha in (0.5, 1.0, 2.0):
        for gramian in _random_gramians(2, 14):
            m = gramian.shape[0]
            if bool(torch.linalg.eigvalsh(gramian)[0] <= 1e-6 * gramian.trace()):
                continue  # singular: no solution to compare
            fast = create_balancer("fairgrad", names(m), alpha=alpha)
            ref = create_balancer("fairgrad", names(m), alpha=alpha, solver="scipy")
            w = fast.combine(_gramian_info(gramian)).weights.double()
            w_ref = ref.combine(_gramian_info(gramian)).weights.double()
            assert fast.warning_counts == {}
            target = w ** (-1.0 / alpha)
            assert float((gramian @ w - target).norm() / target.norm()) < 1e-10
            ref_target = w_ref ** (-1.0 / alpha)
            if float((gramian @ w_ref - ref_target).norm() / ref_target.norm()) < 1e-7:
                torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=0.0)
