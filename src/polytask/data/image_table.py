"""A folder of images plus a CSV of labels as train / validation / test splits, read lazily.

This is what ``polytask fit LABELS.csv --images DIR`` and ``data: {table: ..., images: ...}`` load:
an :class:`~polytask.data.images.ImageTableDataset` (labels parsed once from the CSV, images read
from disk per item) cut 80/10/10 by the same seeded rule as tables, with training augmentations on
the training split only, each split served through a ``DataLoader``
(:class:`~polytask.data.loader.DatasetData`: ``num_workers``, ``pin_memory``). Regression scalers
are fitted on the training split's labels without reading any image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from polytask.data.base import Splits
from polytask.data.images import ImageTableDataset
from polytask.data.loader import DatasetData
from polytask.data.transforms import build_transforms

__all__ = ["load_image_table"]


def load_image_table(
    table: str,
    images: str | None = None,
    targets: Sequence[str] | None = None,
    kinds: Mapping[str, str] | None = None,
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    channels: int | None = None,
    transforms: Mapping[str, Any] | Sequence[Any] | None = None,
    backend: str = "auto",
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Splits:
    """Splits of the images listed in ``table`` (first column: path under ``images``).

    ``transforms`` is a :func:`~polytask.data.transforms.build_transforms` spec; its random
    operations (crops, flips) apply to the training split only. Images must come out of the
    transforms with one size (give ``resize`` and/or ``crop`` when the files differ in size).
    """
    full = ImageTableDataset(table, images, targets=targets, kinds=kinds, channels=channels)
    train, val, test = full.split(tuple(fractions), seed=seed)  # type: ignore[arg-type]
    train = train.with_transform(build_transforms(transforms, train=True, backend=backend))
    evaluation = build_transforms(transforms, train=False, backend=backend)
    val, test = val.with_transform(evaluation), test.with_transform(evaluation)
    options = {"num_workers": num_workers, "pin_memory": pin_memory,
               "persistent_workers": num_workers > 0}
    parts = {
        name: DatasetData(ds, full.tasks, name=f"{full.csv_path.name}/{name}", **options)
        for name, ds in (("train", train), ("val", val), ("test", test))
    }
    splits = Splits(parts["train"], parts["val"], parts["test"], info={
        "split": "random", "seed": seed, "fractions": list(fractions),
        "images": {"table": str(full.csv_path), "folder": str(full.image_dir),
                   "channels": full.channels, "rows": len(full)},
        "label_classes": {t: list(map(str, e.classes)) for t, e in full.encodings.items()
                          if getattr(e, "classes", None) is not None},
    })
    return splits.fit_target_scalers()
