"""Gramian mode on a convolutional trunk: the same weights and update as the Jacobian mode.

The Gramian mode exists to save memory on deep trunks (it never holds the whole Jacobian). That is
only worth having if it changes nothing else: from the same model and batch, every method that
reads only the Gramian must get the same task weights, and the same update, as from the
Jacobian mode's ``J Jᵀ``. Checked in float64 (where the two computations agree to about 1e-12)
and in float32 (to float32 precision), on a small ResNet with GroupNorm and on a trunk with
BatchNorm, whose batch statistics couple the samples.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from polytask.balancing import GradientEngine, available, create_balancer, get_balancer_class
from polytask.models import create_trunk
from polytask.models.base import HardSharing
from polytask.tasks import Task

pytestmark = pytest.mark.usefixtures("single_thread")

#: Every gradient method that can run in gramian mode (it reads only the Gramian).
GRAMIAN_METHODS = sorted(
    name
    for name, info in available().items()
    if info.family == "gradient" and get_balancer_class(name).needs.gradients == "gramian"
)
TASKS = 4


def _tasks() -> list[Task]:
    kinds = ["binary", "regression", "multiclass", "binary"]
    return [
        Task(f"t{i}", k, num_classes=3 if k == "multiclass" else None, standardize=False)
        for i, k in enumerate(kinds[:TASKS])
    ]


def _batch(tasks: list[Task], dtype: torch.dtype) -> tuple[Tensor, dict[str, Tensor]]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, 12, 12, generator=g, dtype=dtype)
    targets = {}
    for t in tasks:
        if t.kind == "multiclass":
            targets[t.name] = torch.randint(0, 3, (6,), generator=g)
        elif t.kind == "binary":
            targets[t.name] = torch.randint(0, 2, (6,), generator=g).to(dtype)
        else:
            targets[t.name] = torch.randn(6, 1, generator=g, dtype=dtype)
    targets["t0"][0] = float("nan")  # a missing label
    return x, targets


def _conv_trunk(norm: str) -> nn.Module:
    if norm == "group":
        return create_trunk(
            "resnet", depth=10, width=8, in_channels=3, small_input=True, norm="group"
        )
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


def _step(method: str, mode: str, norm: str, dtype: torch.dtype) -> tuple[Tensor, list[Tensor]]:
    """The first step's task weights and every parameter's gradient."""
    tasks = _tasks()
    torch.manual_seed(0)
    trunk = _conv_trunk(norm)
    model = HardSharing(trunk, tasks, out_features=8 if norm == "batch" else None).to(dtype)
    model.train()
    balancer = create_balancer(method, [t.name for t in tasks])
    engine = GradientEngine(model, tasks, balancer, mode=mode, seed=0)  # type: ignore[arg-type]
    x, targets = _batch(tasks, dtype)
    out = engine.backward(x, targets, step=0, epoch=0)
    assert out is not None
    grads = [
        p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
        for p in model.parameters()
    ]
    return out.weights.detach().double(), grads


def _flat(grads: list[Tensor]) -> Tensor:
    """All gradients as one vector: compared against the largest entry of the whole update (a
    parameter whose gradient is zero in exact arithmetic, e.g. a convolution's bias before
    BatchNorm, holds rounding noise that no per-tensor relative tolerance can pass)."""
    return torch.cat([g.reshape(-1).double() for g in grads])


def _close(a: Tensor, b: Tensor, rtol: float) -> bool:
    scale = max(float(b.abs().max()), 1e-30)
    return float((a.double() - b.double()).abs().max()) <= rtol * scale


@pytest.mark.parametrize("method", GRAMIAN_METHODS)
def test_gramian_mode_equals_jacobian_mode_in_float64(method: str) -> None:
    w_jac, g_jac = _step(method, "jacobian", "group", torch.float64)
    w_gram, g_gram = _step(method, "gramian", "group", torch.float64)
    assert _close(w_gram, w_jac, 1e-9), (w_gram, w_jac)
    assert _close(_flat(g_gram), _flat(g_jac), 1e-9)


@pytest.mark.parametrize("method", ["mgda", "upgrad", "nash_mtl", "cagrad"])
@pytest.mark.parametrize("norm", ["group", "batch"])
def test_gramian_mode_equals_jacobian_mode_in_float32(method: str, norm: str) -> None:
    w_jac, g_jac = _step(method, "jacobian", norm, torch.float32)
    w_gram, g_gram = _step(method, "gramian", norm, torch.float32)
    assert _close(w_gram, w_jac, 1e-4), (w_gram, w_jac)
    assert _close(_flat(g_gram), _flat(g_jac), 1e-4)


def test_the_methods_under_test_are_the_gramian_ones() -> None:
    """Guard: if the registry's notion of a Gramian method changes, this test file must follow."""
    assert {"mgda", "upgrad", "nash_mtl", "cagrad", "pcgrad"} <= set(GRAMIAN_METHODS)
