"""Golden two-task cases, computed by hand (the arithmetic is in the comments).

``g1``, ``g2`` are the task gradients (rows of ``J``), ``G = J Jᵀ``; ``w`` the weights a method
returns and ``d = w1 g1 + w2 g2`` (or the returned direction) the update of the shared part.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from polytask.balancing import Balancer, Combination, StepInfo, create_balancer

TASKS = ["a", "b"]


# Tiny tensors: one intra-op thread is faster, and immune to a busy machine.
pytestmark = pytest.mark.usefixtures("single_thread")


def info(
    jac: list[list[float]] | None = None,
    losses: tuple[float, ...] = (1.0, 1.0),
    *,
    step: int = 0,
    epoch: int = 0,
    present: tuple[bool, ...] | None = None,
) -> StepInfo:
    losses_t = torch.tensor(losses, dtype=torch.float64)
    mask = torch.ones(len(losses), dtype=torch.bool) if present is None else torch.tensor(present)
    j = None if jac is None else torch.tensor(jac, dtype=torch.float64)
    return StepInfo(
        losses=losses_t,
        present=mask,
        step=step,
        epoch=epoch,
        generator=torch.Generator().manual_seed(step),
        jacobian=j,
        gramian=None if j is None else j @ j.T,
    )


def combine(name: str, step: StepInfo, **hp: object) -> tuple[Combination, Tensor]:
    """The combination, and the update ``d`` it gives the shared part."""
    balancer = create_balancer(name, TASKS, **hp)
    return _combine(balancer, step)


def _combine(balancer: Balancer, step: StepInfo) -> tuple[Combination, Tensor]:
    combination = balancer.combine(step)
    if combination.direction is not None:
        return combination, combination.direction.double()
    if step.jacobian is None:
        return combination, torch.empty(0)
    return combination, combination.weights.double()[step.present] @ step.jacobian


def close(actual: Tensor | float, expected: list[float] | float, tol: float = 1e-6) -> None:
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64),
        torch.tensor(expected, dtype=torch.float64),
        rtol=tol,
        atol=tol,
    )


# --------------------------------------------------------------------------------- loss weighting
def test_equal() -> None:
    # L = 1·3 + 1·4 = 7
    c, _ = combine("equal", info(losses=(3.0, 4.0)))
    close(c.weights, [1.0, 1.0])
    assert c.loss is not None
    close(c.loss, 7.0)


def test_equal_with_an_absent_task() -> None:
    # the absent task's loss is an exact zero and its weight 0: L = 3
    c, _ = combine("equal", info(losses=(3.0, 0.0), present=(True, False)))
    close(c.weights, [1.0, 0.0])
    assert c.loss is not None
    close(c.loss, 3.0)


def test_static() -> None:
    # L = 2·3 + 0.5·4 = 8
    c, _ = combine("static", info(losses=(3.0, 4.0)), weights={"a": 2.0, "b": 0.5})
    close(c.weights, [2.0, 0.5])
    assert c.loss is not None
    close(c.loss, 8.0)


def test_static_takes_the_tasks_weights_by_default() -> None:
    balancer = create_balancer("static", TASKS, task_weights={"a": 3.0, "b": 1.0})
    c, _ = _combine(balancer, info(losses=(1.0, 1.0)))
    close(c.weights, [3.0, 1.0])


def test_uncertainty_loss_value_and_gradient() -> None:
    # s = (0, ln 2): L = e^0·3 + 0 + e^{-ln 2}·4 + ln 2 = 3 + 2 + 0.693147 = 5.693147
    # dL/ds_i = -e^{-s_i} L_i + 1 = (-3 + 1, -2 + 1) = (-2, -1); weights e^{-s} = (1, 0.5)
    balancer = create_balancer("uncertainty", TASKS)
    with torch.no_grad():
        balancer.log_vars.copy_(torch.tensor([0.0, math.log(2.0)]))
    c, _ = _combine(balancer, info(losses=(3.0, 4.0)))
    assert c.loss is not None
    close(c.loss, 5.0 + math.log(2.0))
    close(c.weights, [1.0, 0.5])
    c.loss.backward()
    assert balancer.log_vars.grad is not None
    close(balancer.log_vars.grad, [-2.0, -1.0], tol=1e-6)


def test_uncertainty_absent_task_adds_neither_loss_nor_regulariser() -> None:
    # s = (1, 1), task b absent: L = e^{-1}·3 + 1 = 2.103638 (no s_b term), dL/ds_b = 0
    balancer = create_balancer("uncertainty", TASKS, init=1.0)
    c, _ = _combine(balancer, info(losses=(3.0, 0.0), present=(True, False)))
    assert c.loss is not None
    close(c.loss, 3.0 * math.exp(-1.0) + 1.0)
    c.loss.backward()
    assert balancer.log_vars.grad is not None
    assert balancer.log_vars.grad[1].item() == 0.0


def test_imtl_l_loss_value() -> None:
    # s = (0, ln 2): L = e^0·3 - 0 + e^{ln 2}·4 - ln 2 = 11 - 0.693147; weights e^s = (1, 2).
    # IMTL-L is uncertainty weighting with log_vars = -s (a declared alias).
    balancer = create_balancer("imtl_l", TASKS)
    with torch.no_grad():
        balancer.log_vars.copy_(-torch.tensor([0.0, math.log(2.0)]))
    close(balancer.log_scales, [0.0, math.log(2.0)])
    c, _ = _combine(balancer, info(losses=(3.0, 4.0)))
    assert c.loss is not None
    close(c.loss, 11.0 - math.log(2.0))
    close(c.weights, [1.0, 2.0])
    # dL/ds = e^s L - 1 = (2, 7), so dL/dlog_vars = -(2, 7)
    c.loss.backward()
    assert balancer.log_vars.grad is not None
    close(balancer.log_vars.grad, [-2.0, -7.0], tol=1e-6)


def test_imtl_l_init_is_the_papers_log_scale() -> None:
    balancer = create_balancer("imtl_l", TASKS, init=0.5)
    assert balancer.hyperparameters() == {"init": 0.5}
    close(balancer.log_scales, [0.5, 0.5])
    c, _ = _combine(balancer, info(losses=(1.0, 1.0)))
    close(c.weights, [math.exp(0.5)] * 2)


def test_scale_invariant_and_gls() -> None:
    # SI: L = ln 2 + ln 8 = ln 16; dL/dL_i = 1/L_i = (0.5, 0.125)
    c, _ = combine("scale_invariant", info(losses=(2.0, 8.0)))
    assert c.loss is not None
    close(c.loss, math.log(16.0))
    close(c.weights, [0.5, 0.125])
    # GLS: L = (2·8)^(1/2) = 4; dL/dL_i = L / (2 L_i) = (1, 0.25)
    c, _ = combine("gls", info(losses=(2.0, 8.0)))
    assert c.loss is not None
    close(c.loss, 4.0)
    close(c.weights, [1.0, 0.25])


def test_rlw_normalised_to_one_is_a_softmax_of_the_step_generators_normals() -> None:
    # λ = softmax(z), z ~ N(0, I) drawn from the step's generator (seeded with the step here)
    z = torch.randn(2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    c, _ = combine("rlw", info(losses=(1.0, 1.0), step=5), normalization="one")
    close(c.weights, torch.softmax(z, dim=0).tolist())
    c, _ = combine("rlw", info(losses=(1.0, 1.0), step=5))  # default: weights sum to T = 2
    close(c.weights, (2 * torch.softmax(z, dim=0)).tolist())


def test_dwa_weights_from_loss_histories() -> None:
    # epoch 0: losses (0.8, 2.5), (1.2, 1.5) -> means (1.0, 2.0); epoch 1: (0.5, 2.0) twice.
    # Epochs 0 and 1 use weight 1. At epoch 2: r = (0.5/1.0, 2.0/2.0) = (0.5, 1.0), τ = 2:
    # w = 2·softmax(r/τ) = 2·(e^0.25, e^0.5)/(e^0.25 + e^0.5)
    #   = (2/(1 + e^0.25), 2e^0.25/(1 + e^0.25)) = (0.875647, 1.124353)
    balancer = create_balancer("dwa", TASKS)
    history = [(0, (0.8, 2.5)), (0, (1.2, 1.5)), (1, (0.5, 2.0)), (1, (0.5, 2.0))]
    for step, (epoch, losses) in enumerate(history):
        c, _ = _combine(balancer, info(losses=losses, step=step, epoch=epoch))
        close(c.weights, [1.0, 1.0])
    c, _ = _combine(balancer, info(losses=(0.4, 2.0), step=4, epoch=2))
    e = math.exp(0.25)
    close(c.weights, [2.0 / (1.0 + e), 2.0 * e / (1.0 + e)])
    assert c.loss is not None
    close(c.loss, 0.4 * 2.0 / (1.0 + e) + 2.0 * 2.0 * e / (1.0 + e))


def test_dwa_softmax_runs_over_the_present_tasks() -> None:
    # three tasks with ratios (0.5, 1.0, 2.0); c absent at epoch 2: the two present tasks share
    # 2·softmax over their own ratios, exactly as above; c's ratio has no say.
    balancer = create_balancer("dwa", ["a", "b", "c"])
    history = [(0, (1.0, 2.0, 1.0)), (1, (0.5, 2.0, 2.0))]
    for step, (epoch, losses) in enumerate(history):
        _combine(balancer, info(losses=losses, step=step, epoch=epoch))
    c, _ = _combine(
        balancer, info(losses=(0.4, 2.0, 0.0), step=2, epoch=2, present=(True, True, False))
    )
    e = math.exp(0.25)
    close(c.weights, [2.0 / (1.0 + e), 2.0 * e / (1.0 + e), 0.0])


def test_famo_first_step_and_logit_update() -> None:
    # z = softmax(0, 0) = (0.5, 0.5); L = (1, 4): c = Σ z_i / L_i = 0.5 + 0.125 = 0.625
    # loss = Σ (z_i / c) ln L_i = 0.8·0 + 0.8·ln 4; weights z_i / (c L_i) = (0.8, 0.2)
    balancer = create_balancer("famo", TASKS)
    c, _ = _combine(balancer, info(losses=(1.0, 4.0)))
    assert c.loss is not None
    close(c.loss, 0.8 * math.log(4.0))
    close(c.weights, [0.8, 0.2])
    # after the update the losses are (0.5, 4): δ = ln before - ln after = (ln 2, 0)
    # ∇ = z ⊙ (δ - z·δ) = (0.5·(ln2 - ln2/2), 0.5·(0 - ln2/2)) = (+0.173, -0.173)
    # Adam's first step moves each logit by lr·sign(∇) = 0.025: logits = (-0.025, +0.025)
    balancer.after_step(torch.tensor([0.5, 4.0], dtype=torch.float64), torch.tensor([True, True]))
    assert isinstance(balancer.logits, Tensor)
    close(balancer.logits, [-0.025, 0.025], tol=1e-6)


# --------------------------------------------------------------------------------- MGDA
def test_mgda_min_norm_closed_form() -> None:
    # g1 = (1, 0), g2 = (0, 2). min_γ |γ g1 + (1-γ) g2|² has
    # γ* = (g2 - g1)·g2 / |g1 - g2|² = ((-1, 2)·(0, 2)) / 5 = 4/5: w = (0.8, 0.2), d = (0.8, 0.4)
    # and d·g1 = d·g2 = 0.8 = |d|² (the min-norm point is equally far along both gradients)
    c, d = combine("mgda", info([[1.0, 0.0], [0.0, 2.0]]))
    close(c.weights, [0.8, 0.2])
    close(d, [0.8, 0.4])


def test_mgda_min_norm_at_a_vertex() -> None:
    # g1 = (1, 0), g2 = (3, 0): γ* = ((2, 0)·(3, 0)) / |(-2, 0)|² = 6/4 > 1, clipped to 1:
    # the shorter gradient itself, w = (1, 0)
    c, d = combine("mgda", info([[1.0, 0.0], [3.0, 0.0]]))
    close(c.weights, [1.0, 0.0])
    close(d, [1.0, 0.0])


def test_mgda_l2_normalisation() -> None:
    # normalised gradients u1 = (1, 0), u2 = (0, 1): γ* = 1/2 on the normalised Gramian; as in
    # Sener & Koltun's code the weights then scale the raw losses: w = (0.5, 0.5), d = (0.5, 1)
    c, d = combine("mgda", info([[1.0, 0.0], [0.0, 2.0]]), normalization="l2")
    close(c.weights, [0.5, 0.5])
    close(d, [0.5, 1.0])


# --------------------------------------------------------------------------------- projections
def test_pcgrad_two_conflicting_vectors() -> None:
    # g1 = (1, 0), g2 = (-1, 1), g1·g2 = -1 < 0:
    # g1' = g1 - (g1·g2/|g2|²) g2 = (1, 0) + ½(-1, 1) = (0.5, 0.5)   (g1'·g2 = 0)
    # g2' = g2 - (g1·g2/|g1|²) g1 = (-1, 1) + (1, 0) = (0, 1)        (g2'·g1 = 0)
    # d = g1' + g2' = (0.5, 1.5) = 2·g1 + 1.5·g2
    c, d = combine("pcgrad", info([[1.0, 0.0], [-1.0, 1.0]]))
    close(c.weights, [2.0, 1.5])
    close(d, [0.5, 1.5])


def test_pcgrad_leaves_non_conflicting_vectors_alone() -> None:
    # g1·g2 = 1 > 0: nothing projected, d = g1 + g2
    c, d = combine("pcgrad", info([[1.0, 0.0], [1.0, 1.0]]))
    close(c.weights, [1.0, 1.0])
    close(d, [2.0, 1.0])


def test_upgrad_two_conflicting_vectors() -> None:
    # dual cone C = {x : x·g1 >= 0, x·g2 >= 0} with g1 = (1, 0), g2 = (-1, 1)
    # proj_C(g1) = (0.5, 0.5) (only x·g2 >= 0 is violated; the result has x·g1 = 0.5 >= 0)
    # proj_C(g2) = (0, 1)     (only x·g1 >= 0 is violated)
    # d = mean = (0.25, 0.75) = 1·g1 + 0.75·g2. (torchjd regularises G by 1e-4: tolerance 1e-3)
    c, d = combine("upgrad", info([[1.0, 0.0], [-1.0, 1.0]]))
    close(c.weights, [1.0, 0.75], tol=1e-3)
    close(d, [0.25, 0.75], tol=1e-3)


def test_upgrad_and_dualproj_on_orthogonal_vectors_are_the_mean() -> None:
    # orthogonal gradients lie in their dual cone: nothing is projected, d = (g1 + g2)/2
    for name in ("upgrad", "dualproj"):
        c, d = combine(name, info([[2.0, 0.0], [0.0, 1.0]]))
        close(c.weights, [0.5, 0.5], tol=1e-3)
        close(d, [1.0, 0.5], tol=1e-3)


def test_dualproj_projects_the_mean() -> None:
    # g1 = (1, 0), g2 = (-2, 1): mean = (-0.5, 0.5), mean·g1 = -0.5 < 0.
    # Projection onto {x·g1 >= 0}: (0, 0.5), and (0, 0.5)·g2 = 0.5 >= 0, so it is proj_C(mean).
    # d = (0, 0.5) = 1·g1 + 0.5·g2
    c, d = combine("dualproj", info([[1.0, 0.0], [-2.0, 1.0]]))
    close(c.weights, [1.0, 0.5], tol=1e-3)
    close(d, [0.0, 0.5], tol=1e-3)


# --------------------------------------------------------------------------------- CAGrad, IMTL-G
def test_cagrad_on_orthogonal_vectors() -> None:
    # g1 = (1, 0), g2 = (0, 1), c = 0.4. g0 = mean = (0.5, 0.5), |g0| = 1/√2.
    # w* = argmin_{w in simplex} g_w·g0 + c|g0||g_w| = (0.5, 0.5) by symmetry, so g_w = g0 and
    # d = g0 + c|g0| g_w/|g_w| = (1 + c) g0 = (0.7, 0.7); weights 1/2 + c|g0|/|g_w|·w* = 0.7 each
    c, d = combine("cagrad", info([[1.0, 0.0], [0.0, 1.0]]), c=0.4)
    close(c.weights, [0.7, 0.7], tol=1e-5)
    close(d, [0.7, 0.7], tol=1e-5)


def test_cagrad_with_c_zero_is_the_mean() -> None:
    c, d = combine("cagrad", info([[3.0, 0.0], [-1.0, 1.0]]), c=0.0)
    close(c.weights, [0.5, 0.5], tol=1e-6)
    close(d, [1.0, 0.5], tol=1e-6)


def test_imtl_g_on_orthogonal_vectors() -> None:
    # g1 = (2, 0), g2 = (0, 1), u1 = (1, 0), u2 = (0, 1); d = (2α1, α2) with
    # d·u1 = d·u2 -> 2α1 = α2, and α1 + α2 = 1 -> α = (1/3, 2/3), d = (2/3, 2/3)
    c, d = combine("imtl_g", info([[2.0, 0.0], [0.0, 1.0]]))
    close(c.weights, [1 / 3, 2 / 3])
    close(d, [2 / 3, 2 / 3])


def test_imtl_g_on_non_orthogonal_vectors() -> None:
    # g1 = (1, 0), g2 = (1, 1): u1 = (1, 0), u2 = (1, 1)/√2, d = (α1 + α2, α2).
    # d·u1 = d·u2: α1 + α2 = (α1 + 2α2)/√2; with α1 = 1 - α2: 1 = (1 + α2)/√2 -> α2 = √2 - 1
    a2 = math.sqrt(2.0) - 1.0
    c, d = combine("imtl_g", info([[1.0, 0.0], [1.0, 1.0]]))
    close(c.weights, [1.0 - a2, a2])
    close(d, [1.0, a2])


def test_aligned_mtl_on_orthogonal_vectors() -> None:
    # G = diag(4, 1): eigenvalues (4, 1), σ_min = 1. The aligned gradients have norm σ_min:
    # (1, 0) and (0, 1); their mean is d = (0.5, 0.5) = 0.25·g1 + 0.5·g2
    c, d = combine("aligned_mtl", info([[2.0, 0.0], [0.0, 1.0]]))
    close(c.weights, [0.25, 0.5])
    close(d, [0.5, 0.5])


# --------------------------------------------------------------------------------- bargaining
def test_nash_mtl_on_orthogonal_vectors() -> None:
    # G = diag(4, 1); G α = 1/α -> 4α1² = 1, α2² = 1 -> α = (0.5, 1), d = (1, 1)
    c, d = combine("nash_mtl", info([[2.0, 0.0], [0.0, 1.0]]), max_norm=0.0)
    close(c.weights, [0.5, 1.0], tol=1e-3)
    close(d, [1.0, 1.0], tol=1e-3)
    # with max_norm = 1: |d| = √2 > 1, so α is scaled by 1/√2
    c, d = combine("nash_mtl", info([[2.0, 0.0], [0.0, 1.0]]), max_norm=1.0)
    close(c.weights, [0.5 / math.sqrt(2.0), 1.0 / math.sqrt(2.0)], tol=1e-3)


def test_fairgrad_on_orthogonal_vectors() -> None:
    # G w = w^(-1/α). α = 1: the Nash condition, w = (0.5, 1).
    # α = 2: 4 w1 = w1^(-1/2) -> w1 = 4^(-2/3) = 0.396850; w2 = w2^(-1/2) -> w2 = 1
    c, _ = combine("fairgrad", info([[2.0, 0.0], [0.0, 1.0]]), alpha=1.0)
    close(c.weights, [0.5, 1.0], tol=1e-4)
    c, _ = combine("fairgrad", info([[2.0, 0.0], [0.0, 1.0]]), alpha=2.0)
    close(c.weights, [4.0 ** (-2.0 / 3.0), 1.0], tol=1e-4)


# --------------------------------------------------------------------------------- stateful
def test_db_mtl_two_steps() -> None:
    # g1 = (2, 0), L1 = 1 -> ∇ln L1 = (2, 0); g2 = (0, 1), L2 = 2 -> ∇ln L2 = (0, 0.5). β = 0.9.
    # step 1: averages = 0.1·(2, 0) = (0.2, 0), 0.1·(0, 0.5) = (0, 0.05); norms (0.2, 0.05)
    #   factors = max / norm = (1, 4); d = 1·(0.2, 0) + 4·(0, 0.05) = (0.2, 0.2)
    # step 2: averages = 0.9·(0.2, 0) + 0.1·(2, 0) = (0.38, 0), (0, 0.095); d = (0.38, 0.38)
    balancer = create_balancer("db_mtl", TASKS)
    step = info([[2.0, 0.0], [0.0, 1.0]], losses=(1.0, 2.0))
    c, d = _combine(balancer, step)
    close(c.weights, [1.0, 4.0], tol=1e-6)
    close(d, [0.2, 0.2], tol=1e-6)
    c, d = _combine(balancer, step)
    close(d, [0.38, 0.38], tol=1e-6)


def test_gradnorm_weight_update() -> None:
    # step 1 returns the initial weights (1, 1). Norms |g| = (2, 1), losses equal to the initial
    # ones: rates (1, 1); weighted norms (2, 1), target = mean = 1.5;
    # ∇ = sign(weighted - target)·|g| = (2, -1); w = (1 - 0.025·2, 1 + 0.025) = (0.95, 1.025)
    # renormalised to sum 2: (0.95, 1.025)·2/1.975 = (0.962025, 1.037975), returned at step 2
    balancer = create_balancer("gradnorm", TASKS)
    step = info([[2.0, 0.0], [0.0, 1.0]], losses=(1.0, 2.0))
    c, _ = _combine(balancer, step)
    close(c.weights, [1.0, 1.0])
    c, _ = _combine(balancer, step)
    close(c.weights, [0.95 * 2 / 1.975, 1.025 * 2 / 1.975])


def test_config_on_orthogonal_vectors() -> None:
    # unit gradients (1, 0), (0, 1): the equal-angle unit direction is (1, 1)/√2; its length is the
    # sum of the gradients' projections on it: (2 + 1)/√2, so d = 1.5·(1, 1)
    c, d = combine("config", info([[2.0, 0.0], [0.0, 1.0]]))
    close(d, [1.5, 1.5], tol=1e-6)
    close(c.weights, [0.75, 1.5], tol=1e-6)  # the reported weights reproduce d: w1·2 = w2·1 = 1.5
