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


def test_declared_alias_is_listed_as_such() -> None:
    """``imtl_l`` gives uncertainty weighting's update: the listing says so, first, with why."""
    from typer.testing import CliRunner

    from polytask.cli import app

    info = available()["imtl_l"]
    assert info.alias_of == "uncertainty" and "s' = -s" in info.alias_reason
    assert info.cost.startswith("alias of uncertainty (same update:")
    assert available()["uncertainty"].alias_of is None
    result = CliRunner().invoke(app, ["list", "balancers"])
    assert result.exit_code == 0, result.output
    line = next(row for row in result.output.splitlines() if "imtl_l" in row)
    assert "alias of uncertainty" in line, line


def test_an_alias_must_say_why_and_name_another_method() -> None:
    from polytask.balancing import Balancer, register_balancer

    with pytest.raises(ValueError, match="must say why"):
        register_balancer("test_alias", alias_of="uncertainty")
    with pytest.raises(ValueError, match="alias of itself"):
        register_balancer("test_alias", alias_of="test_alias", alias_reason="x")
    assert "test_alias" not in available()
    assert Balancer.alias_of is None


def test_mgda_ub_declares_the_representation_as_its_gradient_source() -> None:
    info = available()["mgda_ub"]
    assert (info.gradients, info.source) == ("gramian", "representation")
    assert "representation" in info.cost
    assert {i.source for n, i in available().items() if n != "mgda_ub"} == {"mode"}
