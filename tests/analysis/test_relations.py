"""The relationship recorder: its numbers against direct computations, TAG's lookahead against a
hand computation, the first-order approximation, no effect on training, missing labels, the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from polytask.analysis.relations import (
    RelationRecorder,
    RelationsError,
    cosine_matrix,
    read_relations,
    record_relations,
)
from polytask.balancing import GradientEngine, create_balancer
from polytask.balancing.engine import sample_losses
from polytask.config import RelationsConfig
from polytask.data.base import MultiTaskData, random_split
from polytask.models import create_model, create_trunk
from polytask.models.base import HardSharing
from polytask.tasks import Task
from polytask.training import TrainSettings, fit

pytestmark = pytest.mark.usefixtures("single_thread")


def tasks3() -> list[Task]:
    return [Task("a", "binary"), Task("b", "binary"), Task("c", "regression")]


def batch(seed: int, n: int = 16, missing_b: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = {
        "a": (x[:, 0] > 0).float(),
        "b": (x[:, 0] - x[:, 1] > 0).float(),
        "c": x[:, 2] + 0.1 * torch.randn(n, generator=g),
    }
    if missing_b:
        y["b"][:] = float("nan")
    return x, y


def mlp_model(tasks: list[Task], dropout: float = 0.0) -> HardSharing:
    torch.manual_seed(0)
    trunk = create_trunk("mlp", in_features=5, hidden=[8, 6], dropout=dropout)
    model = create_model("hard_sharing", trunk, tasks)
    assert isinstance(model, HardSharing)
    return model


def recorder(
    model: HardSharing, tmp_path: Path, lr: float = 0.1, **config: object
) -> RelationRecorder:
    tasks = model.tasks
    engine = GradientEngine(model, tasks, create_balancer("equal", [t.name for t in tasks]))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return RelationRecorder(
        engine, optimizer, RelationsConfig.model_validate(config), tmp_path,
        device=torch.device("cpu"),
    )


def direct_parameter_gradients(model: HardSharing, x: Tensor, y: dict[str, Tensor]) -> Tensor:
    """Each task's gradient of the shared parameters, one plain backward per task."""
    per_sample, _ = sample_losses(model.tasks, model(x), y)
    losses = per_sample.sum(dim=0)
    shared = model.shared_parameters()
    rows = []
    for i in range(len(model.tasks)):
        grads = torch.autograd.grad(losses[i], shared, retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


@pytest.mark.parametrize("space", ["parameters", "representation"])
def test_cosine_and_conflicts_equal_a_direct_computation(tmp_path: Path, space: str) -> None:
    model = mlp_model(tasks3())
    rec = recorder(model, tmp_path, every=1, lookahead=False, gradients=space)
    cosines = []
    for step in range(4):
        x, y = batch(step)
        rec.observe((x, y), step, 0)
        if space == "parameters":
            rows = direct_parameter_gradients(model, x, y)
        else:
            rep = model.encode(x)
            per_sample, _ = sample_losses(model.tasks, model.decode(rep, x), y)
            rows = torch.stack([
                torch.autograd.grad(per_sample.sum(0)[i], rep, retain_graph=True)[0].flatten()
                for i in range(3)
            ])
        r = rows.double()
        cosines.append((r @ r.T / torch.outer(r.norm(dim=1), r.norm(dim=1))).numpy())
    rec.end_epoch(0)
    rel = read_relations(tmp_path)
    _, cos = rel.affinity("grad_cosine")
    _, conflict = rel.affinity("conflict_frequency")
    expected = np.stack(cosines)
    np.testing.assert_allclose(cos, expected.mean(axis=0), atol=1e-6)
    np.testing.assert_array_equal(conflict, (expected < 0).mean(axis=0))
    assert rel.measures["grad_cosine"].space == space
    assert rel.counts["steps_recorded"] == 4


def test_cosine_matrix_leaves_a_vanished_gradient_out() -> None:
    cos = cosine_matrix(torch.tensor([[1.0, 0.0], [0.0, 0.0], [-2.0, 0.0]])).numpy()
    assert cos[0, 2] == -1.0 and np.isnan(cos[0, 1]) and np.isnan(cos[1, 1])


class Linear2(nn.Module):
    """A trunk ``x -> W x + b`` (3 -> 2) for the hand computation."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x)


def test_exact_lookahead_equals_a_hand_computation(tmp_path: Path) -> None:
    tasks = [Task("u", "regression"), Task("v", "regression")]
    torch.manual_seed(3)
    model = HardSharing(Linear2(), tasks, out_features=2)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = {"u": torch.randn(6, generator=g, dtype=torch.float64),
         "v": torch.randn(6, generator=g, dtype=torch.float64)}
    lr = 0.05
    rec = recorder(model, tmp_path, lr=lr, every=1, lookahead_every=1)
    rec.observe((x.float(), {k: v.float() for k, v in y.items()}), 0, 0)
    rec.end_epoch(0)
    _, exact = read_relations(tmp_path).affinity("lookahead_affinity")

    # by hand, in float64: L_j(W, b) = mean((h_j·(W x + b) + c_j - y_j)²)
    w, b = model.trunk.lin.weight.detach().double(), model.trunk.lin.bias.detach().double()
    heads = {t: (model.heads[t].weight.detach().double()[0], model.heads[t].bias.detach().double()[0])
             for t in ("u", "v")}

    def loss(t: str, w: Tensor, b: Tensor) -> Tensor:
        h, c = heads[t]
        return (((x @ w.T + b) @ h + c - y[t]) ** 2).mean()

    def grad(t: str) -> tuple[Tensor, Tensor]:
        h, c = heads[t]
        r = 2 * ((x @ w.T + b) @ h + c - y[t]) / len(x)  # dL/d(prediction)
        return torch.outer(h, r @ x), h * r.sum()         # dL/dW, dL/db

    hand = np.zeros((2, 2))
    for i, ti in enumerate(("u", "v")):
        gw, gb = grad(ti)
        for j, tj in enumerate(("u", "v")):
            hand[i, j] = 1 - float(loss(tj, w - lr * gw, b - lr * gb) / loss(tj, w, b))
    np.testing.assert_allclose(exact, hand, rtol=2e-3, atol=1e-6)
    assert hand[0, 0] > 0 and hand[1, 1] > 0  # a step on a task's own loss lowers it


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), lr=st.sampled_from([1e-4, 3e-4, 1e-3]))
def test_first_order_is_close_to_exact_for_small_lr(seed: int, lr: float) -> None:
    import tempfile

    model = mlp_model(tasks3())
    with tempfile.TemporaryDirectory() as tmp:
        rec = recorder(model, Path(tmp), lr=lr, every=1, lookahead_every=1)
        rec.observe(batch(seed, n=32), 0, 0)
        rec.end_epoch(0)
        rel = read_relations(tmp)
    _, exact = rel.affinity("lookahead_affinity")
    _, first = rel.affinity("lookahead_affinity_first_order")
    scale = np.abs(first).max()
    assert scale > 0
    # the gap is second order in lr: at these step sizes a few percent of the largest entry
    assert np.abs(exact - first).max() <= 0.05 * scale + 2e-6


def tiny_splits(n: int = 120, missing: bool = False) -> object:
    x, y = batch(7, n=n)
    if missing:
        y["b"][: n // 2] = float("nan")
    return random_split(MultiTaskData(x, y, tasks3()), seed=0)


def train(relations: dict[str, object] | None, run_dir: Path, **fit_options: object) -> list[Tensor]:
    """Two epochs of a trunk with batch norm and dropout; its parameters and buffers after."""
    splits = tiny_splits()
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3))
    model = HardSharing(trunk, tasks3(), out_features=8)
    s = TrainSettings(
        epochs=2, batch_size=16, lr=1e-2, progress=False, tensorboard=False, relations=relations,
    )
    balancer = create_balancer("equal", ["a", "b", "c"])
    fit(model, splits, balancer, s, run_dir, **fit_options)  # type: ignore[arg-type]
    return [t.detach().clone() for t in [*model.parameters(), *model.buffers()]]


def test_recording_does_not_change_training(tmp_path: Path) -> None:
    """Dropout (random state) and batch norm (running statistics) included: bit-identical."""
    plain = train(None, tmp_path / "off")
    recorded = train({"every": 1, "lookahead_every": 2}, tmp_path / "on")
    assert all(torch.equal(a, b) for a, b in zip(plain, recorded, strict=True))
    assert not (tmp_path / "off" / "relations.json").exists()
    counts = read_relations(tmp_path / "on").counts
    assert counts["steps_recorded"] == 12 and counts["lookahead_steps"] == 6  # 6 steps x 2 epochs


def test_resume_continues_the_file_exactly(tmp_path: Path) -> None:
    rel = {"every": 2, "lookahead_every": 2}
    train(rel, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        train(rel, tmp_path / "cut", stop_after_epoch=0)
    assert len(read_relations(tmp_path / "cut").epochs) == 1
    train(rel, tmp_path / "cut", resume=True)
    whole = json.loads((tmp_path / "whole" / "relations.json").read_text())
    cut = json.loads((tmp_path / "cut" / "relations.json").read_text())
    assert cut == whole


def test_a_task_without_labels_is_skipped_and_counted(tmp_path: Path) -> None:
    model = mlp_model(tasks3())
    rec = recorder(model, tmp_path, every=1, lookahead_every=1)
    rec.observe(batch(0, missing_b=True), 0, 0)
    rec.observe(batch(1), 1, 0)
    rec.observe(batch(2, missing_b=True), 2, 0)
    rec.end_epoch(0)
    raw = json.loads((tmp_path / "relations.json").read_text())
    assert raw["counts"]["skipped_missing"] == {"a": 0, "b": 2, "c": 0}
    rel = read_relations(tmp_path)
    cos = rel.measures["grad_cosine"].per_epoch[0]
    assert np.isfinite(cos[0, 2])  # a ~ c: three records
    # a ~ b only from the one batch where b is labelled: its value is that batch's alone
    model_b = mlp_model(tasks3())
    rec_b = recorder(model_b, tmp_path / "one", every=1, lookahead_every=1)
    rec_b.observe(batch(1), 0, 0)
    rec_b.end_epoch(0)
    one = read_relations(tmp_path / "one").measures["grad_cosine"].per_epoch[0]
    assert cos[0, 1] == pytest.approx(one[0, 1], abs=1e-12)
    assert rel.measures["lookahead_affinity"].records == [3]


def test_all_missing_pair_reads_as_no_evidence(tmp_path: Path) -> None:
    model = mlp_model(tasks3())
    rec = recorder(model, tmp_path, every=1, lookahead=False)
    rec.observe(batch(0, missing_b=True), 0, 0)
    rec.end_epoch(0)
    raw = json.loads((tmp_path / "relations.json").read_text())
    assert raw["measures"]["grad_cosine"]["per_epoch"][0][0][1] is None
    _, cos = read_relations(tmp_path).affinity("grad_cosine")
    assert np.isnan(cos[0, 1]) and np.isfinite(cos[0, 2])
    assert "lookahead_affinity" not in raw["measures"]


def test_refusals_and_reader_errors(tmp_path: Path) -> None:
    model = mlp_model(tasks3())
    engine = GradientEngine(model, model.tasks, create_balancer("upgrad", ["a", "b", "c"]), mode="gramian")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RelationsError, match="engine: gramian"):
        record_relations(engine, opt, RelationsConfig(), tmp_path, device=torch.device("cpu"))
    single = mlp_model([Task("a", "binary")])
    eng1 = GradientEngine(single, single.tasks, create_balancer("equal", ["a"]))
    hook = record_relations(eng1, opt, RelationsConfig(), tmp_path, device=torch.device("cpu"))
    assert type(hook).__name__ == "NoRelations"
    with pytest.raises(RelationsError, match=r"relations: \{every: 10\}.*polytask analyze"):
        read_relations(tmp_path / "nowhere")
    rec = recorder(mlp_model(tasks3()), tmp_path, every=1, lookahead=False)
    rec.observe(batch(0), 0, 0)
    rec.end_epoch(0)
    with pytest.raises(RelationsError, match="'lookahead_affinity' was not recorded"):
        read_relations(tmp_path).affinity("lookahead_affinity")
    raw = json.loads((tmp_path / "relations.json").read_text())
    raw["version"] = 99
    (tmp_path / "relations.json").write_text(json.dumps(raw))
    with pytest.raises(RelationsError, match="version 99"):
        read_relations(tmp_path)


def test_config_key_is_off_by_default_and_validated() -> None:
    """Off: absent from dumps, so config hashes (cached baselines, suite cells) do not change."""
    from polytask.config import ConfigError, TrainingConfig, parse_config

    assert "relations" not in TrainingConfig().model_dump(mode="json")
    assert TrainingConfig(relations=False).relations is None
    on = TrainingConfig(relations=True).relations
    assert on is not None and (on.every, on.lookahead) == (10, True)
    assert (on.lookahead_period(2), on.lookahead_period(12)) == (80, 480)  # max(every, 40·T)
    assert RelationsConfig(every=200).lookahead_period(3) == 200  # never more often than every
    with pytest.raises(ConfigError, match=r"training\.relations\.evry: unknown key"):
        parse_config({"data": {"dataset": "census"}, "training": {"relations": {"evry": 5}}})
    with pytest.raises(ConfigError, match=r"training\.relations\.every"):
        parse_config({"data": {"dataset": "census"}, "training": {"relations": {"every": 0}}})


def test_a_model_without_one_shared_representation_uses_parameter_gradients(
    tmp_path: Path,
) -> None:
    """Cross-stitch: tasks exchange features inside the trunk, so no representation to use."""
    torch.manual_seed(0)
    model = create_model(
        "cross_stitch", create_trunk("mlp", in_features=5, hidden=[8, 6]), tasks3(),
        example_input=batch(0)[0],
    )
    assert not model.supports_representation_grad
    rec = recorder(model, tmp_path, every=1, lookahead_every=1)  # type: ignore[arg-type]
    x, y = batch(4)
    rec.observe((x, y), 0, 0)
    rec.end_epoch(0)
    rel = read_relations(tmp_path)
    assert rel.measures["grad_cosine"].space == "parameters"
    r = direct_parameter_gradients(model, x, y).double()  # type: ignore[arg-type]
    expected = (r @ r.T / torch.outer(r.norm(dim=1), r.norm(dim=1))).numpy()
    np.testing.assert_allclose(rel.affinity("grad_cosine")[1], expected, atol=1e-6)
    with pytest.raises(RelationsError, match="no single shared representation"):
        recorder(model, tmp_path, gradients="representation")  # type: ignore[arg-type]
