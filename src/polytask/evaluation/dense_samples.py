"""A few validation samples of the dense and box tasks, predicted and true, saved for the report.

Why a file rather than the report running the model: the report reads run directories only (it
renders runs from other machines, and runs whose code has moved on), so the run writes what the
report shows. For each dense task (``layout == "dense"``) the file keeps the first ``n`` rows of the
validation split: the input image, the target as stored (missing pixels marked) and the selected
model's prediction in the target's units (:meth:`~polytask.tasks.Task.predict`). A few 48x48
scenes are a few kilobytes; images of any size are kept at most ``max_side`` pixels a side
(subsampled), so a run on large images does not write megabytes.

Box tasks (``layout == "boxes"``, detection) keep their target rows ``[n, K, 5]`` (class, x0, y0,
x1, y1; class -1 is padding, an all-NaN image is unannotated) and their decoded detections
``[n, k, 6]`` (x0, y0, x1, y1, score, class), best first, with coordinates in pixels of the kept
(possibly subsampled) input image, so the report draws both as rectangles on it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from polytask.data.base import TaskData
from polytask.data.batch import move_to
from polytask.tasks import Task

__all__ = ["DENSE_SAMPLES_FILE", "DenseSamples", "read_dense_samples", "write_dense_samples"]

DENSE_SAMPLES_FILE = "dense_samples.npz"

#: ``{"input": [n, H, W, C?] or None, "tasks": {name: {"kind", "num_classes", "truth", "pred"}}}``
DenseSamples = dict[str, Any]


def _stride(side: int, max_side: int) -> int:
    return max(1, -(-side // max_side))


def _image(inputs: object, step: int) -> np.ndarray | None:
    """``[n, H, W]`` (one channel) or ``[n, H, W, 3]`` from image inputs; None for other inputs."""
    if not isinstance(inputs, Tensor) or inputs.ndim != 4 or inputs.shape[1] not in (1, 3):
        return None
    x = inputs[:, :, ::step, ::step].float().cpu()
    if x.shape[1] == 1:
        return x[:, 0].numpy()
    return x.permute(0, 2, 3, 1).numpy()


def _box_step(inputs: object, max_side: int) -> int:
    """The subsampling of the kept input image, which box coordinates are divided by (1 when the
    inputs are not images: nothing is drawn under the boxes then)."""
    if isinstance(inputs, Tensor) and inputs.ndim == 4:
        return _stride(int(inputs.shape[-1]), max_side)
    return 1


def _scale_boxes(boxes: Tensor, columns: tuple[int, int], step: int) -> np.ndarray:
    """Boxes with their corner columns ``[start, end)`` divided by the image's subsampling."""
    out = boxes.clone()
    out[..., columns[0] : columns[1]] /= step
    return out.numpy()


@torch.no_grad()
def write_dense_samples(
    model: nn.Module,
    tasks: Sequence[Task],
    data: TaskData,
    run_dir: str | Path,
    n: int = 4,
    max_side: int = 128,
) -> Path | None:
    """Write ``run_dir/dense_samples.npz`` for the dense and box tasks; ``None`` (no file) when
    there are none."""
    dense = [t for t in tasks if t.layout in ("dense", "boxes")]
    if not dense or len(data) == 0:
        return None
    x, y = next(iter(data.batches(min(n, len(data)))))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        outputs = model(move_to(x, device))
    finally:
        model.train(was_training)
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"tasks": {}}
    step = 1
    for task in dense:
        truth = y[task.name]
        pred = task.predict(outputs[task.name].float()).cpu()
        if task.layout == "boxes":
            step = _box_step(x, max_side)
            arrays[f"truth/{task.name}"] = _scale_boxes(truth.float().cpu(), (1, 5), step)
            arrays[f"pred/{task.name}"] = _scale_boxes(pred, (0, 4), step)
        else:
            step = _stride(int(truth.shape[-1]), max_side)
            arrays[f"truth/{task.name}"] = truth[..., ::step, ::step].cpu().numpy()
            arrays[f"pred/{task.name}"] = pred[..., ::step, ::step].numpy()
        meta["tasks"][task.name] = {
            "kind": task.kind.value, "layout": task.layout, "num_classes": task.num_classes,
            "ignore_index": task.ignore_index, "options": task.options,
        }
    image = _image(x, step)
    if image is not None:
        arrays["input"] = image
    arrays["meta"] = np.array(json.dumps(meta))
    path = Path(run_dir) / DENSE_SAMPLES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
    return path


def read_dense_samples(path: str | Path) -> DenseSamples:
    """The samples written by :func:`write_dense_samples` (no pickled objects are read)."""
    with np.load(Path(path), allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
        tasks = {
            name: {**info, "truth": npz[f"truth/{name}"], "pred": npz[f"pred/{name}"]}
            for name, info in meta["tasks"].items()
        }
        image = npz["input"] if "input" in npz.files else None
    return {"input": image, "tasks": tasks}
