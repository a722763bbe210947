"""Every registered balancer through the engine: finite update, absent task gets weight 0."""

from __future__ import annotations

import pytest
import torch

from polytask.balancing import available, create_balancer
from polytask.balancing.engine import GradientEngine
from polytask.models import create_model, create_trunk
from polytask.tasks import Task

TASKS = [Task("a", "binary"), Task("b", "multiclass", num_classes=3), Task("c", "regression")]


def test_at_least_25_methods_with_references() -> None:
    info = available()
    assert len(info) >= 25
    assert all(i.reference for i in info.values())


@pytest.mark.parametrize("name", sorted(available()))
def test_absent_task_gets_zero_weight_and_update_is_finite(name: str) -> None:
    torch.manual_seed(0)
    model = create_model("hard_sharing", create_trunk("mlp", in_features=5, hidden=(8,)), TASKS)
    balancer = create_balancer(name, [t.name for t in TASKS])
    engine = GradientEngine(model, TASKS, balancer, mode="jacobian")
    x = torch.randn(16, 5)
    y = {"a": torch.randint(0, 2, (16,)).float(), "b": torch.full((16,), -1), "c": torch.randn(16)}
    for step in range(3):
        model.zero_grad()
        out = engine.backward(x, y, step, epoch=step)
        assert out is not None
        assert out.weights[1].item() == 0.0
        assert not bool(out.present[1])
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        engine.after_step(x, y)
