"""Detection trains beside segmentation and depth through ``fit``, with every balancer family and
engine mode, and its report figure draws predicted boxes beside the true ones.

Why these pairs: loss-weighting methods (equal, uncertainty) only read the three losses, so the
engine mode does not change what they see; PCGrad and UPGrad need the per-task gradients of the
shared ResNet (the Jacobian, or only its Gramian: both modes must take the same steps); MGDA-UB differentiates the shared feature map, which the
detection head upsamples before its convolutions. A tiny real-digit slice (8 scenes of 32x32)
keeps each training to about a second.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from polytask.balancing import create_balancer
from polytask.data.base import Splits
from polytask.data.mnist_scenes import load_mnist_scenes
from polytask.evaluation.dense_samples import read_dense_samples, write_dense_samples
from polytask.models import create_model, create_trunk
from polytask.models.base import MultiTaskModel
from polytask.report import plots
from polytask.training import FitResult, TrainSettings, fit

TASKS = ("segmentation", "depth", "detection")
CASES = (
    ("equal", "jacobian"),
    ("uncertainty", "gramian"),
    ("pcgrad", "jacobian"),
    ("pcgrad", "gramian"),
    ("upgrad", "jacobian"),
    ("upgrad", "gramian"),
    ("mgda_ub", "representation"),
)
Trained = tuple[MultiTaskModel, list[torch.Tensor], FitResult]


@pytest.fixture(scope="module")
def scenes(data_dir: Path) -> Splits:
    return load_mnist_scenes(
        source="idx", path=data_dir, scenes=(8, 4, 4), canvas=32, digits=(2, 3), seed=1,
        tasks=list(TASKS),
    )


def _train(scenes: Splits, balancer: str, mode: str, run_dir: Path) -> Trained:
    torch.manual_seed(0)
    trunk = create_trunk("resnet", depth=10, width=4, in_channels=1, output="map")
    model = create_model("hard_sharing", trunk, scenes.tasks, example_input=scenes.train.example())
    start = [p.detach().clone() for p in model.parameters()]
    # SGD: the jacobian and gramian modes must then agree to float rounding (see test_dense_training)
    settings = TrainSettings(
        epochs=1, batch_size=4, lr=0.05, optimizer="sgd", momentum=0.0, device="cpu",
        engine=mode, progress=False, tensorboard=False, eval_batch_size=4,
    )
    result = fit(model, scenes, create_balancer(balancer, list(TASKS)), settings, run_dir)
    return model, start, result


@pytest.fixture(scope="module")
def trained(scenes: Splits, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Trained]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {
            (b, m): _train(scenes, b, m, tmp_path_factory.mktemp(f"{b}-{m}")) for b, m in CASES
        }
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(("balancer", "mode"), CASES)
def test_detection_trains_with_segmentation_and_depth(
    balancer: str, mode: str, scenes: Splits, trained: dict[tuple[str, str], Trained]
) -> None:
    model, start, result = trained[(balancer, mode)]
    assert result.epochs_run == 1
    objects = int((scenes.test.targets["detection"][..., 0] >= 0).sum())
    for split in (result.val, result.test):
        for task in TASKS:
            assert all(math.isfinite(v) for v in split[task].values()), (balancer, split[task])
        assert 0.0 <= split["detection"]["map"] <= split["detection"]["map_50"] <= 1.0
    assert result.test["detection"]["labelled"] == objects
    head = model.heads["detection"]
    moved = [not torch.equal(a, b.detach()) for a, b in zip(start, model.parameters(), strict=True)]
    assert all(moved), f"{balancer}/{mode}: {moved.count(False)} parameter tensors never moved"
    assert head(model.encode(scenes.val.inputs[:1])).shape == (1, 14, 8, 8)


@pytest.mark.parametrize("balancer", ["pcgrad", "upgrad"])
def test_the_same_steps_from_the_jacobian_or_its_gramian(
    balancer: str, trained: dict[tuple[str, str], Trained]
) -> None:
    jac, gram = trained[(balancer, "jacobian")][0], trained[(balancer, "gramian")][0]
    for (name, a), b in zip(jac.named_parameters(), gram.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name


def test_report_samples_hold_true_and_predicted_boxes(
    scenes: Splits, trained: dict[tuple[str, str], Trained], tmp_path: Path
) -> None:
    model = trained[("upgrad", "gramian")][0]
    path = write_dense_samples(model, scenes.tasks, scenes.val, tmp_path, n=3)
    assert path is not None
    samples = read_dense_samples(path)
    det = samples["tasks"]["detection"]
    assert det["layout"] == "boxes"
    assert np.array_equal(det["truth"], scenes.val.targets["detection"][:3].numpy())
    assert det["pred"].shape == (3, 100, 6)  # 10 classes x 8 x 8 cells hold 100 peaks at most
    assert (np.diff(det["pred"][..., 4], axis=1) <= 0).all()  # best first
    assert samples["tasks"]["segmentation"]["pred"].shape == (3, 32, 32)
    png, skipped = plots.dense_samples(samples["input"], samples["tasks"], "validation samples")
    assert "detection" not in skipped and png.startswith(plots.PNG_SIGNATURE)
    # a detection-only run writes its boxes too
    alone = write_dense_samples(model, [scenes.tasks[2]], scenes.val, tmp_path / "alone", n=1)
    assert alone is not None and list(read_dense_samples(alone)["tasks"]) == ["detection"]
