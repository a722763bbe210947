"""NYUv2 (Silberman et al. 2012) as MTAN preprocessed it: segmentation, depth, surface normals.

The multi-task NYUv2 benchmark of MTAN (Liu et al. 2019), Nash-MTL, FAMO, LibMTL and most
gradient-balancing papers: 795 training and 654 test indoor images at 288x384, each with

* ``segmentation``: 13 classes (``label/<i>.npy``, ``[H, W]``), ``-1`` = unlabelled pixel;
* ``depth``: metres (``depth/<i>.npy``, ``[H, W, 1]``), ``0`` (or NaN) = no depth measured there,
  a missing pixel label, not an error;
* ``normals``: unit vectors (``normal/<i>.npy``, ``[H, W, 3]``), ``0`` = no normal there.

Images are ``image/<i>.npy``, ``[H, W, 3]`` floats in [0, 1]. The files are read per item (see
:mod:`polytask.data.dense_npy`, which checks the layout when the data set is opened); the published
``val`` folder is the test split and validation is carved from ``train`` with the run's seed,
because model selection never looks at the test split (papers that select on ``val`` report an
optimistic number).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from polytask.data.base import DataError, Splits
from polytask.data.dense_npy import NpyTarget, load_npy_scenes, resolve_root
from polytask.tasks import Task

__all__ = ["NYUV2_SIZE", "NYUV2_TASKS", "load_nyuv2", "nyuv2_tasks"]

#: (height, width) of MTAN's preprocessed files.
NYUV2_SIZE = (288, 384)
NUM_CLASSES = 13
#: task name -> folder of its files
NYUV2_TASKS = {"segmentation": "label", "depth": "depth", "normals": "normal"}


def nyuv2_tasks(names: Sequence[str] | None = None) -> list[NpyTarget]:
    """The tasks (all three by default) with the folders and channels of their files."""
    chosen = list(NYUV2_TASKS) if names is None else list(names)
    unknown = [n for n in chosen if n not in NYUV2_TASKS]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise DataError(
            f"nyuv2: tasks must be distinct names among {list(NYUV2_TASKS)}, got {chosen}"
        )
    make = {
        "segmentation": lambda: NpyTarget(
            Task("segmentation", "segmentation", num_classes=NUM_CLASSES), "label", None
        ),
        "depth": lambda: NpyTarget(Task("depth", "depth"), "depth", 1),
        "normals": lambda: NpyTarget(Task("normals", "normals"), "normal", 3),
    }
    return [make[n]() for n in chosen]


def load_nyuv2(
    path: str | os.PathLike[str] | None = None,
    seed: int = 0,
    tasks: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    size: tuple[int, int] = NYUV2_SIZE,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Splits:
    """NYUv2 splits read lazily from MTAN's ``.npy`` files (no download).

    Args:
        path: the folder holding ``train/`` and ``val/``; default ``$POLYTASK_NYUV2``, else
            ``$POLYTASK_DATA/nyuv2``.
        seed: draws the validation rows out of ``train``.
        tasks: a subset of ``segmentation``, ``depth``, ``normals`` (default: all three).
        val_fraction: the share of ``train`` held out for validation (model selection).
        size: the ``(H, W)`` every file must have (288x384 for MTAN's files).
        num_workers, pin_memory: the ``DataLoader``'s (GPU runs: a few workers and pinned memory).
    """
    root = resolve_root(path, "POLYTASK_NYUV2", "nyuv2")
    return load_npy_scenes(
        root, nyuv2_tasks(tasks), name="nyuv2", size=tuple(size), seed=seed,  # type: ignore[arg-type]
        val_fraction=val_fraction, num_workers=num_workers, pin_memory=pin_memory,
        info={"classes": NUM_CLASSES, "ignore_index": -1,
              "layout": "MTAN/LibMTL .npy: {train,val}/{image,label,depth,normal}/<i>.npy"},
    )
