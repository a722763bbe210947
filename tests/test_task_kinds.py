"""Pluggable task kinds: the registry, a user's own kind, and the dense and token kinds' numbers.

Why exact values: the dense losses are sums over labelled pixels with a per-pixel count, and the
gradient engine divides one by the other; a loss that averaged per sample, or counted an ignored
pixel, would still train but would weight images by how many pixels they label. Hand-made tensors
with known answers (log 2, log 3, 45 degrees) pin the convention down.
"""

from __future__ import annotations

import copy
import math
import pickle
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics.regression import MeanAbsoluteError
from typer.testing import CliRunner

from polytask.data.base import DataError, MultiTaskData, Splits
from polytask.data.batch import BatchError, MultiTaskCollate
from polytask.evaluation.metrics import evaluate
from polytask.losses import batched_sample_losses
from polytask.models import MLP, HardSharing
from polytask.models.features import FeatureSpec
from polytask.models.heads import DenseDecoder, HeadError, TokenHead, make_task_head
from polytask.task_kinds import (
    LAYOUTS,
    KindSpec,
    LabelError,
    MetricFactory,
    TaskKind,
    describe_task_kinds,
    get_task_kind,
    register_task_kind,
    task_kind_names,
    unregister_task_kind,
)
from polytask.task_kinds.metrics import AngleWithin
from polytask.tasks import Task
from polytask.training.divergence import chance_loss

NAN = float("nan")
BUILT_IN = [
    "binary", "multiclass", "multilabel", "regression", "custom", "segmentation", "depth",
    "normals", "token_classification", "text_classification",
]


def _example(kind: str) -> Task:
    if kind == "custom":
        return Task(
            "t", "custom", out_dim=2, head=lambda d: nn.Linear(d, 2),
            loss=lambda o, y: (o - y) ** 2, metrics={"mae": MeanAbsoluteError},
        )
    needs_classes = {"multiclass", "multilabel", "segmentation", "token_classification",
                     "text_classification"}
    return Task("t", kind, num_classes=4 if kind in needs_classes else None)


# ---------------------------------------------------------------------- the registry
def test_every_built_in_kind_is_registered_and_listed_consistently() -> None:
    assert task_kind_names()[: len(BUILT_IN)] == BUILT_IN
    lines = describe_task_kinds()
    for name in BUILT_IN:
        spec = get_task_kind(name)
        assert spec.name == name and spec.layout in LAYOUTS
        assert lines[name].startswith(f"[{spec.layout}]") and "loss:" in lines[name]
        if name == "custom":
            continue
        task = _example(name)
        # what the listing shows is what a task of the kind computes
        assert tuple(task.metric_factories()) == spec.metric_names
        assert task.primary == (spec.primary or spec.metric_names[0])
        assert task.primary_higher_is_better is spec.primary_higher_is_better
        assert f"{task.primary} (primary" in lines[name]


def test_cli_lists_every_kind_with_layout_loss_and_metrics() -> None:
    from polytask.cli import app

    result = CliRunner().invoke(app, ["list", "tasks"])
    assert result.exit_code == 0, result.output
    for name in BUILT_IN:
        assert f"  {name} " in result.output
    assert "[dense] semantic segmentation" in result.output
    assert "miou (primary, higher is better)" in result.output
    assert "mean_angle (primary, lower is better)" in result.output


def test_kind_names_are_interned_strings_that_survive_pickling() -> None:
    task = Task("seg", "segmentation", num_classes=3)
    assert task.kind is TaskKind.SEGMENTATION and task.kind == "segmentation"
    assert task.kind.value == "segmentation" and task.layout == "dense"
    assert pickle.loads(pickle.dumps(task)).kind is TaskKind.SEGMENTATION
    assert copy.deepcopy(task).kind is TaskKind.SEGMENTATION
    assert TaskKind("depth") is TaskKind.DEPTH and TaskKind(TaskKind.DEPTH) is TaskKind.DEPTH
    assert [k.value for k in TaskKind][: len(BUILT_IN)] == BUILT_IN
    with pytest.raises(ValueError, match="not a registered task kind"):
        TaskKind("ordinal")


def test_registry_refuses_what_it_cannot_keep() -> None:
    with pytest.raises(ValueError, match="built in and cannot be replaced"):
        register_task_kind("depth", get_task_kind("regression"), replace=True)
    with pytest.raises(ValueError, match="cannot be removed"):
        unregister_task_kind("binary")
    with pytest.raises(ValueError, match="must start with a letter"):
        register_task_kind("2d", KindSpec())
    with pytest.raises(TypeError, match="expected a KindSpec"):
        register_task_kind("thing", object())  # type: ignore[arg-type]

    class Volumetric(KindSpec):
        layout = "voxel"

    with pytest.raises(ValueError, match="layout must be one of"):
        register_task_kind("volumetric", Volumetric)
    with pytest.raises(KeyError):
        unregister_task_kind("never_registered")


def test_kind_options_are_checked_and_round_trip_through_the_config() -> None:
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['zero_missing'\]"):
        Task("d", "depth", options={"zero_missing": True})
    with pytest.raises(ValueError, match="ignore_index 3 is one of the classes"):
        Task("s", "segmentation", num_classes=5, ignore_index=3)
    with pytest.raises(ValueError, match="needs num_classes"):
        Task("s", "segmentation")
    task = Task("d", "depth", options={"zero_is_missing": False})
    assert Task(**task.to_config()).options == {"zero_is_missing": False}  # type: ignore[arg-type]
    assert "options" not in Task("r", "regression").to_config()  # old configs hash as before


# ---------------------------------------------------------------------- a user's own kind
class PoissonCount(KindSpec):
    """Counts with a log-rate output: what a user might register for visit or event counts."""

    layout = "sample"
    description = "event counts (Poisson)"
    target = "float [B] of counts >= 0; NaN = missing"
    loss_text = "Poisson negative log-likelihood of a log-rate"
    metric_names = ("mae",)
    primary_higher_is_better = False

    def elementwise_loss(self, task: Task, output: Tensor, target: Tensor) -> Tensor:
        return F.poisson_nll_loss(output, target, log_input=True, full=False, reduction="none")

    def validate_targets(self, task: Task, target: Tensor, where: str = "") -> None:
        super().validate_targets(task, target, where)
        labelled = target[self.label_mask(task, target)]
        if (labelled < 0).any() or (labelled != labelled.round()).any():
            raise LabelError(f"task {task.name!r}: counts are whole numbers >= 0")

    def predict(self, task: Task, output: Tensor) -> Tensor:
        return output.exp().reshape(output.shape[0], -1).squeeze(-1)

    def metric_factories(self, task: Task) -> dict[str, MetricFactory]:
        return {"mae": MeanAbsoluteError}


@pytest.fixture
def poisson_kind() -> Iterator[TaskKind]:
    kind = register_task_kind("poisson_count", PoissonCount)
    try:
        yield kind
    finally:
        unregister_task_kind("poisson_count")


def test_a_user_registered_kind_works_everywhere_a_built_in_does(poisson_kind: TaskKind) -> None:
    task = Task("visits", "poisson_count")
    assert task.kind is poisson_kind and task.layout == "sample" and task.output_dim == 1
    assert isinstance(make_task_head(task, FeatureSpec("vector", 4)), nn.Linear)
    # loss: exp(o) - y * o on labelled rows; the NaN row adds an exact zero
    out = torch.tensor([[0.0], [math.log(2.0)], [0.0]])
    per, count = task.sample_losses(out, torch.tensor([1.0, 2.0, NAN]))
    assert count == 2
    assert torch.allclose(per, torch.tensor([1.0, 2.0 - 2.0 * math.log(2.0), 0.0]))
    with pytest.raises(LabelError, match="whole numbers"):
        task.validate_targets(torch.tensor([1.5, 2.0]))
    assert task.primary == "mae" and task.primary_higher_is_better is False
    assert "poisson_count" in describe_task_kinds()
    with pytest.raises(ValueError, match="already registered"):
        register_task_kind("poisson_count", PoissonCount)
    assert register_task_kind("poisson_count", PoissonCount(), replace=True) is poisson_kind

    # evaluation streams it like any kind: counts predicted exactly give MAE 0
    torch.manual_seed(0)
    x = torch.randn(12, 3)
    y = torch.tensor([0.0, 1.0, 2.0, NAN] * 3)
    data = MultiTaskData(x, {"visits": y}, [task], name="counts").validate()
    model = HardSharing(MLP(3, hidden=[4]), [task])
    metrics, _ = evaluate(model, [task], data, batch_size=5)
    assert metrics["visits"]["labelled"] == 9.0 and math.isfinite(metrics["visits"]["mae"])

    from polytask.cli import app

    listed = CliRunner().invoke(app, ["list", "tasks"]).output
    assert "poisson_count" in listed and "mae (primary, lower is better)" in listed


# ---------------------------------------------------------------------- segmentation
def _seg_case(ignore: int) -> tuple[Tensor, Tensor]:
    """Logits [2, 3, 1, 3] and targets [2, 1, 3] with known cross-entropies (log 2, 3, 4)."""
    z, l2 = [0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0]
    pixels = [[z, l2, z], [l2, z, z]]  # per sample, per pixel: the 3 logits
    out = torch.tensor(pixels).permute(0, 2, 1).reshape(2, 3, 1, 3)
    target = torch.tensor([[[1, 0, ignore]], [[2, ignore, ignore]]])
    return out, target


@pytest.mark.parametrize("ignore", [-1, 255])
def test_segmentation_loss_sums_labelled_pixels_and_counts_them(ignore: int) -> None:
    task = Task("seg", "segmentation", num_classes=3, ignore_index=ignore)
    out, target = _seg_case(ignore)
    per, count = task.sample_losses(out, target)
    # sample 0: zeros -> class 1: log 3; [log 2, 0, 0] -> class 0: log 2. sample 1: log 4.
    assert count == 3
    assert torch.allclose(per, torch.tensor([math.log(3.0) + math.log(2.0), math.log(4.0)]))
    mean, _ = task.loss_and_count(out, target)
    assert torch.allclose(mean, F.cross_entropy(out, target, ignore_index=ignore))
    assert task.missing_marker == float(ignore) and task.target_dtype == torch.long
    assert chance_loss(task) == pytest.approx(math.log(3.0))


def test_segmentation_metrics_match_a_hand_count_and_skip_ignored_pixels() -> None:
    task = Task("seg", "segmentation", num_classes=3)
    truth = torch.tensor([[[0, 0, 1, 1, 2, -1]]])
    predicted = torch.tensor([0, 1, 1, 1, 0, 2])  # the ignored pixel says 2: must not count
    out = F.one_hot(predicted, 3).float().T.reshape(1, 3, 1, 6)
    metrics = task.make_metrics()
    assert task.update_metrics(metrics, out, truth) == 5
    scores = {k: float(v) for k, v in metrics.compute().items()}
    # IoU: class 0: 1 / (1 + 1 fn + 1 fp) = 1/3; class 1: 2 / 3; class 2: 0 / 1 -> mean 1/3
    assert scores["miou"] == pytest.approx(1 / 3)
    assert scores["pixel_accuracy"] == pytest.approx(3 / 5)
    assert torch.equal(task.predict(out), predicted.reshape(1, 1, 6))


def test_segmentation_label_errors_name_the_class_and_the_pixel() -> None:
    task = Task("seg", "segmentation", num_classes=11, ignore_index=255)
    good = torch.zeros(2, 2, 3, dtype=torch.long)
    task.validate_targets(good)
    bad = good.clone()
    bad[1, 0, 2] = 12
    with pytest.raises(LabelError, match=r"class 12 at sample 1, pixel \(y=0, x=2\).*ignore_index 255"):
        task.validate_targets(bad, "train")
    with pytest.raises(LabelError, match="not NaN"):
        task.validate_targets(torch.full((1, 2, 2), NAN))
    with pytest.raises(LabelError, match=r"\[B, H, W\]"):
        task.validate_targets(good.unsqueeze(1))
    data = MultiTaskData(torch.zeros(2, 1, 2, 3), {"seg": bad}, [task], name="scenes")
    with pytest.raises(DataError, match=r"scenes/val.*class 12"):
        data.validate("val")


def test_a_dense_output_of_another_size_is_refused_naming_both_shapes() -> None:
    task = Task("seg", "segmentation", num_classes=11)
    with pytest.raises(LabelError, match=r"'seg'.*\[1, 11, 4, 4\].*5x5"):
        task.sample_losses(torch.zeros(1, 11, 4, 4), torch.zeros(1, 5, 5, dtype=torch.long))
    depth = Task("depth", "depth")
    with pytest.raises(LabelError, match=r"'depth'.*\[2, 1, 6, 6\]"):
        depth.sample_losses(torch.zeros(2, 1, 6, 6), torch.ones(2, 1, 8, 8))


# ---------------------------------------------------------------------- depth
DEPTH_OUT = torch.tensor([[[[1.5, 9.0], [9.0, 1.0]]], [[[2.0, 5.0], [7.0, 7.0]]]])
DEPTH_Y = torch.tensor([[[1.0, NAN], [0.0, 2.0]], [[3.0, 0.0], [NAN, NAN]]])


def test_depth_is_l1_over_valid_pixels_with_nan_and_zero_missing() -> None:
    task = Task("depth", "depth")
    per, count = task.sample_losses(DEPTH_OUT, DEPTH_Y)  # [B, H, W] targets
    assert count == 3 and torch.allclose(per, torch.tensor([0.5 + 1.0, 1.0]))
    per4, count4 = task.sample_losses(DEPTH_OUT, DEPTH_Y.unsqueeze(1))  # [B, 1, H, W] alike
    assert count4 == 3 and torch.equal(per4, per)
    zero_valid = Task("depth", "depth", options={"zero_is_missing": False})
    per, count = zero_valid.sample_losses(DEPTH_OUT, DEPTH_Y)
    assert count == 5 and torch.allclose(per, torch.tensor([1.5 + 9.0, 1.0 + 5.0]))
    out = DEPTH_OUT.clone().requires_grad_(True)
    task.loss_and_count(out, DEPTH_Y)[0].backward()
    assert out.grad is not None and torch.isfinite(out.grad).all()
    assert out.grad[0, 0, 0, 1] == 0.0 and out.grad[0, 0, 1, 0] == 0.0  # NaN and 0 pixels


def test_depth_metrics_are_absolute_and_relative_error_over_valid_pixels() -> None:
    task = Task("depth", "depth")
    metrics = task.make_metrics()
    assert task.update_metrics(metrics, DEPTH_OUT, DEPTH_Y) == 3
    scores = {k: float(v) for k, v in metrics.compute().items()}
    assert scores["abs_error"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert scores["rel_error"] == pytest.approx((0.5 / 1 + 1.0 / 2 + 1.0 / 3) / 3)
    assert task.primary == "abs_error" and task.primary_higher_is_better is False
    assert torch.equal(task.predict(DEPTH_OUT), DEPTH_OUT[:, 0])


def test_nan_depth_is_missing_but_infinite_or_negative_depth_is_an_error() -> None:
    task = Task("depth", "depth")
    task.validate_targets(DEPTH_Y)
    bad = DEPTH_Y.clone()
    bad[1, 1, 0] = math.inf
    with pytest.raises(LabelError, match=r"infinite depth at sample 1, pixel \(y=1, x=0\)"):
        task.validate_targets(bad)
    bad[1, 1, 0] = -2.0
    with pytest.raises(LabelError, match=r"negative depth -2.0"):
        task.validate_targets(bad)


# ---------------------------------------------------------------------- normals
def _normals() -> tuple[Tensor, Tensor]:
    """Predictions and truths at 0, 90 and 45 degrees, then a zero and a NaN (missing) truth."""
    pred = [[1, 0, 0], [2, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]]
    truth = [[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0], [NAN, NAN, NAN]]
    as_map = lambda rows: torch.tensor(rows, dtype=torch.float32).T.reshape(1, 3, 1, 5)  # noqa: E731
    return as_map(pred), as_map(truth)


def test_normals_cosine_loss_and_angle_metrics_by_hand() -> None:
    task = Task("n", "normals")
    out, truth = _normals()
    per, count = task.sample_losses(out, truth)
    assert count == 3
    assert torch.allclose(per, torch.tensor([0.0 + 1.0 + (1.0 - math.sqrt(0.5))]))
    metrics = task.make_metrics()
    assert task.update_metrics(metrics, out, truth) == 3
    scores = {k: float(v) for k, v in metrics.compute().items()}
    assert scores["mean_angle"] == pytest.approx(45.0)
    assert scores["median_angle"] == pytest.approx(45.0)
    for name in ("within_11_25", "within_22_5", "within_30"):
        assert scores[name] == pytest.approx(100 / 3)
    assert torch.allclose(task.predict(out).norm(dim=1), torch.ones(1, 1, 5))
    assert task.primary == "mean_angle" and task.primary_higher_is_better is False


def test_median_angle_of_an_even_count_matches_numpy() -> None:
    task = Task("n", "normals")
    pred = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 1, 0], [-1, 0, 0]]).T.reshape(1, 3, 2, 2)
    truth = torch.tensor([[1.0, 0, 0]] * 4).T.reshape(1, 3, 2, 2)
    metrics = task.make_metrics()
    task.update_metrics(metrics, pred, truth)
    median = float(metrics.compute()["median_angle"])
    assert median == pytest.approx(float(np.median([0.0, 45.0, 90.0, 180.0])))  # 67.5


def test_angle_thresholds_never_merge_into_one_compute_group() -> None:
    # torchmetrics groups metrics whose states are equal after the first update; two thresholds
    # that counted the same pixels in batch one must still differ after batch two.
    task = Task("n", "normals")
    metrics = task.make_metrics()
    x = torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1)
    task.update_metrics(metrics, x, x)  # 0 degrees: within every threshold
    twenty = torch.tensor([math.cos(math.radians(20)), math.sin(math.radians(20)), 0.0])
    task.update_metrics(metrics, twenty.reshape(1, 3, 1, 1), x)
    scores = {k: float(v) for k, v in metrics.compute().items()}
    assert scores["within_11_25"] == pytest.approx(50.0)
    assert scores["within_22_5"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="threshold"):
        AngleWithin(0.0)


def test_normals_stored_as_an_image_are_refused() -> None:
    task = Task("n", "normals")
    _, truth = _normals()
    task.validate_targets(truth)
    with pytest.raises(LabelError, match=r"length 255.*\[-1, 1\]"):
        task.validate_targets(truth.nan_to_num() * 255)


# ---------------------------------------------------------------------- tokens and text
def test_token_classification_loss_metrics_and_alignment() -> None:
    task = Task("tags", "token_classification", num_classes=2)
    out = torch.zeros(2, 3, 2)
    target = torch.tensor([[0, 1, -1], [-1, -1, 1]])
    per, count = task.sample_losses(out, target)
    assert count == 3 and torch.allclose(per, torch.tensor([2 * math.log(2.0), math.log(2.0)]))
    with pytest.raises(LabelError, match=r"token labels of shape \[2, 4\] do not align.*\[2, 3, 2\]"):
        task.sample_losses(out, torch.zeros(2, 4, dtype=torch.long))
    logits = torch.tensor([[[1.0, 0], [1, 0], [0, 1]], [[0, 1], [0, 1], [0, 1]]])
    metrics = task.make_metrics()
    assert task.update_metrics(metrics, logits, target) == 3
    assert float(metrics.compute()["accuracy"]) == pytest.approx(2 / 3)  # 0 ok, 1 wrong, 1 ok
    with pytest.raises(LabelError, match="label 5 at sample 1, token 0"):
        task.validate_targets(torch.tensor([[0, 1], [5, -1]]))
    assert isinstance(make_task_head(task, FeatureSpec("sequence", 8)), TokenHead)


def test_text_classification_is_multiclass_with_the_same_numbers() -> None:
    text = Task("topic", "text_classification", num_classes=4)
    plain = Task("topic", "multiclass", num_classes=4)
    out, y = torch.randn(6, 4), torch.tensor([0, 3, -1, 2, 1, -1])
    assert all(torch.equal(a, b) for a, b in zip(text.sample_losses(out, y)[:1],
                                                  plain.sample_losses(out, y)[:1], strict=True))
    assert text.sample_losses(out, y)[1] == plain.sample_losses(out, y)[1] == 4
    assert text.layout == "sample" and text.primary == plain.primary == "accuracy"
    spec = FeatureSpec("sequence", 8, pooling="cls")
    assert make_task_head(text, spec)(torch.randn(6, 5, 8)).shape == (6, 4)


# ---------------------------------------------------------------------- plumbing
def test_heads_follow_the_layout() -> None:
    seg = Task("seg", "segmentation", num_classes=11)
    head = make_task_head(seg, FeatureSpec("map", 16, stride=4))
    assert isinstance(head, DenseDecoder)
    assert head(torch.randn(2, 16, 3, 3)).shape == (2, 11, 12, 12)
    assert make_task_head(Task("d", "depth"), FeatureSpec("map", 16, stride=4))(
        torch.randn(1, 16, 2, 2)
    ).shape == (1, 1, 8, 8)
    with pytest.raises(HeadError, match=r"'seg' .*dense.*feature map"):
        make_task_head(seg, FeatureSpec("vector", 16))


def test_collate_fills_missing_dense_labels_with_each_kind_marker() -> None:
    seg = Task("seg", "segmentation", num_classes=3, ignore_index=255)
    depth = Task("depth", "depth")
    collate = MultiTaskCollate([seg, depth])
    items = [
        (torch.zeros(1, 2, 2), {"seg": torch.ones(2, 2, dtype=torch.long)}),
        (torch.zeros(1, 2, 2), {"depth": torch.full((1, 2, 2), 1.5)}),
    ]
    _, targets = collate(items)
    assert targets["seg"].dtype == torch.long and targets["seg"].shape == (2, 2, 2)
    assert (targets["seg"][1] == 255).all() and (targets["seg"][0] == 1).all()
    assert torch.isnan(targets["depth"][0]).all() and (targets["depth"][1] == 1.5).all()
    with pytest.raises(BatchError, match=r"no item labels the dense task 'seg'.*shape is unknown"):
        collate([items[1], items[1]])


def test_batched_losses_fall_back_to_each_dense_kind_exactly() -> None:
    # losses.py stacks alike sample-level tasks; every other kind must keep its own loss
    tasks = [
        Task("seg", "segmentation", num_classes=3),
        Task("depth", "depth"),
        Task("n", "normals"),
        Task("digit", "multiclass", num_classes=3),
        Task("topic", "text_classification", num_classes=3),
    ]
    seg_out, seg_y = _seg_case(-1)
    n_out, n_y = _normals()
    n_out, n_y = n_out.expand(2, -1, -1, -1)[:, :, :, :2], n_y.expand(2, -1, -1, -1)[:, :, :, :2]
    outputs = {"seg": seg_out, "depth": DEPTH_OUT, "n": n_out, "digit": torch.randn(2, 3),
               "topic": torch.randn(2, 3)}
    targets = {"seg": seg_y, "depth": DEPTH_Y, "n": n_y, "digit": torch.tensor([2, -1]),
               "topic": torch.tensor([0, 1])}
    per_sample, counts = batched_sample_losses(tasks, outputs, targets)
    for i, task in enumerate(tasks):
        per, count = task.sample_losses(outputs[task.name], targets[task.name])
        assert torch.equal(per_sample[:, i], per) and int(counts[i]) == count


def test_dense_splits_validate_and_count_labelled_pixels() -> None:
    seg = Task("seg", "segmentation", num_classes=3)
    depth = Task("depth", "depth")
    part = MultiTaskData(
        torch.zeros(2, 1, 2, 2),
        {"seg": torch.tensor([[[0, 1], [-1, 2]], [[-1, -1], [-1, -1]]]), "depth": DEPTH_Y},
        [seg, depth],
        name="tiny",
    )
    splits = Splits(part, part, part).validate()
    assert splits.train.label_counts() == {"seg": 3, "depth": 3}
    assert chance_loss(depth) is None and chance_loss(Task("n", "normals")) == 1.0
