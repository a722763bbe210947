"""Every registered balancer is a method of its own: no two names give the same update.

Why: a check of every balancer against equal weighting found names that were not what they said
(``mgda_ub`` was plain ``mgda`` on the parameters' gradients; ``imtl_l`` gives exactly the update of
``uncertainty``), and every results row under such a name reported another method. This contract
trains each registered method for a few steps, through the public registry, the real gradient
engine and the training loop's optimizer, on one fixed problem where methods *should* disagree:
three regression tasks with conflicting targets whose losses are scaled by 1, 10 and 0.1. It then
requires

* every pair of registered names to move the shared parameters differently, except declared
  aliases (``register_balancer(..., alias_of=...)``), which must instead move them identically:
  the declaration is checked, not trusted;
* every method but ``equal`` and ``static`` (whose default weights are equal's) to move them
  differently from equal weighting, with its default settings.

A new method is held to this without touching the file. Plain SGD without momentum is used so that
a method that only rescales the update (which Adam would normalise away) still counts as different.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from polytask.balancing import GradientEngine, available, create_balancer
from polytask.models import create_model, create_trunk
from polytask.tasks import Task
from polytask.training import TrainSettings
from polytask.training.loop import build_optimizer

METHODS = sorted(available())
ALIASES = {name: info.alias_of for name, info in available().items() if info.alias_of is not None}
SCALES = (1.0, 10.0, 0.1)
N, IN_FEATURES = 64, 6
STEPS, STEPS_PER_EPOCH = 12, 3  # epochs 0-3: DWA leaves its two epochs of equal weights
#: Below this relative distance two updates count as the same (identical methods differ by
#: rounding, ~1e-7 here; the closest distinct pair, ExcessMTL's slowly moving weights against
#: equal weighting, differs by ~1e-3).
SAME = 1e-4
#: Settings under which a method reaches its own path within STEPS: STCH's warm-up *is* the
#: scale-invariant loss (documented), and static weighting's default weights are equal's.
OWN_PATH: dict[str, dict[str, Any]] = {
    "stch": {"warmup_epochs": 1},
    "static": {"weights": {"t0": 2.0, "t1": 0.5, "t2": 1.0}},
}

pytestmark = pytest.mark.usefixtures("single_thread")


def _scaled_mse(scale: float, output: Tensor, target: Tensor) -> Tensor:
    """The squared error times ``scale``: tasks whose losses differ by orders of magnitude."""
    return scale * F.mse_loss(output, target, reduction="none")


def make_problem() -> tuple[list[Task], Tensor, dict[str, Tensor]]:
    """Three regression tasks on one fixed batch; t1's target opposes t0's, t2 mixes both."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, IN_FEATURES, generator=gen)
    a = torch.randn(IN_FEATURES, generator=gen)
    b = torch.randn(IN_FEATURES, generator=gen)
    targets = [x @ a, -(x @ a) + 0.3 * (x @ b), torch.tanh(x @ b) - 0.5 * (x @ a)]
    tasks = [
        Task(
            f"t{i}",
            "regression",
            standardize=False,
            loss=functools.partial(_scaled_mse, scale),
        )
        for i, scale in enumerate(SCALES)
    ]
    return tasks, x, {t.name: y for t, y in zip(tasks, targets, strict=True)}


def make_model(tasks: list[Task]) -> Any:
    torch.manual_seed(0)
    return create_model(
        "hard_sharing", create_trunk("mlp", in_features=IN_FEATURES, hidden=(16,)), tasks
    )


_UPDATES: dict[tuple[str, str], Tensor] = {}


def shared_update(name: str, options: dict[str, Any]) -> Tensor:
    """How far ``STEPS`` training steps with balancer ``name`` move the shared parameters.

    Only the shared part is compared: it is what a balancer decides (every gradient method gives
    the task heads their own task's gradient, which would dilute the differences).
    """
    key = (name, repr(sorted(options.items())))
    if key in _UPDATES:
        return _UPDATES[key]
    tasks, x, y = make_problem()
    model = make_model(tasks)
    balancer = create_balancer(name, [t.name for t in tasks], **options)
    engine = GradientEngine(model, tasks, balancer, mode="jacobian")
    groups = [{"params": list(model.parameters())}]
    if list(balancer.parameters()):
        groups.append({"params": list(balancer.parameters())})
    optimizer = build_optimizer(groups, TrainSettings(optimizer="sgd", lr=0.01, momentum=0.0))
    start = torch.cat([p.detach().flatten().clone() for p in model.shared_parameters()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # counted fallbacks are tested elsewhere
        for step in range(STEPS):
            optimizer.zero_grad(set_to_none=True)
            out = engine.backward(x, y, step, step // STEPS_PER_EPOCH)
            assert out is not None
            optimizer.step()
            engine.after_step(x, y)
    update = torch.cat([p.detach().flatten() for p in model.shared_parameters()]) - start
    assert bool(torch.isfinite(update).all()) and float(update.norm()) > 0, name
    _UPDATES[key] = update
    return update


def distance(a: Tensor, b: Tensor) -> float:
    """Relative distance of two updates (0: the same update)."""
    return float((a - b).norm() / torch.maximum(a.norm(), b.norm()))


def test_the_problem_has_conflicting_and_differently_scaled_tasks() -> None:
    """The fixed problem is one where balancing matters: the premise of the contract."""
    tasks, x, y = make_problem()
    model = make_model(tasks)
    outputs = model(x)
    shared = model.shared_parameters()
    grads = []
    for task in tasks:
        per, count = task.sample_losses(outputs[task.name], y[task.name])
        parts = torch.autograd.grad(per.sum() / count, shared, retain_graph=True)
        grads.append(torch.cat([g.flatten() for g in parts]))
    jac = torch.stack(grads)
    norms = jac.norm(dim=1)
    cosines = (jac @ jac.T) / torch.outer(norms, norms)
    off_diagonal = cosines[~torch.eye(len(tasks), dtype=torch.bool)]
    assert bool((off_diagonal < 0).all()), cosines  # every pair of tasks conflicts
    assert float(norms.max() / norms.min()) > 10.0, norms  # and their scales differ


def test_every_pair_of_registered_methods_gives_a_different_update() -> None:
    updates = {name: shared_update(name, OWN_PATH.get(name, {})) for name in METHODS}
    same = []
    for a, b in itertools.combinations(METHODS, 2):
        if ALIASES.get(a) == b or ALIASES.get(b) == a:
            continue  # declared aliases: checked to agree below
        d = distance(updates[a], updates[b])
        if d < SAME:
            same.append((a, b, d))
    assert not same, f"these methods give the same update (declare an alias or fix one): {same}"


def test_declared_aliases_give_exactly_their_methods_update() -> None:
    assert ALIASES == {"imtl_l": "uncertainty"}  # the aliases this library declares today
    for alias, target in ALIASES.items():
        d = distance(shared_update(alias, {}), shared_update(target, {}))
        assert d < 1e-6, (alias, target, d)


def test_every_method_but_equal_and_static_differs_from_equal_weighting() -> None:
    """With its *default* settings: a method that is equal weighting in disguise is caught."""
    equal = shared_update("equal", {})
    like_equal = [
        (name, distance(shared_update(name, {}), equal))
        for name in METHODS
        if name not in ("equal", "static")
        and distance(shared_update(name, {}), equal) < SAME
    ]
    assert not like_equal, like_equal
    # static weighting with its default weights (1 per task) is equal weighting, by definition
    assert distance(shared_update("static", {}), equal) < 1e-6
