"""Meta-learning: the Reptile / FOMAML update math by hand, and the held-out discipline."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from polytask.lifecycle import meta
from polytask.lifecycle.meta import (
    MetaConfig,
    MetaTask,
    adapt,
    fomaml_gradient,
    heldout_predictions,
    reptile_step,
    run_meta,
    support_query,
    tox21_meta_tasks,
)


def _linear(seed: int, d: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(d, 1).double()


def _mse_grad(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple:
    """Gradient of mean((x w + b - y)^2), written out: 2/n X^T r and 2/n sum r."""
    r = x @ w + b - y
    return 2 * x.T @ r / len(y), 2 * r.mean()


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    alpha=st.floats(0.001, 0.2),
    eps=st.floats(0.05, 1.0),
    n=st.integers(2, 6),
)
def test_reptile_step_matches_hand_computation(seed: int, alpha: float, eps: float, n: int) -> None:
    d = 3
    net = _linear(seed, d)
    gen = torch.Generator().manual_seed(seed)
    tasks = [
        [(torch.randn(n, d, generator=gen, dtype=torch.float64),
          torch.randn(n, generator=gen, dtype=torch.float64)) for _ in range(2)]
        for _ in range(2)
    ]  # fmt: skip
    w0, b0 = net.weight.detach()[0].clone(), net.bias.detach()[0].clone()
    phis = []
    for batches in tasks:  # two SGD steps per task, from θ
        w, b = w0.clone(), b0.clone()
        for x, y in batches:
            gw, gb = _mse_grad(w, b, x, y)
            w, b = w - alpha * gw, b - alpha * gb
        phis.append((w, b))
    mean_w = sum(p[0] for p in phis) / 2
    mean_b = sum(p[1] for p in phis) / 2
    reptile_step(net, tasks, alpha, eps)
    assert torch.allclose(net.weight.detach()[0], w0 + eps * (mean_w - w0), atol=1e-10)
    assert torch.allclose(net.bias.detach()[0], b0 + eps * (mean_b - b0), atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), alpha=st.floats(0.001, 0.2))
def test_fomaml_gradient_is_query_gradient_at_adapted_weights(seed: int, alpha: float) -> None:
    d = 3
    net = _linear(seed, d)
    gen = torch.Generator().manual_seed(seed)
    xs, ys = torch.randn(5, d, generator=gen).double(), torch.randn(5, generator=gen).double()
    xq, yq = torch.randn(4, d, generator=gen).double(), torch.randn(4, generator=gen).double()
    w0, b0 = net.weight.detach()[0].clone(), net.bias.detach()[0].clone()
    gw, gb = _mse_grad(w0, b0, xs, ys)
    w1, b1 = w0 - alpha * gw, b0 - alpha * gb
    qw, qb = _mse_grad(w1, b1, xq, yq)
    grads = fomaml_gradient(net, [(xs, ys)], (xq, yq), alpha)
    assert torch.allclose(grads[0][0], qw, atol=1e-10)
    assert torch.allclose(grads[1][0], qb, atol=1e-10)
    assert torch.equal(net.weight.detach()[0], w0)  # θ itself is not touched


def _toy_tasks(n_tasks: int, rows: int, seed: int) -> list[MetaTask]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_tasks):
        x = torch.randn(rows, 4, generator=gen)
        y = x @ torch.randn(4, generator=gen) + 0.1 * torch.randn(rows, generator=gen)
        out.append(MetaTask(f"t{i}", x, y))
    return out


def test_adaptation_never_reads_query_labels() -> None:
    tasks = _toy_tasks(3, 30, 0)
    poisoned = []
    for i, t in enumerate(tasks):
        _, qry = support_query(t, 5, 10, 7 * 100_003 + i)
        y = t.y.clone()
        y[qry] = float("nan")  # a query label read anywhere in adaptation would poison the weights
        poisoned.append(MetaTask(t.name, t.x, y))
    init = meta.make_net(4, [8])
    clean = heldout_predictions(init, tasks, 5, 10, 20, 0.05, 7, 1.0)
    dirty = heldout_predictions(init, poisoned, 5, 10, 20, 0.05, 7, 1.0)
    for (p_clean, _), (p_dirty, y_dirty) in zip(clean, dirty, strict=True):
        assert torch.isfinite(p_dirty).all()
        assert torch.equal(p_clean, p_dirty)
        assert torch.isnan(y_dirty).all()  # the query targets handed back are the poisoned ones


def test_support_and_query_are_disjoint_and_query_is_shared_across_k() -> None:
    task = _toy_tasks(1, 40, 1)[0]
    s5, q5 = support_query(task, 5, 20, 3)
    s20, q20 = support_query(task, 20, 20, 3)
    assert set(s5.tolist()) <= set(s20.tolist())
    assert not set(s20.tolist()) & set(q20.tolist())
    assert torch.equal(q5, q20)
    with pytest.raises(ValueError, match="too few"):
        support_query(_toy_tasks(1, 21, 1)[0], 5, 20, 0)


def test_adapt_leaves_the_initialisation_unchanged() -> None:
    init = meta.make_net(4, [8])
    before = copy.deepcopy(init.state_dict())
    task = _toy_tasks(1, 10, 2)[0]
    adapted = adapt(init, task.x, task.y, 5, 0.1)
    assert all(torch.equal(before[k], v) for k, v in init.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in adapted.state_dict().items())


def test_choices_do_not_depend_on_heldout_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The adaptation grid is decided on validation tasks: held-out labels set to NaN change the
    held-out scores only, never what was chosen."""
    train, val, test = _toy_tasks(6, 30, 3), _toy_tasks(3, 30, 4), _toy_tasks(3, 30, 5)
    info = {"y_mean": 0.0, "y_std": 1.0}
    config = MetaConfig(
        methods=["scratch", "reptile"], shots=[5], seeds=[0], hidden=[8],
        meta={"iterations": 5, "meta_batch": 2, "inner_steps": 2},
        adapt={"steps": [2, 8], "lr": [0.01, 0.1]},
    )  # fmt: skip

    def runs(held: list[MetaTask], out: Path) -> dict:
        monkeypatch.setattr(meta, "school_meta_tasks", lambda *a, **k: (train, val, held, info))
        run_meta(config, out, log=lambda m: None)
        return json.loads((out / "meta.json").read_text())

    clean = runs(test, tmp_path / "clean")
    held = []  # support rows keep their labels; every query row's label becomes NaN
    for i, t in enumerate(test):
        _, qry = support_query(t, 5, 5, 0 * 100_003 + i)
        y = t.y.clone()
        y[qry] = float("nan")
        held.append(MetaTask(t.name, t.x, y))
    dirty = runs(held, tmp_path / "dirty")
    assert clean["chosen"] == dirty["chosen"]
    assert all(all(v == v for v in r["rmse"]) for r in clean["records"])  # finite when labelled
    assert all(all(v != v for v in r["rmse"]) for r in dirty["records"])  # NaN: labels unknown


# ------------------------------------------------------------------------------ binary tasks (Tox21)
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), alpha=st.floats(0.001, 0.5))
def test_binary_fomaml_gradient_is_the_logistic_query_gradient(seed: int, alpha: float) -> None:
    """Binary tasks adapt on binary cross-entropy: d/dw mean BCE(xw + b, y) = X^T (σ(z) - y) / n."""
    d = 3
    net = _linear(seed, d)
    gen = torch.Generator().manual_seed(seed)
    xs, xq = torch.randn(6, d, generator=gen).double(), torch.randn(4, d, generator=gen).double()
    ys = torch.randint(0, 2, (6,), generator=gen).double()
    yq = torch.randint(0, 2, (4,), generator=gen).double()
    w0, b0 = net.weight.detach()[0].clone(), net.bias.detach()[0].clone()
    r = torch.sigmoid(xs @ w0 + b0) - ys
    w1, b1 = w0 - alpha * xs.T @ r / 6, b0 - alpha * r.mean()
    rq = torch.sigmoid(xq @ w1 + b1) - yq
    grads = fomaml_gradient(net, [(xs, ys)], (xq, yq), alpha, "binary")
    assert torch.allclose(grads[0][0], xq.T @ rq / 4, atol=1e-10)
    assert torch.allclose(grads[1][0], rq.mean(), atol=1e-10)


def _binary_tasks(n_tasks: int, rows: int, seed: int, held_out: bool) -> list[MetaTask]:
    """Logistic tasks on shared rows (ids), a quarter of each held-out task's rows as its query."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 6, generator=gen)
    out = []
    for i in range(n_tasks):
        y = x @ torch.randn(6, generator=gen) + 0.5 * torch.randn(rows, generator=gen) > 0.8
        task = MetaTask(f"b{seed}_{i}", x, y.float(), "binary", ids=torch.arange(rows))
        if held_out:
            task.query_rows = torch.arange(rows - rows // 4, rows)
        out.append(task)
    return out


def test_binary_support_is_balanced_nested_and_never_a_query_row() -> None:
    task = _binary_tasks(1, 200, 0, held_out=True)[0]
    assert task.query_rows is not None
    s4, q4 = support_query(task, 4, 12, 5)
    s12, q12 = support_query(task, 12, 12, 5)
    assert torch.equal(q4, task.query_rows) and torch.equal(q12, task.query_rows)
    assert task.y[s4].sum() == 2 and task.y[s12].sum() == 6  # k/2 positives, k/2 negatives
    assert set(s4.tolist()) <= set(s12.tolist())
    assert not set(s12.tolist()) & set(task.query_rows.tolist())
    few = MetaTask("few", task.x, torch.zeros_like(task.y), "binary",
                   query_rows=task.query_rows)  # fmt: skip
    with pytest.raises(ValueError, match="'few': 0 support rows of class 1"):
        support_query(few, 4, 12, 5)


def test_binary_choices_do_not_depend_on_heldout_query_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tox21 path: NaN query labels of the held-out assays leave every choice (made on validation
    assays) unchanged and turn only their ROC-AUC into NaN; real labels give ROC-AUC in [0, 1]."""
    train = _binary_tasks(4, 120, 1, held_out=False)
    val, test = _binary_tasks(2, 120, 2, held_out=True), _binary_tasks(2, 120, 3, held_out=True)
    info = {"y_mean": 0.0, "y_std": 1.0}
    config = MetaConfig(
        dataset="tox21", methods=["scratch", "fomaml"], shots=[4, 8], seeds=[0],
        hidden=[8], episodes=2, meta={"iterations": 4, "meta_batch": 2, "inner_steps": 2},
        mtl={"epochs": 1, "batch_size": 32}, adapt={"steps": [2, 6], "lr": [0.05, 0.5]},
    )  # fmt: skip

    def runs(held: list[MetaTask], out: Path) -> dict:
        monkeypatch.setattr(meta, "tox21_meta_tasks", lambda *a, **k: (train, val, held, info))
        run_meta(config, out, log=lambda m: None)
        return json.loads((out / "meta.json").read_text())

    clean = runs(test, tmp_path / "clean")
    poisoned = []
    for t in test:
        y = t.y.clone()
        y[t.query_rows] = float("nan")
        poisoned.append(MetaTask(t.name, t.x, y, "binary", t.query_rows, t.ids))
    dirty = runs(poisoned, tmp_path / "dirty")
    assert clean["chosen"] == dirty["chosen"]
    assert all("val_auroc" in c for c in clean["chosen"])
    assert all(0 <= v <= 1 for r in clean["records"] for v in r["auroc"])
    assert all(v != v for r in dirty["records"] for v in r["auroc"])  # NaN: labels unknown
    assert {r["method"] for r in clean["summary"]} == {"scratch", "fomaml"}


def test_tox21_assays_and_molecules_are_split_without_leaks(data_dir: Path) -> None:
    """A slice of the real Tox21 file: the assays split 7 / 2 / 3, no query molecule in any
    meta-training assay, every held-out assay's query rows exactly its labelled query molecules."""
    train, val, test, info = tox21_meta_tasks(
        0, 0.17, 0.25, str(data_dir), heldout_molecules=0.3, max_rows=600
    )
    assert (len(train), len(val), len(test)) == (7, 2, 3)
    names = [t.name for t in train + val + test]
    assert len(set(names)) == 12 and info["test_tasks"] == sorted(t.name for t in test)
    query_ids: set[int] = set()
    for t in val + test:
        assert t.query_rows is not None and t.ids is not None
        assert not torch.isnan(t.y).any() and set(t.y.unique().tolist()) <= {0.0, 1.0}
        query_ids |= set(t.ids[t.query_rows].tolist())
    for t in train:
        assert t.query_rows is None and t.ids is not None and not torch.isnan(t.y).any()
        assert not set(t.ids.tolist()) & query_ids
    assert 0.25 * 600 < info["query_molecules"] < 0.35 * 600


def test_tox21_end_to_end_on_a_slice(tmp_path: Path, data_dir: Path) -> None:
    config = MetaConfig(
        dataset="tox21", methods=["scratch", "mtl", "reptile"], shots=[4], seeds=[0],
        hidden=[16], episodes=1, val_fraction=0.17, test_fraction=0.25, heldout_molecules=0.3,
        max_rows=1500, meta={"iterations": 3, "meta_batch": 2, "inner_steps": 2},
        mtl={"epochs": 1, "batch_size": 256}, adapt={"steps": [3], "lr": [0.1]},
    )  # fmt: skip
    result = run_meta(config, tmp_path, data_path=str(data_dir), log=lambda m: None)
    assert result.binary and len(result.per_task()) == 3 * 3  # 3 methods x 3 held-out assays
    assert all(0 <= r["auroc"] <= 1 for r in result.per_task())
    assert "held-out ROC-AUC" in (tmp_path / "meta.md").read_text()


def test_meta_config_refuses_odd_shots_for_balanced_support() -> None:
    with pytest.raises(ValueError, match="every k must be even"):
        MetaConfig(dataset="tox21", shots=[5, 10])
    with pytest.raises(ValueError, match="max_rows applies to dataset 'tox21' only"):
        MetaConfig(dataset="school", max_rows=100)
