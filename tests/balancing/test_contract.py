"""The balancer contract, checked for every registered method through the real gradient engine.

Every test is parametrised over :func:`polytask.balancing.available`, so a newly registered method
is held to the same contract without touching this file: finite updates for 1, 2 and 40 tasks,
tasks missing from a batch, determinism under a seed, exact checkpoint round trips, hyper-parameter
validation, and refusal of engine combinations that cannot work.
"""

from __future__ import annotations

import inspect
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor

from polytask.balancing import (
    Balancer,
    BalancerError,
    Combination,
    EngineError,
    GradientEngine,
    StepInfo,
    available,
    create_balancer,
    get_balancer_class,
)
from polytask.models import create_model, create_trunk
from polytask.models.base import MultiTaskModel
from polytask.tasks import Task

METHODS = sorted(available())
IN_FEATURES = 5
BATCH = 16

#: Settings under which a method reaches its stateful path within the few steps of these tests
#: (STCH otherwise stays in its five-epoch warm-up, where it is plain log-loss summing).
FAST: dict[str, dict[str, Any]] = {"stch": {"warmup_epochs": 1}}

MODES_FOR_NEED: dict[str, tuple[str, ...]] = {
    "none": ("jacobian", "gramian"),
    "gramian": ("jacobian", "gramian", "representation"),
    "jacobian": ("jacobian", "representation"),
}
ALL_MODES = ("jacobian", "gramian", "representation")


# --------------------------------------------------------------------------------- helpers
# Tiny tensors: one intra-op thread is faster, and immune to a busy machine.
pytestmark = pytest.mark.usefixtures("single_thread")


def make_tasks(n: int) -> list[Task]:
    """``n`` tasks cycling through the binary, multiclass and regression kinds."""
    tasks: list[Task] = []
    for i in range(n):
        kind = ("binary", "multiclass", "regression")[i % 3]
        if kind == "multiclass":
            tasks.append(Task(f"t{i}", kind, num_classes=3))
        else:
            tasks.append(Task(f"t{i}", kind))
    return tasks


def make_model(tasks: Sequence[Task], seed: int = 0, kind: str = "hard_sharing") -> MultiTaskModel:
    torch.manual_seed(seed)
    trunk = create_trunk("mlp", in_features=IN_FEATURES, hidden=(8,))
    if kind == "hard_sharing":
        return create_model(kind, trunk, tasks)
    return create_model(kind, trunk, tasks, example_input=torch.zeros(2, IN_FEATURES))


def make_batch(
    tasks: Sequence[Task], seed: int, absent: Sequence[str] = ()
) -> tuple[Tensor, dict[str, Tensor]]:
    """A random batch; every label of the tasks in ``absent`` is missing."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, IN_FEATURES, generator=gen)
    y: dict[str, Tensor] = {}
    for task in tasks:
        if task.kind.value == "multiclass":
            target = torch.randint(0, 3, (BATCH,), generator=gen)
            if task.name in absent:
                target = torch.full_like(target, -1)
        elif task.kind.value == "binary":
            target = torch.randint(0, 2, (BATCH,), generator=gen).float()
            if task.name in absent:
                target = torch.full_like(target, float("nan"))
        else:
            target = torch.randn(BATCH, generator=gen)
            if task.name in absent:
                target = torch.full_like(target, float("nan"))
        y[task.name] = target
    return x, y


def make_balancer(name: str, task_names: Sequence[str]) -> Balancer:
    return create_balancer(name, list(task_names), **FAST.get(name, {}))


@dataclass
class Record:
    """What one engine step produced."""

    weights: Tensor
    losses: Tensor
    present: Tensor
    grads: dict[str, Tensor | None]
    balancer_grads: dict[str, Tensor | None]
    combination: Combination


class Runner:
    """A model, a balancer and an engine, stepped with plain SGD as the training loop does."""

    def __init__(
        self,
        name: str,
        tasks: Sequence[Task],
        *,
        mode: str = "jacobian",
        seed: int = 0,
        engine_seed: int = 0,
    ) -> None:
        self.tasks = list(tasks)
        self.model = make_model(self.tasks, seed)
        self.balancer = make_balancer(name, [t.name for t in self.tasks])
        self.engine = GradientEngine(
            self.model,
            self.tasks,
            self.balancer,
            mode=mode,  # type: ignore[arg-type]
            seed=engine_seed,
        )
        params = [*self.model.parameters(), *self.balancer.parameters()]
        self.optimizer = torch.optim.SGD(params, lr=0.05)
        self.combinations: list[Combination] = []
        inner = self.balancer.combine

        def recording(step: StepInfo) -> Combination:
            combination = inner(step)
            self.combinations.append(combination)
            return combination

        self.balancer.combine = recording  # type: ignore[method-assign]

    def step(self, x: Tensor, y: dict[str, Tensor], step: int, epoch: int) -> Record:
        self.optimizer.zero_grad(set_to_none=True)
        out = self.engine.backward(x, y, step, epoch)
        assert out is not None, "the engine skipped a batch that has labels"
        record = Record(
            weights=out.weights.clone(),
            losses=out.losses.clone(),
            present=out.present.clone(),
            grads={
                n: None if p.grad is None else p.grad.clone()
                for n, p in self.model.named_parameters()
            },
            balancer_grads={
                n: None if p.grad is None else p.grad.clone()
                for n, p in self.balancer.named_parameters()
            },
            combination=self.combinations[-1],
        )
        self.optimizer.step()
        self.engine.after_step(x, y)
        return record


def shared_grad(runner: Runner, record: Record) -> Tensor:
    names = {id(p): n for n, p in runner.model.named_parameters()}
    parts = []
    for p in runner.model.shared_parameters():
        g = record.grads[names[id(p)]]
        parts.append(torch.zeros(p.numel()) if g is None else g.reshape(-1))
    return torch.cat(parts)


def assert_finite_record(record: Record, num_tasks: int, where: str) -> None:
    assert record.weights.shape == (num_tasks,), where
    assert torch.isfinite(record.weights).all(), f"{where}: weights {record.weights}"
    assert torch.isfinite(record.losses).all(), f"{where}: losses {record.losses}"
    combination = record.combination
    assert torch.isfinite(combination.weights).all(), where
    if combination.loss is not None:
        assert combination.loss.ndim == 0, where
        assert math.isfinite(float(combination.loss)), f"{where}: loss {combination.loss}"
    if combination.direction is not None:
        assert torch.isfinite(combination.direction).all(), f"{where}: non-finite direction"
    for n, g in [*record.grads.items(), *record.balancer_grads.items()]:
        if g is not None:
            assert torch.isfinite(g).all(), f"{where}: non-finite gradient of {n}"


# --------------------------------------------------------------------------------- registry
def test_registry_covers_the_documented_methods() -> None:
    """Every registered method is in docs/balancers.md and vice versa (the list the user reads)."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "balancers.md").read_text()
    documented = {
        line.split("|")[1].strip().strip("`") for line in doc.splitlines() if line.startswith("| `")
    }
    assert documented == set(METHODS)
    for name, info in available().items():
        row = next(line for line in doc.splitlines() if line.startswith(f"| `{name}` |"))
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[1] == info.family, name
        assert cells[2] == info.gradients, name
        assert (cells[3] == "yes") == info.after_step, name


# --------------------------------------------------------------------------------- finiteness
@pytest.mark.parametrize("num_tasks", [1, 2, 40])
@pytest.mark.parametrize("name", METHODS)
def test_finite_update_for_1_2_and_40_tasks(name: str, num_tasks: int) -> None:
    tasks = make_tasks(num_tasks)
    runner = Runner(name, tasks)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # 4 steps reach every method's stateful path (DWA's history, STCH's nadir); 40 tasks: 2
        for step in range(4 if num_tasks <= 2 else 2):
            x, y = make_batch(tasks, seed=step)
            record = runner.step(x, y, step, epoch=step)
            where = f"{name} with {num_tasks} task(s), step {step}"
            assert_finite_record(record, num_tasks, where)
            assert bool(record.present.all()), where
            shared = shared_grad(runner, record)
            if num_tasks <= 2:
                assert shared.abs().sum() > 0, f"{where}: the shared parameters got no update"
            # every head learns its own task
            for task in tasks:
                head = [g for n, g in record.grads.items() if n.startswith(f"heads.{task.name}.")]
                assert head and all(g is not None and g.abs().sum() > 0 for g in head), where
    # a documented recovery is always counted, and announced by one warning per kind (never silent)
    ours = [
        str(w.message)
        for w in caught
        if issubclass(w.category, RuntimeWarning) and str(w.message).startswith(f"{name}:")
    ]
    counted = runner.balancer.warning_counts
    assert len(ours) == len(counted), (ours, counted)
    assert all(any(f"warning/balancer/{key}" in m for m in ours) for key in counted), (ours, counted)


@pytest.mark.parametrize("name", METHODS)
def test_every_valid_engine_mode_gives_a_finite_update(name: str) -> None:
    tasks = make_tasks(3)
    need = get_balancer_class(name).needs.gradients
    for mode in MODES_FOR_NEED[need]:
        runner = Runner(name, tasks, mode=mode)
        for step in range(3):
            x, y = make_batch(tasks, seed=step, absent=("t1",) if step == 1 else ())
            record = runner.step(x, y, step, epoch=step)
            assert_finite_record(record, 3, f"{name} in mode {mode}, step {step}")
            assert shared_grad(runner, record).abs().sum() > 0, f"{name} in mode {mode}"


# --------------------------------------------------------------------------------- missing tasks
@pytest.mark.parametrize("name", METHODS)
def test_missing_task_gets_no_weight_no_gradient_and_no_nan(name: str) -> None:
    tasks = make_tasks(3)
    runner = Runner(name, tasks)
    # t1 missing at steps 0 and 2; t0 and t2 missing at step 3 (a batch with one task only)
    absent_at = {0: ("t1",), 1: (), 2: ("t1",), 3: ("t0", "t2"), 4: ()}
    for step, absent in absent_at.items():
        x, y = make_batch(tasks, seed=step, absent=absent)
        record = runner.step(x, y, step, epoch=step)
        where = f"{name}, step {step}, absent {absent}"
        assert_finite_record(record, 3, where)
        for i, task in enumerate(tasks):
            if task.name in absent:
                assert not bool(record.present[i]), where
                assert record.weights[i].item() == 0.0, where
                assert record.combination.weights[i].item() == 0.0, where
                for n, g in record.grads.items():
                    if n.startswith(f"heads.{task.name}."):
                        assert g is None or not g.any(), f"{where}: {n} was updated"
            else:
                assert bool(record.present[i]), where
        if record.combination.direction is not None:
            # a direction is over the present tasks' gradient space: no absent row in it
            assert record.combination.direction.ndim == 1, where


#: Methods whose update with a task missing from every batch differs, by design, from the update
#: of the same model without that task: RLW draws one random number per configured task so that
#: its random stream does not depend on which tasks are present.
DRAWS_PER_CONFIGURED_TASK = {"rlw"}


@pytest.mark.parametrize("name", METHODS)
def test_always_missing_task_changes_nothing_for_the_others(name: str) -> None:
    """With t1 absent from every batch, the shared update equals that of a model without t1."""
    if name in DRAWS_PER_CONFIGURED_TASK:
        pytest.skip("draws one random number per configured task (documented)")
    tasks = make_tasks(3)
    kept = [tasks[0], tasks[2]]
    full = Runner(name, tasks)
    reduced = Runner(name, kept)
    # the same trunk and heads (the reduced model is the full one without t1's head)
    reduced.model.load_state_dict(
        {k: v for k, v in full.model.state_dict().items() if not k.startswith("heads.t1.")}
    )
    for step in range(5):
        x, y = make_batch(tasks, seed=step, absent=("t1",))
        a = full.step(x, y, step, epoch=step)
        b = reduced.step(x, {k: v for k, v in y.items() if k != "t1"}, step, epoch=step)
        where = f"{name}, step {step}"
        torch.testing.assert_close(a.weights[[0, 2]], b.weights, msg=where)
        torch.testing.assert_close(
            shared_grad(full, a), shared_grad(reduced, b), rtol=1e-5, atol=1e-7, msg=where
        )


# --------------------------------------------------------------------------------- weights applied
def task_jacobian(runner: Runner, x: Tensor, y: dict[str, Tensor]) -> Tensor:
    """Rows: each task's mean-loss gradient w.r.t. the shared parameters (zero when absent)."""
    shared = runner.model.shared_parameters()
    outputs = runner.model(x)
    rows = []
    for task in runner.tasks:
        per, count = task.sample_losses(outputs[task.name].float(), y[task.name])
        if count == 0:
            rows.append(torch.zeros(sum(p.numel() for p in shared)))
            continue
        grads = torch.autograd.grad(per.sum() / count, shared, retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


@pytest.mark.parametrize("name", METHODS)
def test_reported_weights_are_the_weights_applied(name: str) -> None:
    """The weights the logger records are those of the update: shared ``.grad = Σ_i w_i ∇L_i``.

    For loss-based methods the weights are ``∂L/∂L_i`` of the balancer's loss, for weightings the
    weights handed to the engine. Methods that return a ``direction`` report least-squares or
    internal weights (documented), so they are held to their direction instead.
    """
    tasks = make_tasks(3)
    runner = Runner(name, tasks)
    for step in range(4):
        x, y = make_batch(tasks, seed=step, absent=("t1",) if step == 2 else ())
        jac = task_jacobian(runner, x, y)
        record = runner.step(x, y, step, epoch=step)
        applied = shared_grad(runner, record)
        direction = record.combination.direction
        expected = record.weights.double() @ jac.double() if direction is None else direction
        torch.testing.assert_close(
            applied.double(),
            expected.double(),
            rtol=1e-4,
            atol=1e-6 * float(expected.abs().max()),
            msg=f"{name}, step {step}",
        )


# --------------------------------------------------------------------------------- determinism
def _trajectory(name: str, *, engine_seed: int, steps: int = 4) -> list[Record]:
    tasks = make_tasks(3)
    runner = Runner(name, tasks, engine_seed=engine_seed)
    out = []
    for step in range(steps):
        x, y = make_batch(tasks, seed=step, absent=("t2",) if step == 2 else ())
        out.append(runner.step(x, y, step, epoch=step))
    return out


def _assert_same(a: list[Record], b: list[Record], name: str) -> None:
    for step, (ra, rb) in enumerate(zip(a, b, strict=True)):
        assert torch.equal(ra.weights, rb.weights), f"{name}, step {step}"
        for n in ra.grads:
            ga, gb = ra.grads[n], rb.grads[n]
            assert (ga is None) == (gb is None), f"{name}, step {step}, {n}"
            if ga is not None and gb is not None:
                assert torch.equal(ga, gb), f"{name}, step {step}, {n}"
        for n in ra.balancer_grads:
            ga, gb = ra.balancer_grads[n], rb.balancer_grads[n]
            if ga is not None and gb is not None:
                assert torch.equal(ga, gb), f"{name}, step {step}, {n}"


@pytest.mark.parametrize("name", METHODS)
def test_two_fresh_instances_with_the_same_seed_give_identical_updates(name: str) -> None:
    first = _trajectory(name, engine_seed=3)
    torch.manual_seed(12345)  # the global RNG must not matter: randomness comes from the engine
    torch.randn(7)
    second = _trajectory(name, engine_seed=3)
    _assert_same(first, second, name)


@pytest.mark.parametrize("name", METHODS)
def test_a_step_leaves_the_global_rng_untouched(name: str) -> None:
    """Randomness is drawn from ``StepInfo.generator`` only (dropout and shuffling stay as is)."""
    tasks = make_tasks(3)
    runner = Runner(name, tasks)
    for step in range(3):
        x, y = make_batch(tasks, seed=step)
        before = torch.get_rng_state()
        runner.step(x, y, step, epoch=step)
        assert torch.equal(before, torch.get_rng_state()), f"{name} drew from the global RNG"


@pytest.mark.parametrize("name", ["rlw", "graddrop"])
def test_random_methods_depend_on_the_engine_seed(name: str) -> None:
    a = _trajectory(name, engine_seed=0, steps=2)
    b = _trajectory(name, engine_seed=1, steps=2)
    assert not torch.equal(a[0].weights, b[0].weights)


# --------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("name", METHODS)
def test_state_round_trips_through_a_weights_only_checkpoint(name: str) -> None:
    tasks = make_tasks(3)
    original = Runner(name, tasks)
    for step in range(3):
        x, y = make_batch(tasks, seed=step, absent=("t1",) if step == 1 else ())
        original.step(x, y, step, epoch=step)
    buffer = io.BytesIO()
    torch.save(
        {"model": original.model.state_dict(), "balancer": original.balancer.state_dict()}, buffer
    )
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    restored = Runner(name, tasks, seed=99)  # other initial values: everything must come from state
    restored.model.load_state_dict(state["model"])
    restored.balancer.load_state_dict(state["balancer"])  # strict: no missing or unexpected key
    assert restored.balancer.hyperparameters() == original.balancer.hyperparameters()
    for step in range(3, 5):
        x, y = make_batch(tasks, seed=step, absent=("t0",) if step == 4 else ())
        _assert_same(
            [original.step(x, y, step, epoch=step)], [restored.step(x, y, step, epoch=step)], name
        )


# --------------------------------------------------------------------------------- hyper-parameters
def _constructor_parameters(name: str) -> dict[str, inspect.Parameter]:
    cls = get_balancer_class(name)
    params = dict(inspect.signature(cls.__init__).parameters)
    params.pop("self")
    params.pop("task_names")
    return params


def _invalid_values(parameter: inspect.Parameter) -> list[Any]:
    """Values no hyper-parameter of this kind may accept, inferred from its default."""
    default = parameter.default
    if isinstance(default, bool):
        return ["yes", 1.5]
    if isinstance(default, (int, float)):
        return [float("nan"), float("inf"), "abc", None]
    if isinstance(default, str):
        return ["no-such-choice", 3]
    if isinstance(default, tuple):
        return [(0.5,), ("a", "b")]
    if default is None:
        annotation = str(parameter.annotation)
        if "Mapping" in annotation or "dict" in annotation:
            return [{"no_such_task": 1.0}, {"t0": float("nan")}]
        return ["abc", float("nan")]
    raise AssertionError(f"no invalid value known for {parameter}")


HYPERPARAMETER_CASES = [
    (name, param) for name in METHODS for param in _constructor_parameters(name)
]

#: Out-of-range values (the generic cases above cover types, NaN and infinity).
OUT_OF_RANGE: dict[str, dict[str, list[Any]]] = {
    "aligned_mtl": {"scale_mode": ["max"]},
    "cagrad": {"c": [-0.1]},
    "db_mtl": {"beta": [1.0, -0.1], "beta_sigma": [-1.0], "eps": [0.0]},
    "dwa": {"temperature": [0.0, -1.0]},
    "excess_mtl": {"robust_step_size": [0.0]},
    "fairgrad": {"alpha": [-1.0], "max_iters": [0], "residual_tol": [0.0]},
    "famo": {"lr": [0.0], "weight_decay": [-1.0], "eps": [0.0], "betas": [(1.0, 0.9)]},
    "go4align": {"num_groups": [0, 1.5], "robust_step_size": [-1.0]},
    "gradnorm": {"alpha": [-0.5], "lr": [0.0]},
    "gradvac": {"beta": [1.5, -0.1], "eps": [-1.0]},
    "mgda": {"epsilon": [0.0], "max_iters": [0], "normalization": ["l1"]},
    "mgda_ub": {"epsilon": [-1.0], "max_iters": [0]},
    "moco": {"beta": [0.0, 1.1], "gamma": [0.0], "rho": [-1.0]},
    "nash_mtl": {"max_norm": [-1.0], "update_weights_every": [0], "optim_niter": [0]},
    "rlw": {"normalization": ["sum"]},
    "sdmgrad": {"lambda_": [-1.0], "lr": [0.0], "momentum": [1.0], "n_iter": [0]},
    "static": {"weights": [{"t0": -1.0}, {"t0": float("inf")}]},
    "stch": {"mu": [0.0], "warmup_epochs": [-1]},
}


@pytest.mark.parametrize(("name", "parameter"), HYPERPARAMETER_CASES)
def test_invalid_hyperparameter_is_refused_with_a_clear_error(name: str, parameter: str) -> None:
    spec = _constructor_parameters(name)[parameter]
    values = _invalid_values(spec) + OUT_OF_RANGE.get(name, {}).get(parameter, [])
    for value in values:
        with pytest.raises(BalancerError) as err:
            create_balancer(name, ["t0", "t1"], **{parameter: value})
        message = str(err.value)
        assert name in message, f"{name}({parameter}={value!r}): {message}"
        # the error names the offending parameter (or, inside a mapping, the offending key)
        keys = list(value) if isinstance(value, dict) else []
        assert parameter in message or any(repr(k) in message for k in keys), message


def test_every_method_with_hyperparameters_is_covered_by_the_range_table() -> None:
    """A method that takes hyper-parameters has at least one out-of-range case above."""
    with_params = {n for n in METHODS if _constructor_parameters(n)}
    uncovered = (
        with_params - set(OUT_OF_RANGE) - {"uncertainty", "imtl_l"}
    )  # any finite init is valid
    assert not uncovered, uncovered
    for name, table in OUT_OF_RANGE.items():
        assert set(table) <= set(_constructor_parameters(name)), name


def test_unknown_hyperparameter_is_refused() -> None:
    with pytest.raises(BalancerError, match="mgda"):
        create_balancer("mgda", ["a", "b"], no_such_setting=1)


@pytest.mark.parametrize("name", METHODS)
def test_hyperparameters_report_every_setting_and_rebuild_the_method(name: str) -> None:
    balancer = make_balancer(name, ["t0", "t1"])
    reported = balancer.hyperparameters()
    assert set(reported) == set(_constructor_parameters(name))
    rebuilt = create_balancer(name, ["t0", "t1"], **reported)
    assert rebuilt.hyperparameters() == reported


def test_duplicate_or_no_task_names_are_refused() -> None:
    for name in METHODS:
        with pytest.raises(BalancerError, match="duplicate"):
            create_balancer(name, ["a", "a"])
        with pytest.raises(BalancerError, match="at least one task"):
            create_balancer(name, [])


# --------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("name", METHODS)
def test_engine_accepts_exactly_the_modes_a_method_can_use(name: str, mode: str) -> None:
    tasks = make_tasks(2)
    model = make_model(tasks)
    balancer = make_balancer(name, [t.name for t in tasks])
    need = balancer.needs.gradients
    if mode in MODES_FOR_NEED[need]:
        GradientEngine(model, tasks, balancer, mode=mode)  # type: ignore[arg-type]
        return
    with pytest.raises(EngineError) as err:
        GradientEngine(model, tasks, balancer, mode=mode)  # type: ignore[arg-type]
    message = str(err.value)
    assert type(balancer).__name__ in message
    if need == "none":
        # a loss-only method with representation gradients: says it never reads them
        assert "loss values only" in message and "mode='jacobian'" in message
    else:
        # a method that needs J itself with a Gramian-only engine
        assert "not only their Gramian" in message and "mode='jacobian'" in message


@pytest.mark.parametrize("name", [n for n in METHODS if available()[n].gradients != "none"])
def test_representation_mode_is_refused_for_a_model_without_a_shared_representation(
    name: str,
) -> None:
    tasks = make_tasks(2)
    model = make_model(tasks, kind="cross_stitch")
    assert not model.supports_representation_grad
    balancer = make_balancer(name, [t.name for t in tasks])
    with pytest.raises(EngineError, match="no single shared representation"):
        GradientEngine(model, tasks, balancer, mode="representation")


def test_unknown_engine_mode_and_mismatched_tasks_are_refused() -> None:
    tasks = make_tasks(2)
    model = make_model(tasks)
    with pytest.raises(EngineError, match="unknown engine mode"):
        GradientEngine(model, tasks, make_balancer("mgda", ["t0", "t1"]), mode="hessian")  # type: ignore[arg-type]
    with pytest.raises(EngineError, match="balancer tasks"):
        GradientEngine(model, tasks, make_balancer("mgda", ["t1", "t0"]))
