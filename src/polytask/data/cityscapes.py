"""Cityscapes (Cordts et al. 2016) as MTAN preprocessed it: segmentation and (inverse) depth.

The multi-task Cityscapes benchmark of MTAN (Liu et al. 2019), Nash-MTL, FAMO and LibMTL: 2,975
training and 500 test street scenes at 128x256, each with

* ``segmentation``: 7 classes (``label_7/<i>.npy``) or 19 (``label_19/<i>.npy``), ``[H, W]``,
  ``-1`` = unlabelled pixel;
* ``depth``: inverse depth (disparity) as MTAN stored it (``depth/<i>.npy``, ``[H, W, 1]``),
  ``0`` (or NaN) = no depth there, a missing pixel label, not an error.

Images are ``image/<i>.npy``, ``[H, W, 3]`` floats in [0, 1]. Read per item, the layout checked
when opened (:mod:`polytask.data.dense_npy`); the published ``val`` folder is the test split and
validation is carved from ``train`` with the run's seed (model selection never reads test).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from polytask.data.base import DataError, Splits
from polytask.data.dense_npy import NpyTarget, load_npy_scenes, resolve_root
from polytask.tasks import Task

__all__ = ["CITYSCAPES_SIZE", "cityscapes_tasks", "load_cityscapes"]

#: (height, width) of MTAN's smaller preprocessed release (the one papers train on).
CITYSCAPES_SIZE = (128, 256)
CLASS_COUNTS = (7, 19)
TASK_NAMES = ("segmentation", "depth")


def cityscapes_tasks(
    classes: int = 7, names: Sequence[str] | None = None, label_dir: str | None = None
) -> list[NpyTarget]:
    """The tasks with the folders and channels of their files.

    ``label_dir`` overrides the segmentation folder (default ``label_<classes>``; LibMTL's copy of
    the 7-class labels is a folder named ``label``).
    """
    if classes not in CLASS_COUNTS:
        raise DataError(f"cityscapes: classes must be 7 or 19, got {classes}")
    chosen = list(TASK_NAMES) if names is None else list(names)
    unknown = [n for n in chosen if n not in TASK_NAMES]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise DataError(
            f"cityscapes: tasks must be distinct names among {list(TASK_NAMES)}, got {chosen}"
        )
    out = []
    for name in chosen:
        if name == "segmentation":
            task = Task("segmentation", "segmentation", num_classes=classes)
            out.append(NpyTarget(task, label_dir or f"label_{classes}", None))
        else:
            out.append(NpyTarget(Task("depth", "depth"), "depth", 1))
    return out


def load_cityscapes(
    path: str | os.PathLike[str] | None = None,
    seed: int = 0,
    classes: int = 7,
    tasks: Sequence[str] | None = None,
    label_dir: str | None = None,
    val_fraction: float = 0.1,
    size: tuple[int, int] = CITYSCAPES_SIZE,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Splits:
    """Cityscapes splits read lazily from MTAN's ``.npy`` files (no download).

    Args:
        path: the folder holding ``train/`` and ``val/``; default ``$POLYTASK_CITYSCAPES``, else
            ``$POLYTASK_DATA/cityscapes``.
        seed: draws the validation rows out of ``train``.
        classes: 7 (the benchmark's usual setting) or 19 segmentation classes.
        tasks: a subset of ``segmentation``, ``depth`` (default: both).
        label_dir: the segmentation folder when it is not ``label_<classes>``.
        val_fraction: the share of ``train`` held out for validation (model selection).
        size: the ``(H, W)`` every file must have (128x256 for MTAN's smaller release).
        num_workers, pin_memory: the ``DataLoader``'s.
    """
    targets = cityscapes_tasks(classes, tasks, label_dir)
    root = resolve_root(path, "POLYTASK_CITYSCAPES", "cityscapes")
    folder = next((t.folder for t in targets if t.task.name == "segmentation"), None)
    if folder is not None and not (root / "train" / folder).is_dir():
        others = sorted(p.name for p in (root / "train").glob("label*") if p.is_dir())
        raise DataError(
            f"cityscapes: folder {root / 'train' / folder} (the {classes}-class labels) does not "
            f"exist; label folders there: {others or 'none'} (choose with classes / label_dir)"
        )
    return load_npy_scenes(
        root, targets, name="cityscapes", size=tuple(size), seed=seed,  # type: ignore[arg-type]
        val_fraction=val_fraction, num_workers=num_workers, pin_memory=pin_memory,
        info={"classes": classes, "ignore_index": -1, "depth": "inverse depth (disparity)",
              "layout": "MTAN .npy: {train,val}/{image,label_7|label_19,depth}/<i>.npy"},
    )
