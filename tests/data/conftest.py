"""Fixtures shared by the data loaders' tests: MTAN's ``.npy`` layout, and a short dense training.

NYUv2 and Cityscapes (and any later data set preprocessed the MTAN way) are read from the same
layout: ``<root>/<split>/<folder>/<i>.npy``, one array per sample and folder, numbered from 0.
``write_mtan_npy`` writes such a copy from a description of the folders, so that each test module
states only what is particular to its data set (which folders, what the arrays hold) and the
layout itself is written in one place. ``fit_dense`` trains a tiny ResNet-10 map trunk on such
splits through the public ``fit``, the end-to-end check each dense loader's tests close with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

from polytask.balancing import create_balancer
from polytask.data.base import Splits
from polytask.models import create_model, create_trunk
from polytask.training import FitResult, TrainSettings, fit

#: Makes one sample's array of one folder from the generator and the image's height and width.
ArrayMaker = Callable[[np.random.Generator, int, int], np.ndarray]


def write_mtan_layout(
    root: Path,
    arrays: Mapping[str, ArrayMaker],
    counts: Mapping[str, int],
    size: tuple[int, int],
    seed: int = 0,
) -> Path:
    """``counts[split]`` samples per split, one ``.npy`` per folder of ``arrays`` and sample.

    The arrays are drawn sample by sample, in the order of ``arrays``, from one generator seeded
    with ``seed``: the same description and seed write the same files.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    for split, n in counts.items():
        for folder in arrays:
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            for folder, make in arrays.items():
                np.save(root / split / folder / f"{i}.npy", make(rng, h, w))
    return root


@pytest.fixture
def write_mtan_npy() -> Callable[..., Path]:
    """:func:`write_mtan_layout`, for tests that write a copy of their own (other folders)."""
    return write_mtan_layout


@pytest.fixture
def fit_dense(tmp_path: Path) -> Callable[[Splits, str, str, int, int], FitResult]:
    """Train ``architecture`` with ``balancer`` on a ResNet-10 (width 4) feature-map trunk."""

    def train(
        splits: Splits, architecture: str, balancer: str, epochs: int, batch_size: int
    ) -> FitResult:
        torch.manual_seed(0)
        trunk = create_trunk("resnet", depth=10, width=4, in_channels=3, output="map")
        model = create_model(
            architecture, trunk, splits.tasks, example_input=splits.train.example()
        )
        settings = TrainSettings(
            epochs=epochs, batch_size=batch_size, lr=1e-3, device="cpu", progress=False,
            tensorboard=False, eval_batch_size=batch_size,
        )
        return fit(
            model, splits, create_balancer(balancer, splits.train.task_names), settings, tmp_path
        )

    return train
