"""Tasks: masked losses, metrics on labelled rows only, and named label errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from polytask.tasks import LabelError, Task


def test_masked_binary_loss_ignores_missing_rows() -> None:
    task = Task("tox", "binary")
    out = torch.tensor([[2.0], [-1.0], [5.0]], requires_grad=True)
    y = torch.tensor([1.0, float("nan"), 0.0])
    loss, count = task.loss_and_count(out, y)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([2.0, 5.0]), torch.tensor([1.0, 0.0])
    )
    assert count == 2
    assert torch.allclose(loss, expected)
    loss.backward()
    assert out.grad is not None and out.grad[1].item() == 0.0 and torch.isfinite(out.grad).all()


def test_task_without_labels_contributes_exact_zero_and_no_nan() -> None:
    for task, y in [
        (Task("a", "binary"), torch.full((4,), float("nan"))),
        (Task("b", "multiclass", num_classes=3), torch.full((4,), -1)),
        (Task("c", "regression"), torch.full((4,), float("nan"))),
    ]:
        out = torch.randn(4, task.output_dim, requires_grad=True)
        loss, count = task.loss_and_count(out, y)
        assert count == 0 and loss.item() == 0.0 and not math.isnan(loss.item())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(0, 4)), min_size=1, max_size=30))
def test_multiclass_loss_equals_cross_entropy_on_labelled_rows(labels: list[int | None]) -> None:
    task = Task("digit", "multiclass", num_classes=5)
    y = torch.tensor([-1 if v is None else v for v in labels])
    out = torch.randn(len(labels), 5)
    loss, count = task.loss_and_count(out, y)
    keep = y != -1
    assert count == int(keep.sum())
    if count:
        assert torch.allclose(loss, torch.nn.functional.cross_entropy(out[keep], y[keep]))
    else:
        assert loss.item() == 0.0


def test_metrics_use_labelled_samples_only() -> None:
    task = Task("t", "binary")
    metrics = task.make_metrics()
    out = torch.tensor([[3.0], [-3.0], [3.0], [-3.0]])
    # the two unlabelled rows would be wrong predictions if they were counted
    y = torch.tensor([1.0, 0.0, float("nan"), float("nan")])
    fed = task.update_metrics(metrics, out, y)
    values = metrics.compute()
    assert fed == 2
    assert values["accuracy"].item() == 1.0 and values["auroc"].item() == 1.0


def test_regression_is_standardized_for_the_loss_and_reported_in_units() -> None:
    task = Task("y", "regression").fit_target_scaler(torch.tensor([10.0, 20.0, float("nan")]))
    assert task.target_mean_ == pytest.approx(15.0)
    out = torch.zeros(2, 1)
    assert torch.allclose(task.predict(out), torch.tensor([15.0, 15.0]))


@pytest.mark.parametrize(
    ("task", "y", "message"),
    [
        (Task("d", "multiclass", num_classes=3), torch.tensor([0, 3]), "out of range"),
        (Task("d", "multiclass", num_classes=3), torch.tensor([0.0, float("nan")]), "ignore_index"),
        (Task("b", "binary"), torch.tensor([0.0, 2.0]), "must be 0 or 1"),
        (Task("r", "regression"), torch.tensor([1.0, float("inf")]), "infinite label at row 1"),
        (Task("r", "regression"), torch.zeros(3, 2), "expected 1"),
    ],
)
def test_bad_labels_raise_naming_the_task(task: Task, y: torch.Tensor, message: str) -> None:
    with pytest.raises(LabelError, match=message) as err:
        task.validate_targets(y, "train")
    assert repr(task.name) in str(err.value)


def test_bad_task_definitions_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        Task("x", "ordinal")
    with pytest.raises(ValueError, match="num_classes"):
        Task("x", "multiclass")
    with pytest.raises(ValueError, match="primary metric"):
        Task("x", "binary", primary_metric="mae")
    with pytest.raises(ValueError, match=r"'E1-PBE0\.1' contains '\.'.*'E1-PBE0_1'"):
        Task("E1-PBE0.1", "regression")


def test_metrics_never_synchronise_across_processes() -> None:
    # Every rank evaluates the whole split and rank 0 alone trains the single-task baselines under
    # torchrun: a hidden all-gather in compute() would double-count rows or deadlock.
    for kind in ("binary", "multiclass", "regression"):
        task = Task("t", kind, num_classes=3) if kind == "multiclass" else Task("t", kind)
        for metric in task.make_metrics().values():
            assert metric.sync_on_compute is False and metric._to_sync is False
