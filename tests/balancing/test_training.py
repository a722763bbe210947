"""Every registered method trains a tiny three-task model and lowers every task's training loss.

The problem is synthetic and small (a regression, a binary and a three-class task on the same
8-dimensional inputs, with a third of the multiclass labels missing), so each method takes a
fraction of a second. The loop mirrors :func:`polytask.training.fit`: engine backward, optimizer
step, then the balancer's extra forward when it asks for one; epochs advance every few steps so
that the epoch-based methods (DWA, STCH's warm-up) leave their start-up phase.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from polytask.balancing import GradientEngine, available, create_balancer, get_balancer_class
from polytask.models import create_model, create_trunk
from polytask.models.base import MultiTaskModel
from polytask.tasks import Task

METHODS = sorted(available())
N, IN_FEATURES, BATCH, EPOCHS = 192, 8, 48, 8  # 4 batches an epoch: 32 steps


# Tiny tensors: one intra-op thread is faster, and immune to a busy machine.
pytestmark = pytest.mark.usefixtures("single_thread")


def make_problem() -> tuple[list[Task], Tensor, dict[str, Tensor]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, IN_FEATURES, generator=gen)
    a, b = torch.randn(IN_FEATURES, generator=gen), torch.randn(IN_FEATURES, generator=gen)
    w = torch.randn(IN_FEATURES, 3, generator=gen)
    reg = torch.tanh(x @ a) + 0.5 * (x[:, 0] * x[:, 1]) + 0.1 * torch.randn(N, generator=gen)
    binary = ((x @ b) > 0).float()
    cls = (x @ w).argmax(dim=1)
    cls[torch.rand(N, generator=gen) < 1 / 3] = -1  # missing labels
    tasks = [
        Task("reg", "regression"),
        Task("bin", "binary"),
        Task("cls", "multiclass", num_classes=3),
    ]
    tasks[0].fit_target_scaler(reg)
    return tasks, x, {"reg": reg, "bin": binary, "cls": cls}


def mode_for(name: str) -> str:
    """The cheapest mode the method supports (MGDA-UB takes its representation Gramian in any)."""
    cls = get_balancer_class(name)
    return "gramian" if cls.needs.gradients == "gramian" else "jacobian"


@torch.no_grad()
def task_losses(
    model: MultiTaskModel, tasks: list[Task], x: Tensor, y: dict[str, Tensor]
) -> Tensor:
    outputs = model(x)
    values = []
    for task in tasks:
        per, count = task.sample_losses(outputs[task.name], y[task.name])
        values.append(per.sum() / count)
    return torch.stack(values)


def train(name: str, *, heads_only: bool = False) -> tuple[list[Task], Tensor, Tensor]:
    """Train with balancer ``name``; the tasks, and their full-batch losses before and after."""
    tasks, x, y = make_problem()
    torch.manual_seed(0)
    model = create_model(
        "hard_sharing", create_trunk("mlp", in_features=IN_FEATURES, hidden=(32,)), tasks
    )
    balancer = create_balancer(name, [t.name for t in tasks])
    engine = GradientEngine(model, tasks, balancer, mode=mode_for(name))  # type: ignore[arg-type]
    params = [p for n, p in model.named_parameters() if not heads_only or n.startswith("heads.")]
    optimizer = torch.optim.AdamW([*params, *balancer.parameters()], lr=1e-2)
    before = task_losses(model, tasks, x, y)
    order = torch.Generator().manual_seed(1)
    step = 0
    for epoch in range(EPOCHS):
        permutation = torch.randperm(N, generator=order)
        for start in range(0, N, BATCH):
            index = permutation[start : start + BATCH]
            xb, yb = x[index], {k: v[index] for k, v in y.items()}
            optimizer.zero_grad(set_to_none=True)
            out = engine.backward(xb, yb, step, epoch)
            assert out is not None
            assert torch.isfinite(out.weights).all(), f"{name}: weights {out.weights} at {step}"
            optimizer.step()
            engine.after_step(xb, yb)
            step += 1
    return tasks, before, task_losses(model, tasks, x, y)


@pytest.fixture(scope="module")
def heads_only() -> Tensor:
    """The losses reached when only the task heads train (the shared trunk frozen at init)."""
    torch.set_num_threads(1)
    _, _, after = train("equal", heads_only=True)
    return after


@pytest.mark.parametrize("name", METHODS)
def test_method_lowers_every_tasks_training_loss(name: str, heads_only: Tensor) -> None:
    tasks, before, after = train(name)
    assert torch.isfinite(after).all()
    report = {
        t.name: (round(float(b), 3), round(float(a), 3))
        for t, b, a in zip(tasks, before, after, strict=True)
    }
    # every task improves clearly (not merely by noise) under every method ...
    assert bool((after < 0.8 * before).all()), report
    # ... and clearly beyond what its own head achieves alone: the shared update helps every task
    assert bool((after < 0.8 * heads_only).all()), (report, heads_only.tolist())


def test_frozen_trunk_baseline_is_a_real_bar(heads_only: Tensor) -> None:
    """The baseline above is not trivially high: the heads alone already lower every loss."""
    _, before, _ = train("equal", heads_only=True)
    assert bool((heads_only < before).all())
