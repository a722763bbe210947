"""MGDA-UB is what Sener & Koltun 2018 define, whatever the engine mode.

Why: ``mgda_ub`` used to be ``mgda`` with a ``preferred_mode`` nobody read, so every run under its
name was MGDA on the parameters' gradients. Here its weights are checked against MGDA applied by
hand to the Jacobian of the *representation*, its update against the weighted sum of the task
losses' gradients on the parameters, and its weights against MGDA's on a problem where the two
objectives differ.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from polytask.balancing import (
    EngineError,
    GradientEngine,
    StepInfo,
    create_balancer,
)
from polytask.models import create_model, create_trunk
from polytask.models.base import MultiTaskModel
from polytask.tasks import Task

MODES = ("jacobian", "gramian", "representation")
IN_FEATURES, N = 5, 32

pytestmark = pytest.mark.usefixtures("single_thread")


def make_problem() -> tuple[list[Task], Tensor, dict[str, Tensor]]:
    """Three tasks (binary, multiclass with missing labels, regression) on one batch."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(N, IN_FEATURES, generator=gen)
    cls = torch.randint(0, 3, (N,), generator=gen)
    cls[:5] = -1
    y = {
        "bin": (x[:, 0] > 0).float(),
        "cls": cls,
        "reg": 5.0 * x[:, 1] - 3.0 * x[:, 2],
    }
    tasks = [
        Task("bin", "binary"),
        Task("cls", "multiclass", num_classes=3),
        Task("reg", "regression", standardize=False),
    ]
    return tasks, x, y


def make_model(tasks: list[Task], kind: str = "hard_sharing") -> MultiTaskModel:
    torch.manual_seed(0)
    trunk = create_trunk("mlp", in_features=IN_FEATURES, hidden=(12, 8))
    if kind == "hard_sharing":
        return create_model(kind, trunk, tasks)
    return create_model(kind, trunk, tasks, example_input=torch.zeros(2, IN_FEATURES))


def task_losses(model: MultiTaskModel, tasks: list[Task], x: Tensor, y: dict[str, Tensor]) -> Tensor:
    outputs = model(x)
    values = []
    for task in tasks:
        per, count = task.sample_losses(outputs[task.name].float(), y[task.name])
        values.append(per.sum() / count)
    return torch.stack(values)


def representation_jacobian(
    model: MultiTaskModel, tasks: list[Task], x: Tensor, y: dict[str, Tensor]
) -> tuple[Tensor, Tensor]:
    """By hand: each task loss's gradient with respect to the shared representation, and losses."""
    rep = model.encode(x).detach().requires_grad_(True)
    outputs = model.decode(rep, x)
    rows, losses = [], []
    for task in tasks:
        per, count = task.sample_losses(outputs[task.name].float(), y[task.name])
        loss = per.sum() / count
        (grad,) = torch.autograd.grad(loss, rep)
        rows.append(grad.flatten())
        losses.append(loss.detach())
    return torch.stack(rows), torch.stack(losses)


def mgda_weights(gramian: Tensor, losses: Tensor) -> Tensor:
    """The ``mgda`` balancer applied to a Gramian we computed ourselves."""
    info = StepInfo(
        losses=losses,
        present=torch.ones(losses.shape[0], dtype=torch.bool),
        step=0,
        epoch=0,
        generator=torch.Generator().manual_seed(0),
        gramian=gramian,
    )
    return create_balancer("mgda", ["bin", "cls", "reg"]).combine(info).weights.double()


def engine_step(name: str, mode: str) -> tuple[Tensor, MultiTaskModel]:
    tasks, x, y = make_problem()
    model = make_model(tasks)
    balancer = create_balancer(name, [t.name for t in tasks])
    out = GradientEngine(model, tasks, balancer, mode=mode).backward(x, y, 0, 0)  # type: ignore[arg-type]
    assert out is not None
    return out.weights.double(), model


@pytest.mark.parametrize("mode", MODES)
def test_weights_are_mgda_on_the_representation_jacobian_in_every_mode(mode: str) -> None:
    tasks, x, y = make_problem()
    rows, losses = representation_jacobian(make_model(tasks), tasks, x, y)
    expected = mgda_weights(rows @ rows.T, losses)
    weights, _ = engine_step("mgda_ub", mode)
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_update_is_the_weighted_sum_of_the_task_gradients(mode: str) -> None:
    """Shared parameters: ``Σ w_i ∇L_i``; each head: its own task's gradient (the engine's rule)."""
    weights, model = engine_step("mgda_ub", mode)
    tasks, x, y = make_problem()
    reference = make_model(tasks)
    losses = task_losses(reference, tasks, x, y)
    shared = reference.shared_parameters()
    expected_shared = torch.autograd.grad(
        (weights.float() * losses).sum(), shared, retain_graph=True
    )
    for p, g in zip(model.shared_parameters(), expected_shared, strict=True):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    for i, task in enumerate(tasks):
        own = reference.task_parameters(task.name)
        expected_head = torch.autograd.grad(losses[i], own, retain_graph=True)
        for p, g in zip(model.task_parameters(task.name), expected_head, strict=True):
            assert p.grad is not None
            torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_differs_from_mgda_on_the_parameters_and_equals_it_on_the_representation() -> None:
    """On the parameters' Jacobian (mgda's jacobian and gramian modes) the min-norm problem is
    another one: here the weights move by more than 0.1. On the representation (mgda's
    representation mode) the two are the same method."""
    ub, _ = engine_step("mgda_ub", "jacobian")
    on_params, _ = engine_step("mgda", "jacobian")
    on_params_gramian, _ = engine_step("mgda", "gramian")
    on_rep, _ = engine_step("mgda", "representation")
    assert float((ub - on_params).abs().max()) > 0.1, (ub.tolist(), on_params.tolist())
    torch.testing.assert_close(on_params_gramian, on_params, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(on_rep, ub, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_refused_for_a_model_without_a_shared_representation(mode: str) -> None:
    tasks, _, _ = make_problem()
    model = make_model(tasks, kind="cross_stitch")
    balancer = create_balancer("mgda_ub", [t.name for t in tasks])
    with pytest.raises(EngineError, match="no single shared representation") as err:
        GradientEngine(model, tasks, balancer, mode=mode)  # type: ignore[arg-type]
    assert "MGDAUB" in str(err.value) and "mgda" in str(err.value)
    # plain MGDA on the parameters still works on that model
    GradientEngine(model, tasks, create_balancer("mgda", [t.name for t in tasks]))


def test_representation_source_is_only_for_gramian_weightings() -> None:
    """The engine computes only ``R Rᵀ`` on that path: any other declaration is refused early."""
    from polytask.balancing import Needs

    assert Needs(gradients="gramian", source="representation").source == "representation"
    for need in ("none", "jacobian"):
        with pytest.raises(ValueError, match="source='representation'"):
            Needs(gradients=need, source="representation")  # type: ignore[arg-type]
