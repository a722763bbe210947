"""MMoE, CGC, PLE, DSelect-k, Cross-stitch and MTAN on three trunks and every engine mode.

Every architecture is built on the MLP (tables), the SmallCNN (1x28x28 images) and a user-defined
staged trunk on 1-D signals ``[B, 2, 16]`` (Conv1d + GroupNorm: a shape and a layer type the
built-ins never produce). Each must give the right output shapes, pass ``check_ownership``, train
on a fixed batch with a loss-based balancer (Jacobian mode) and a Gramian weighting (UPGrad) in the
Jacobian, Gramian and (where supported) representation modes, and refuse the representation mode
with ``EngineError`` where it is not supported.

Two exactness checks tie the modes together: with the same fixed task weights, the Gramian mode
(torchjd autogram over ``shared_modules()``) and, where supported, the representation mode must
produce the same parameter gradients as the Jacobian mode. The first proves the architectures
satisfy autogram's conditions (per-sample shared modules, no parent using a child's parameters);
the second proves ``encode`` holds every shared parameter and ``decode`` only task parameters.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torchjd.aggregation import UPGradWeighting

from polytask.balancing import (
    Balancer,
    Combination,
    EngineError,
    GradientEngine,
    Needs,
    StepInfo,
    create_balancer,
    scatter_present,
)
from polytask.models import MLP, SmallCNN, StagedTrunk, create_model
from polytask.models.cross_stitch import CrossStitch
from polytask.models.dselect_k import DSelectGate, DSelectK, smooth_step
from polytask.models.mmoe import MMoE
from polytask.models.mtan import match_shape
from polytask.models.ple import CGC, PLE
from polytask.tasks import Task

ARCHS = ["mmoe", "cgc", "ple", "dselect_k", "cross_stitch", "mtan"]
MIXTURES = {"mmoe", "cgc", "ple", "dselect_k"}
REPRESENTATION = {"mmoe": True, "cgc": True, "ple": False, "dselect_k": True,
                  "cross_stitch": False, "mtan": True}  # fmt: skip
TASKS = [
    Task("a", "multiclass", num_classes=4),
    Task("b", "binary"),
    Task("c", "regression", standardize=False),
]
BATCH = 12


# Tiny tensors: one intra-op thread is faster, and immune to a busy machine.
pytestmark = pytest.mark.usefixtures("single_thread")


class UserConv1d(StagedTrunk):
    """A user's trunk on 2-channel signals of length 16, following the stage contract."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            [
                nn.Sequential(nn.Conv1d(2, 6, 3, padding=1), nn.GroupNorm(2, 6), nn.Tanh()),
                nn.Sequential(nn.Conv1d(6, 8, 3, stride=2), nn.ReLU()),
                nn.Sequential(nn.Flatten(), nn.Linear(8 * 7, 10), nn.ReLU()),
            ]
        )
        self.stage_widths = [6, 8, 10]
        self.out_features = 10


def make_trunk(kind: str) -> tuple[nn.Module, Tensor]:
    g = torch.Generator().manual_seed(1)
    if kind == "mlp":
        return MLP(12, (16, 8)), torch.randn(BATCH, 12, generator=g)
    if kind == "cnn":
        return SmallCNN(channels=(4, 6), out_features=12), torch.rand(BATCH, 1, 28, 28, generator=g)
    return UserConv1d(), torch.randn(BATCH, 2, 16, generator=g)


def make_targets() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(2)
    y = {
        "a": torch.randint(0, 4, (BATCH,), generator=g),
        "b": torch.randint(0, 2, (BATCH,), generator=g).float(),
        "c": torch.randn(BATCH, generator=g),
    }
    y["a"][:3] = -1  # missing labels of every kind
    y["b"][3:5] = float("nan")
    y["c"][-2:] = float("nan")
    return y


def build(arch: str, kind: str, seed: int = 0) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(seed)
    trunk, x = make_trunk(kind)
    options = {"num_experts": 3} if arch in ("mmoe", "dselect_k") else {}
    model = create_model(arch, trunk, TASKS, example_input=x if kind == "user" else None, **options)
    return model, x


def total_loss(model: nn.Module, x: Tensor, y: dict[str, Tensor]) -> float:
    with torch.no_grad():
        out = model(x)
        return float(sum(t.loss_and_count(out[t.name], y[t.name])[0] for t in TASKS))


class UPGrad(Balancer):
    """Test-local Gramian weighting (torchjd's UPGrad weights), as /tmp/smoke.py does."""

    family = "gradient"
    needs = Needs(gradients="gramian")
    reference = "Quinton & Rey 2024, Jacobian Descent for Multi-Objective Optimization"

    def __init__(self, names: list[str]) -> None:
        super().__init__(names)
        self.weighting = UPGradWeighting()

    def combine(self, step: StepInfo) -> Combination:
        assert step.gramian is not None
        return Combination(weights=scatter_present(self.weighting(step.gramian), step.present))


class Fixed(Balancer):
    """Constant task weights behind a Gramian need: the update must not depend on the mode."""

    family = "gradient"
    needs = Needs(gradients="gramian")
    reference = "test"

    def combine(self, step: StepInfo) -> Combination:
        w = torch.tensor([1.0, 0.5, 2.0], dtype=step.losses.dtype)
        return Combination(weights=torch.where(step.present, w, torch.zeros_like(w)))


def make_balancer(name: str) -> Balancer:
    names = [t.name for t in TASKS]
    return create_balancer("equal", names) if name == "equal" else UPGrad(names)


def grads(model: nn.Module) -> dict[str, Tensor]:
    return {
        n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in model.named_parameters()
    }


# ---------------------------------------------------------------------------- building
@pytest.mark.parametrize("kind", ["mlp", "cnn", "user"])
@pytest.mark.parametrize("arch", ARCHS)
def test_builds_with_shapes_ownership_and_gates(arch: str, kind: str) -> None:
    model, x = build(arch, kind)
    model.check_ownership()
    assert model.supports_representation_grad is REPRESENTATION[arch]
    assert model.shared_parameters() and all(model.task_parameters(t.name) for t in TASKS)
    out = model(x)
    assert set(out) == {"a", "b", "c"}
    assert out["a"].shape == (BATCH, 4) and out["b"].shape == (BATCH, 1)
    assert out["c"].shape == (BATCH, 1)
    rep = model.encode(x)
    assert rep.ndim == 2 and rep.shape[0] == BATCH
    again = model.decode(rep, x)
    for t in TASKS:
        torch.testing.assert_close(again[t.name], out[t.name])
    gates = model.gate_weights()
    if arch in MIXTURES:
        assert gates is not None and set(gates) == {"a", "b", "c"}
        for g in gates.values():
            assert g.ndim == 1 and len(g) == len(model.expert_names())
            assert not g.requires_grad and (g >= 0).all()
            torch.testing.assert_close(g.sum(), torch.tensor(1.0))
    else:
        assert gates is None


@pytest.mark.parametrize("arch", ARCHS)
def test_template_trunk_is_copied_not_trained_in_place(arch: str) -> None:
    trunk = MLP(12, (16, 8))
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    model = create_model(arch, trunk, TASKS)
    assert not {id(p) for p in trunk.parameters()} & {id(p) for p in model.parameters()}
    for k, v in trunk.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_experts_are_copies_first_exact_others_reinitialised() -> None:
    trunk = MLP(12, (16, 8))
    model = MMoE(trunk, TASKS, num_experts=3)
    w = [e.stages[0][0].weight for e in model.experts]
    torch.testing.assert_close(w[0], trunk.stages[0][0].weight)
    assert not torch.allclose(w[1], w[0]) and not torch.allclose(w[2], w[1])
    same = MMoE(trunk, TASKS, num_experts=2, reinit_experts=False)
    torch.testing.assert_close(same.experts[1].stages[0][0].weight, trunk.stages[0][0].weight)


def test_gate_input_default_and_choices() -> None:
    mlp = MMoE(MLP(12, (16, 8)), TASKS)
    assert mlp.gate_features is None and mlp.gate_width == 12  # tables: the input itself
    cnn = MMoE(SmallCNN(channels=(4, 6), out_features=12), TASKS)
    assert cnn.gate_features is not None and cnn.gate_width == 4  # pooled first stage, not 784
    assert cnn.encode(torch.rand(3, 1, 28, 28)).shape == (3, 4 * 12 + 4)
    deeper = MMoE(SmallCNN(channels=(4, 6), out_features=12), TASKS, gate_stages=2)
    assert deeper.gate_width == 6
    raw = MMoE(SmallCNN(channels=(4, 6), out_features=12), TASKS, gate_input="input")
    assert raw.gate_features is None and raw.gate_width == 784
    custom = MMoE(MLP(12, (16, 8)), TASKS, gate_input=nn.Linear(12, 5))
    assert custom.gate_width == 5 and custom.gate_features is not None
    with pytest.raises(ValueError, match="gate_input"):
        MMoE(MLP(12, (16, 8)), TASKS, gate_input="pixels")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gate_stages"):
        MMoE(SmallCNN(), TASKS, gate_stages=4)


def test_non_staged_user_module() -> None:
    """Mixtures of whole copies take any module; the stage-wise architectures explain the refusal."""
    x = torch.randn(5, 3, 4)
    trunk = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU())
    for arch in ("mmoe", "cgc", "dselect_k"):
        model = create_model(arch, trunk, TASKS, example_input=x)
        assert model(x)["a"].shape == (5, 4)
    for arch in ("ple", "cross_stitch", "mtan"):
        with pytest.raises(TypeError, match="stages"):
            create_model(arch, trunk, TASKS, example_input=x)
    with pytest.raises(ValueError, match="example_input"):
        create_model("mmoe", trunk, TASKS)


def test_trunk_breaking_the_stage_contract_is_refused() -> None:
    class Scaled(UserConv1d):  # rescales between stages: running the stages alone differs
        def forward_features(self, x: Tensor) -> list[Tensor]:
            feats = []
            for stage in self.stages:
                x = stage(x) * 2
                feats.append(x)
            return feats

    class Partial(UserConv1d):  # reports fewer outputs than stages
        def forward_features(self, x: Tensor) -> list[Tensor]:
            return super().forward_features(x)[:2]

    x = torch.randn(3, 2, 16)
    with pytest.raises(TypeError, match="does not reproduce forward_features"):
        create_model("cross_stitch", Scaled(), TASKS, example_input=x)
    with pytest.raises(TypeError, match="returned 2 outputs for 3 stages"):
        create_model("mtan", Partial(), TASKS, example_input=x)


def test_ple_levels_follow_the_trunk_stages() -> None:
    cnn = SmallCNN(channels=(4, 6), out_features=12)
    model = PLE(cnn, TASKS, num_levels=2)
    assert model.stages_per_level == [2, 1]
    three = PLE(cnn, TASKS, num_levels=3, num_task_experts=2)
    assert three.stages_per_level == [1, 1, 1] and len(three.shared_gates) == 2
    assert three.expert_names() == ["shared0", "shared1", "a0", "a1", "b0", "b1", "c0", "c1"]
    out = three(torch.rand(4, 1, 28, 28))
    assert out["a"].shape == (4, 4)
    gates = three.gate_weights()
    assert gates is not None
    # task "a" sees the shared experts and its own, never another task's
    assert gates["a"][4:].abs().sum() == 0 and gates["a"][:4].sum() > 0.99
    custom = PLE(cnn, TASKS, num_levels=2, stages_per_level=[1, 2])
    assert custom(torch.rand(2, 1, 28, 28))["b"].shape == (2, 1)
    with pytest.raises(ValueError, match="stages_per_level"):
        PLE(cnn, TASKS, num_levels=2, stages_per_level=[1, 1])
    with pytest.raises(ValueError, match="at least as many"):
        PLE(MLP(12, (16,)), TASKS, num_levels=2)
    assert isinstance(create_model("cgc", cnn, TASKS), CGC)


def test_cross_stitch_units_start_near_identity() -> None:
    model = CrossStitch(MLP(12, (16, 8)), TASKS)
    mats = model.mixing_matrices()
    assert len(mats) == 2
    for m in mats:
        torch.testing.assert_close(m.diagonal(), torch.full((3,), 0.9))
        torch.testing.assert_close(m.sum(dim=1), torch.ones(3))
    # columns start as exact copies of the trunk (the paper initialises them from one network)
    a, b = model.columns["a"][0][0].weight, model.columns["b"][0][0].weight
    torch.testing.assert_close(a, b)


def test_dselect_k_gate() -> None:
    gamma = 2.0
    t = torch.tensor([-5.0, -1.0, 0.0, 0.5, 1.0, 7.0])
    torch.testing.assert_close(smooth_step(t, gamma), torch.tensor([0.0, 0.0, 0.5, 0.84375, 1, 1]))
    gate = DSelectGate(in_features=4, num_experts=3, k=2, gamma=1.0)  # 3 experts: 2 bits, folded
    weights, probs = gate(torch.randn(6, 4))
    assert weights.shape == (6, 3) and probs.shape == (6, 2, 4)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(6))
    # saturated selectors pick exactly one code each: at most k experts are active
    with torch.no_grad():
        gate.selectors.weight.zero_()
        gate.selectors.bias.copy_(torch.tensor([5.0, -5.0, -5.0, -5.0]))  # codes 1 and 0
    weights, probs = gate(torch.randn(6, 4))
    assert ((probs == 0) | (probs == 1)).all()
    assert (weights[:, 2] == 0).all() and (weights[:, :2] > 0).all()
    model = DSelectK(MLP(12, (16, 8)), TASKS, num_experts=3, entropy_reg=0.1)
    assert float(model.auxiliary_loss()) == 0.0
    model(torch.randn(5, 12))
    aux = model.auxiliary_loss()
    assert aux.requires_grad and float(aux.detach()) > 0


def test_mtan_shape_matching() -> None:
    img = torch.randn(2, 3, 8, 8)
    assert match_shape(torch.randn(2, 5, 16, 16), img).shape == (2, 5, 8, 8)
    assert match_shape(torch.randn(2, 5), img).shape == (2, 5, 8, 8)
    assert match_shape(torch.randn(2, 5, 4, 4), torch.randn(2, 7)).shape == (2, 5)
    assert match_shape(torch.randn(2, 5, 9), img).shape == (2, 5, 8, 8)


# ---------------------------------------------------------------------------- training
@pytest.mark.parametrize("kind", ["mlp", "cnn", "user"])
@pytest.mark.parametrize("arch", ARCHS)
def test_trains_with_every_balancer_family_and_mode(arch: str, kind: str) -> None:
    y = make_targets()
    runs = [("equal", "jacobian"), ("upgrad", "jacobian"), ("upgrad", "gramian")]
    if REPRESENTATION[arch]:
        runs.append(("upgrad", "representation"))
    for balancer_name, mode in runs:
        model, x = build(arch, kind)
        engine = GradientEngine(model, TASKS, make_balancer(balancer_name), mode=mode)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        before = total_loss(model, x, y)
        for step in range(4):
            optimizer.zero_grad()
            engine.backward(x, y, step, 0)
            optimizer.step()
        after = total_loss(model, x, y)
        assert after < before, f"{arch}/{kind}: {balancer_name} in {mode} mode: {before} -> {after}"
    if not REPRESENTATION[arch]:
        model, _ = build(arch, kind)
        with pytest.raises(EngineError, match="representation"):
            GradientEngine(model, TASKS, make_balancer("upgrad"), mode="representation")


@pytest.mark.parametrize("kind", ["mlp", "cnn", "user"])
@pytest.mark.parametrize("arch", ARCHS)
def test_gramian_and_representation_modes_match_jacobian_mode(arch: str, kind: str) -> None:
    y = make_targets()
    names = [t.name for t in TASKS]
    modes = ["jacobian", "gramian"] + (["representation"] if REPRESENTATION[arch] else [])
    results = {}
    for mode in modes:
        model, x = build(arch, kind)
        GradientEngine(model, TASKS, Fixed(names), mode=mode).backward(x, y, 0, 0)
        results[mode] = grads(model)
    for mode in modes[1:]:
        for name, g in results["jacobian"].items():
            torch.testing.assert_close(
                results[mode][name], g, rtol=1e-4, atol=1e-6, msg=f"{mode}: {name}"
            )
