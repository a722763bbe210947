"""The training step: one ``train_step``, strategies chosen from declarations, settings derived
from the config, and the fp16 loss-scaling rule (what is differentiated is scaled, what the
balancer reads is not), which is checked here on CPU in float32 since it is independent of the
dtype. The mixed-precision runs themselves: bf16 on CPU, and fp16 / bf16 on CUDA (skipped, with
the reason, without a CUDA device).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from polytask.balancing import GradientEngine, StepInfo, create_balancer
from polytask.balancing.strategies import choose_strategy
from polytask.balancing.strategies._gramian import GramianStrategy
from polytask.balancing.strategies._jacobian import JacobianStrategy
from polytask.balancing.strategies._loss import LossStrategy
from polytask.balancing.strategies._representation import RepresentationStrategy
from polytask.balancing.strategies._representation_gramian import RepresentationGramianStrategy
from polytask.collectives import Collectives, Communicator
from polytask.config import TrainingConfig
from polytask.data.base import MultiTaskData, Splits, random_split
from polytask.models import create_model, create_trunk
from polytask.models.base import MultiTaskModel
from polytask.tasks import Task
from polytask.training import TrainSettings, fit, load_checkpoint
from polytask.training.precision import Precision, PrecisionError
from polytask.training.step import train_step

IN_FEATURES, N = 6, 24

pytestmark = pytest.mark.usefixtures("single_thread")


def make_tasks() -> list[Task]:
    """Alike tasks (two regressions, two binaries: batched side by side) and a multiclass one."""
    return [
        Task("r1", "regression", standardize=False),
        Task("b1", "binary"),
        Task("r2", "regression", standardize=False),
        Task("cls", "multiclass", num_classes=3),
        Task("b2", "binary"),
    ]


def make_batch(seed: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, IN_FEATURES, generator=g)
    y = {
        "r1": torch.randn(N, generator=g),
        "b1": torch.randint(0, 2, (N,), generator=g).float(),
        "r2": torch.randn(N, generator=g),
        "cls": torch.randint(0, 3, (N,), generator=g),
        "b2": torch.randint(0, 2, (N,), generator=g).float(),
    }
    y["r1"][:5] = float("nan")
    y["b2"][3:9] = float("nan")
    y["cls"][::4] = -1
    return x, y


def make_model(tasks: list[Task], kind: str = "hard_sharing") -> MultiTaskModel:
    torch.manual_seed(0)
    trunk = create_trunk("mlp", in_features=IN_FEATURES, hidden=(10, 8))
    if kind == "hard_sharing":
        return create_model(kind, trunk, tasks)
    return create_model(kind, trunk, tasks, example_input=torch.zeros(2, IN_FEATURES))


def grads(model: MultiTaskModel) -> dict[str, Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# --------------------------------------------------------------------------------- settings
def test_train_settings_are_the_training_config_plus_the_run_fields() -> None:
    """Why: TrainSettings used to repeat every TrainingConfig field by hand, and the two drifted."""
    config_fields = TrainingConfig.model_fields
    settings_fields = TrainSettings.model_fields
    assert set(settings_fields) - set(config_fields) == {"seed", "checkpoint_every", "extra"}
    for name, info in config_fields.items():
        assert settings_fields[name].default == info.default, name
        assert settings_fields[name].annotation == info.annotation, name
    config = TrainingConfig(epochs=3, lr=0.01, amp="bf16", engine="gramian")
    settings = config.settings(seed=4, balancer="mgda")
    assert isinstance(settings, TrainSettings)
    assert {k: getattr(settings, k) for k in config_fields} == dict(config)
    assert (settings.seed, settings.extra) == (4, {"balancer": "mgda"})


def test_train_settings_validate_like_the_config() -> None:
    with pytest.raises(ValueError, match="epochs"):
        TrainSettings(epochs=0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        TrainSettings(checkpoint_every=0)
    with pytest.raises(ValueError, match="amp"):
        TrainSettings(amp="fp8")  # type: ignore[arg-type]
    assert TrainSettings(amp=True).amp is True  # true still means bf16
    assert "lr (default: 0.001): learning rate" in (TrainSettings.__doc__ or "")


# --------------------------------------------------------------------------------- strategies
@pytest.mark.parametrize(
    ("balancer", "mode", "kind", "expected", "forward"),
    [
        ("equal", "jacobian", "hard_sharing", LossStrategy, "whole"),
        ("uncertainty", "gramian", "cross_stitch", LossStrategy, "whole"),
        ("mgda", "jacobian", "hard_sharing", JacobianStrategy, "split"),
        ("pcgrad", "jacobian", "cross_stitch", JacobianStrategy, "whole"),
        ("mgda", "gramian", "hard_sharing", GramianStrategy, "split"),
        ("mgda", "gramian", "cross_stitch", GramianStrategy, "whole"),
        ("pcgrad", "representation", "hard_sharing", RepresentationStrategy, "detached"),
        ("mgda_ub", "jacobian", "hard_sharing", RepresentationGramianStrategy, "split"),
        ("mgda_ub", "representation", "hard_sharing", RepresentationGramianStrategy, "detached"),
    ],
)
def test_the_strategy_follows_from_needs_mode_and_model(
    balancer: str, mode: str, kind: str, expected: type, forward: str
) -> None:
    tasks = make_tasks()
    model = make_model(tasks, kind)
    needs = create_balancer(balancer, [t.name for t in tasks]).needs
    strategy = choose_strategy(needs, mode, model)
    assert isinstance(strategy, expected)
    assert strategy.forward == forward


# --------------------------------------------------------------------------------- fp16 scaling
CASES = [
    ("equal", "jacobian"),
    ("uncertainty", "jacobian"),
    ("mgda", "jacobian"),
    ("pcgrad", "jacobian"),
    ("mgda", "gramian"),
    ("pcgrad", "representation"),
    ("mgda", "representation"),
    ("mgda_ub", "jacobian"),
    ("mgda_ub", "representation"),
]


@pytest.mark.parametrize(("balancer", "mode"), CASES)
@pytest.mark.parametrize("kind", ["hard_sharing", "cross_stitch"])
def test_loss_scaling_scales_the_update_and_never_what_the_balancer_reads(
    balancer: str, mode: str, kind: str
) -> None:
    """Why: fp16 needs the losses scaled before the backward, but most balancers are not
    scale-invariant: they must read the same Jacobian, Gramian and losses as without scaling, and
    the update must be exactly the scale times the unscaled one (the scale is a power of two)."""
    tasks = make_tasks()
    if kind == "cross_stitch" and (mode == "representation" or balancer == "mgda_ub"):
        pytest.skip("refused for a model without one shared representation")
    x, y = make_batch(1)
    scale = torch.tensor(2.0**12)
    seen: dict[float | None, list[StepInfo]] = {}
    results = {}
    for s in (None, scale):
        model = make_model(tasks, kind)
        bal = create_balancer(balancer, [t.name for t in tasks])
        engine = GradientEngine(model, tasks, bal, mode=mode)  # type: ignore[arg-type]
        infos = seen.setdefault(None if s is None else float(s), [])
        inner = bal.combine

        def recording(info: StepInfo, inner: Any = inner, infos: list[StepInfo] = infos) -> Any:
            infos.append(info)
            return inner(info)

        bal.combine = recording  # type: ignore[method-assign]
        losses = engine.losses(engine.forward(x), y, 0, 0)
        assert losses is not None
        engine.reduce_gradients(losses, engine.gradients(losses, s))
        results[s is None] = (grads(model), {n: p.grad for n, p in bal.named_parameters()})
    plain, scaled = seen[None][0], seen[float(scale)][0]
    assert torch.equal(plain.losses, scaled.losses)
    for field in ("jacobian", "gramian"):
        a, b = getattr(plain, field), getattr(scaled, field)
        assert (a is None) == (b is None), field
        if a is not None:
            assert torch.equal(a, b), field
    (g_plain, bal_plain), (g_scaled, bal_scaled) = results[True], results[False]
    assert g_plain.keys() == g_scaled.keys()
    for name, g in g_plain.items():
        torch.testing.assert_close(g_scaled[name] / scale, g, rtol=1e-6, atol=0.0, msg=name)
    for name, g in bal_plain.items():
        if g is not None:
            torch.testing.assert_close(bal_scaled[name] / scale, g, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize(
    ("balancer", "mode"),
    [("mgda", "jacobian"), ("mgda", "gramian"), ("pcgrad", "representation"), ("mgda_ub", "jacobian")],
)
@pytest.mark.parametrize("kind", ["hard_sharing", "cross_stitch"])
def test_an_fp16_overflow_skips_the_balancer_and_leaves_the_update_to_the_scaler(
    balancer: str, mode: str, kind: str
) -> None:
    """Why: the grad scaler expects inf gradients now and then and skips those updates, but a
    balancer handed an infinite Jacobian or Gramian would fail (or return garbage) first."""
    if kind == "cross_stitch" and (mode == "representation" or balancer == "mgda_ub"):
        pytest.skip("refused for a model without one shared representation")
    tasks = make_tasks()
    x, y = make_batch(2)
    y = {k: v * 1e4 if k.startswith("r") else v for k, v in y.items()}  # large gradients
    model = make_model(tasks, kind)
    bal = create_balancer(balancer, [t.name for t in tasks])
    engine = GradientEngine(model, tasks, bal, mode=mode)  # type: ignore[arg-type]
    calls: list[StepInfo] = []
    bal.combine = calls.append  # type: ignore[assignment]
    losses = engine.losses(engine.forward(x), y, 0, 0)
    assert losses is not None
    applied = engine.gradients(losses, torch.tensor(2.0**127))  # overflows float32
    out = engine.reduce_gradients(losses, applied)
    assert calls == [] and applied.scaled
    assert all(torch.isnan(p.grad).all() for p in model.shared_parameters())  # type: ignore[arg-type]
    assert torch.equal(out.weights, torch.zeros(len(tasks)))


# --------------------------------------------------------------------------------- train_step
def test_train_step_skips_a_batch_without_labels_and_touches_nothing() -> None:
    tasks = make_tasks()
    x, y = make_batch()
    y = {k: torch.full_like(v, -1 if k == "cls" else float("nan")) for k, v in y.items()}
    model = make_model(tasks)
    bal = create_balancer("famo", [t.name for t in tasks])
    engine = GradientEngine(model, tasks, bal)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    precision = Precision.of(False, torch.device("cpu"))
    out = train_step(engine, optimizer, (x, y), 0, 0, device=torch.device("cpu"), precision=precision)
    assert out is None
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_a_skipped_update_skips_the_balancers_after_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """An update the fp16 scaler skipped did not happen: FAMO must not learn from it."""
    tasks = make_tasks()
    x, y = make_batch()
    model = make_model(tasks)
    bal = create_balancer("famo", [t.name for t in tasks])
    engine = GradientEngine(model, tasks, bal)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    precision = Precision.of(False, torch.device("cpu"))
    calls: list[int] = []
    monkeypatch.setattr(engine, "after_step", lambda x, y: calls.append(1))
    monkeypatch.setattr(precision, "step", lambda optimizer: False)
    checked: list[Any] = []
    out = train_step(
        engine, optimizer, (x, y), 0, 0, device=torch.device("cpu"), precision=precision,
        check=checked.append,
    )  # fmt: skip
    assert out is not None and out.skipped and checked == [out] and calls == []


# --------------------------------------------------------------------------------- mixed precision
def image_splits(n: int = 160) -> Splits:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = {
        "left": (x[:, 0, :, :14].mean(dim=(1, 2)) > 0).long() + (x[:, 0, 0, 0] > 0).long(),
        "bright": x.mean(dim=(1, 2, 3)) * 10,
    }
    y["bright"][::6] = float("nan")
    tasks = [Task("left", "multiclass", num_classes=3), Task("bright", "regression")]
    return random_split(MultiTaskData(x, y, tasks), seed=0)


def conv_model(splits: Splits) -> MultiTaskModel:
    torch.manual_seed(0)
    trunk = create_trunk("small_cnn", in_channels=1)
    return create_model(
        "hard_sharing", trunk, splits.tasks, example_input=splits.train.example(2)
    )


@pytest.mark.parametrize(("balancer", "engine"), [("equal", "jacobian"), ("mgda", "gramian")])
def test_bf16_on_cpu_trains_a_conv_model(tmp_path: Path, balancer: str, engine: str) -> None:
    splits = image_splits()
    model = conv_model(splits)
    dtypes: set[torch.dtype] = set()
    model.trunk.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))  # type: ignore[union-attr]
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    settings = TrainSettings(
        epochs=2, batch_size=32, lr=3e-3, amp="bf16", engine=engine, device="cpu",
        progress=False, tensorboard=False,
    )  # fmt: skip
    result = fit(model, splits, create_balancer(balancer, ["left", "bright"]), settings, tmp_path)
    assert torch.bfloat16 in dtypes  # the trunk ran under bf16 autocast while training
    assert all(p.dtype == torch.float32 for p in model.parameters())  # float32 master weights
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in initial.items())
    for task in ("left", "bright"):
        assert torch.isfinite(torch.tensor(result.test[task]["loss"]))


def test_fp16_on_cpu_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(PrecisionError, match=r"fp16 needs a CUDA device.*amp: bf16"):
        Precision.of("fp16", torch.device("cpu"))
    splits = image_splits(40)
    settings = TrainSettings(epochs=1, amp="fp16", device="cpu", progress=False, tensorboard=False)
    with pytest.raises(PrecisionError, match="fp16 needs a CUDA device"):
        fit(conv_model(splits), splits, create_balancer("equal", ["left", "bright"]), settings,
            tmp_path / "run")  # fmt: skip
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_skipped_updates_are_counted_and_announced_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why: an fp16 step the scaler skips must be visible in the run, not silent."""
    splits = image_splits(96)
    original = Precision.step
    calls = {"n": 0}

    def every_other(self: Precision, optimizer: torch.optim.Optimizer) -> bool:
        calls["n"] += 1
        if calls["n"] % 2:
            return False
        return original(self, optimizer)

    monkeypatch.setattr(Precision, "step", every_other)
    settings = TrainSettings(epochs=1, batch_size=16, device="cpu", progress=False, tensorboard=False)
    with pytest.warns(RuntimeWarning, match="skipped by the grad scaler") as record:
        result = fit(conv_model(splits), splits, create_balancer("equal", ["left", "bright"]),
                     settings, tmp_path)  # fmt: skip
    assert sum("grad scaler" in str(w.message) for w in record) == 1
    assert result.warnings["amp/skipped_updates"] == (calls["n"] + 1) // 2


def test_collectives_are_the_identity_in_one_process() -> None:
    c = Collectives(Communicator())
    counts, losses = torch.tensor([2.0, 0.0], dtype=torch.float64), torch.tensor([0.5, 0.0])
    assert c.loss_statistics(counts, losses) == (counts, losses)
    assert c.sum_exact(losses) is losses
    assert not (c.distributed or c.exact or c.cheap)
    assert c.reduce_gradients([]) and c.mismatched_replicas([torch.nn.Linear(2, 2)]) == 0


# --------------------------------------------------------------------------------- CUDA
CUDA = torch.device("cuda")
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (fp16 loss scaling is CUDA-only)"
)


@needs_cuda
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_a_conv_model_trains_under_autocast_on_cuda(tmp_path: Path, amp: str) -> None:
    splits = image_splits()
    model = conv_model(splits)
    dtypes: set[torch.dtype] = set()
    model.trunk.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))  # type: ignore[union-attr]
    settings = TrainSettings(
        epochs=2, batch_size=32, lr=3e-3, amp=amp, device="cuda", progress=False,
        tensorboard=False,
    )  # fmt: skip
    result = fit(model, splits, create_balancer("mgda", ["left", "bright"]), settings, tmp_path)
    assert (torch.float16 if amp == "fp16" else torch.bfloat16) in dtypes
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for task in ("left", "bright"):
        assert torch.isfinite(torch.tensor(result.test[task]["loss"]))
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ("scaler" in state) == (amp == "fp16")  # the loss scale resumes with the run


@needs_cuda
@pytest.mark.parametrize(
    ("balancer", "mode"),
    [("equal", "jacobian"), ("mgda", "jacobian"), ("mgda", "gramian"),
     ("pcgrad", "representation"), ("mgda_ub", "jacobian")],
)  # fmt: skip
def test_every_strategy_steps_under_fp16_with_the_scaler(balancer: str, mode: str) -> None:
    tasks = make_tasks()
    x, y = make_batch()
    model = make_model(tasks).to(CUDA)
    bal = create_balancer(balancer, [t.name for t in tasks]).to(CUDA)
    engine = GradientEngine(model, tasks, bal, mode=mode)  # type: ignore[arg-type]
    optimizer = torch.optim.SGD([*model.parameters(), *bal.parameters()], lr=0.05)
    precision = Precision.of("fp16", CUDA)
    before = [p.detach().clone() for p in model.parameters()]
    x = x.pin_memory()  # the non_blocking copy path
    out = train_step(engine, optimizer, (x, y), 0, 0, device=CUDA, precision=precision)
    assert out is not None and not out.skipped
    assert torch.isfinite(out.losses).all() and torch.isfinite(out.weights).all()
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


@needs_cuda
def test_the_scaler_skips_an_update_with_inf_gradients() -> None:
    layer = torch.nn.Linear(3, 1).to(CUDA)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    precision = Precision.of("fp16", CUDA)
    scale = precision.loss_scale()
    assert scale is not None
    before = layer.weight.detach().clone()
    with precision.autocast():
        loss = layer(torch.ones(2, 3, device=CUDA)).float().sum()
    (loss * scale).backward()
    layer.weight.grad[0, 0] = float("inf")  # type: ignore[index]
    precision.unscale_(optimizer)
    assert precision.step(optimizer) is False
    assert torch.equal(layer.weight, before)
    assert precision.scaler is not None and precision.scaler.get_scale() < float(scale)
