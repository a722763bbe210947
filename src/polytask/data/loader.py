"""Any ``torch.utils.data.Dataset`` (or ``IterableDataset``, or Hugging Face ``datasets`` object)
as multi-task data, read through a ``DataLoader``.

:class:`DatasetData` implements :class:`polytask.data.base.TaskData` the way torch users expect:
items are collated by :class:`~polytask.data.batch.MultiTaskCollate` into ``(inputs, {task:
target})``, with ``num_workers``, ``pin_memory`` and a sampler seeded from the loop's per-epoch
generator, so a resumed run draws exactly the batches an uninterrupted one would. Map-style data
sets are sharded across DDP ranks exactly as the in-memory path shards them (each rank takes its
slice of every global batch), so the union of the ranks' batches is the single-process epoch.

Targets. Model selection, regression scalers, label counts and the single-task baselines read every
row's targets. A data set that knows them without reading its inputs says so with a ``targets``
attribute (a dict of tensors; :class:`polytask.data.images.ImageTableDataset` has one); a Hugging
Face data set gives its task columns directly; any other data set is read once, through the
collate, the first time the targets are asked for (the inputs are read too: say ``targets=`` to
avoid that for big inputs).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from polytask.data.base import DataError, batch_plan
from polytask.data.batch import Batch, BatchError, Inputs, MultiTaskCollate
from polytask.tasks import LabelError, Task

__all__ = ["DatasetData"]


class _Indexed(Dataset):
    """Items as ``(index, item)`` so that the collate can name the item that is wrong."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


class _IndexedCollate:
    """Unpacks ``(index, item)`` pairs for :class:`MultiTaskCollate` (picklable for workers)."""

    def __init__(self, collate: MultiTaskCollate, positions: Sequence[int] | None = None) -> None:
        self.collate = collate
        self.positions = positions

    def __call__(self, pairs: Sequence[tuple[int, Any]]) -> Batch:
        indices = [int(i) for i, _ in pairs]
        if self.positions is not None:  # a subset: name the item by its index in the source
            indices = [int(self.positions[i]) for i in indices]
        return self.collate([item for _, item in pairs], indices)


class DatasetData:
    """A torch ``Dataset`` with its tasks, batched through a ``DataLoader``.

    Args:
        dataset: a map-style ``Dataset`` (``__len__`` and ``__getitem__``), an ``IterableDataset``
            or a Hugging Face ``datasets.Dataset``; items as described in
            :mod:`polytask.data.batch`.
        tasks: the tasks the items label.
        name: used in messages ("train", "my-images/val").
        input_keys: for dict items (Hugging Face rows): which keys are inputs.
        transform_inputs: applied to each collated batch of inputs (a tokenizer, for text).
        targets: every row's targets per task, when the data set cannot say them itself.
        num_workers, pin_memory, persistent_workers, prefetch_factor: ``DataLoader`` settings.
        ignore_keys: item keys that are tasks of the source but not of this run (dropped).
    """

    def __init__(
        self,
        dataset: Any,
        tasks: Sequence[Task],
        *,
        name: str = "data",
        input_keys: Sequence[str] | None = None,
        transform_inputs: Callable[[Any], Inputs] | None = None,
        targets: Mapping[str, Tensor] | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
        ignore_keys: Sequence[str] = (),
        positions: Sequence[int] | None = None,
    ) -> None:
        if isinstance(dataset, DataLoader):
            raise TypeError(
                "DatasetData takes the Dataset, not a DataLoader: polytask builds the loader "
                "itself (seeded sampler, DDP shards, collate); pass loader.dataset and give "
                "num_workers / pin_memory here"
            )
        if not (hasattr(dataset, "__getitem__") or isinstance(dataset, IterableDataset)):
            raise TypeError(
                f"{name}: expected a torch Dataset, IterableDataset or Hugging Face Dataset, got "
                f"{type(dataset).__name__}"
            )
        if num_workers < 0:
            raise ValueError(f"{name}: num_workers must be >= 0, got {num_workers}")
        self.dataset = dataset
        self.tasks = list(tasks)
        self.name = name
        self.input_keys = list(input_keys) if input_keys is not None else None
        self.transform_inputs = transform_inputs
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.prefetch_factor = prefetch_factor
        self.ignore_keys = list(ignore_keys)
        self.positions = list(positions) if positions is not None else None
        self.info: dict[str, object] = {}
        self._targets = dict(targets) if targets is not None else None
        self.collate = _IgnoringCollate(
            self.tasks, self.input_keys, transform_inputs, self.ignore_keys
        )

    # ------------------------------------------------------------------ the TaskData protocol
    @property
    def iterable(self) -> bool:
        return isinstance(self.dataset, IterableDataset)

    def __len__(self) -> int:
        if self.iterable:
            try:
                return len(self.dataset)
            except TypeError:
                raise TypeError(
                    f"{self.name}: this IterableDataset has no length; give it __len__"
                ) from None
        return len(self.dataset)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def targets(self) -> dict[str, Tensor]:
        if self._targets is None:
            self._targets = self._read_targets()
        return {t.name: self._targets[t.name] for t in self.tasks}

    def _read_targets(self) -> dict[str, Tensor]:
        own = getattr(self.dataset, "targets", None)
        if isinstance(own, Mapping) and all(t.name in own for t in self.tasks):
            return {t.name: torch.as_tensor(own[t.name]) for t in self.tasks}
        columns = getattr(self.dataset, "column_names", None)
        if isinstance(columns, list) and all(t.name in columns for t in self.tasks):
            # A Hugging Face data set: read the task columns without touching the inputs.
            rows = list(range(len(self.dataset)))
            items = [{t.name: self.dataset[t.name][i] for t in self.tasks} for i in rows]
            return self.collate.targets_only(items, rows)
        parts: dict[str, list[Tensor]] = {t.name: [] for t in self.tasks}
        for _, y in self.batches(256):
            for k, v in y.items():
                parts[k].append(v)
        return {k: torch.cat(v) for k, v in parts.items()}

    def label_counts(self) -> dict[str, int]:
        return {t.name: int(t.label_mask(self.targets[t.name]).sum()) for t in self.tasks}

    def example(self, n: int = 2) -> Inputs:
        return next(iter(self.batches(n)))[0]

    def _clone(self, **changes: Any) -> DatasetData:
        kwargs: dict[str, Any] = {
            "name": self.name, "input_keys": self.input_keys,
            "transform_inputs": self.transform_inputs, "targets": self._targets,
            "num_workers": self.num_workers, "pin_memory": self.pin_memory,
            "persistent_workers": self.persistent_workers,
            "prefetch_factor": self.prefetch_factor, "ignore_keys": self.ignore_keys,
            "positions": self.positions,
        }
        dataset, tasks = changes.pop("dataset", self.dataset), changes.pop("tasks", self.tasks)
        kwargs.update(changes)
        return DatasetData(dataset, tasks, **kwargs)

    def subset(self, index: Tensor | Sequence[int]) -> DatasetData:
        """The rows ``index`` (a ``torch.utils.data.Subset``), keeping their targets if known."""
        if self.iterable:
            raise TypeError(f"{self.name}: an IterableDataset cannot be indexed into splits")
        idx = torch.as_tensor(index, dtype=torch.long)
        rows = idx.tolist()
        base = self.positions
        positions = [base[i] for i in rows] if base is not None else rows
        targets = None
        if self._targets is not None:
            targets = {k: v[idx] for k, v in self._targets.items()}
        return self._clone(
            dataset=torch.utils.data.Subset(self.dataset, rows), targets=targets,
            positions=positions,
        )

    def with_tasks(self, tasks: Sequence[Task]) -> DatasetData:
        names = {t.name for t in tasks}
        dropped = [t.name for t in self.tasks if t.name not in names]
        targets = None
        if self._targets is not None:
            targets = {k: v for k, v in self._targets.items() if k in names}
        return self._clone(
            tasks=list(tasks), targets=targets, ignore_keys=[*self.ignore_keys, *dropped]
        )

    def validate(self, split: str = "") -> DatasetData:
        """Collate the first items (keys, shapes) and check every label; name what is wrong."""
        where = f"{self.name}{'/' + split if split else ''}"
        try:
            if not self.iterable and len(self) == 0:
                raise DataError(f"{where}: the data set is empty")
            self.example(min(2, len(self)) if not self.iterable else 2)
        except BatchError as err:
            raise DataError(f"{where}: {err}") from None
        for task in self.tasks:
            try:
                task.validate_targets(self.targets[task.name], where)
            except LabelError as err:
                raise DataError(str(err)) from None
        return self

    def loader(
        self,
        batch_sampler: Sequence[Sequence[int]] | None = None,
        batch_size: int = 1,
        generator: torch.Generator | None = None,
    ) -> DataLoader:
        """The ``DataLoader`` over given index batches (map-style) or of ``batch_size`` items."""
        options: dict[str, Any] = {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.persistent_workers,
        }
        if self.num_workers > 0 and self.prefetch_factor is not None:
            options["prefetch_factor"] = self.prefetch_factor
        if generator is not None:
            # Workers' seeds (random augmentations) follow the epoch's generator: exact resume.
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            options["generator"] = torch.Generator().manual_seed(seed)
        if self.iterable:
            return DataLoader(
                self.dataset, batch_size=batch_size, collate_fn=self.collate, **options
            )
        return DataLoader(
            _Indexed(self.dataset), batch_sampler=batch_sampler,
            collate_fn=_IndexedCollate(self.collate, self.positions), **options,
        )

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[Batch]:
        """Batches through a ``DataLoader``; the order and the DDP shards of the in-memory path."""
        if self.iterable:
            # An IterableDataset orders (and shuffles) its own items; `shuffle` is its business.
            loader = self.loader(batch_size=batch_size, generator=generator)
            batches: Iterator[Batch] = iter(loader)
            if world_size > 1:  # rank r takes every world_size-th batch; ranks stay in step
                batches = _in_step(batches, rank, world_size)
            yield from _named(batches, self.name)
            return
        plan = [
            idx.tolist()
            for idx in batch_plan(
                len(self), batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last,
                rank=rank, world_size=world_size,
            )
        ]
        if not plan:
            return
        yield from _named(iter(self.loader(plan, generator=generator)), self.name)


class _IgnoringCollate(MultiTaskCollate):
    """:class:`MultiTaskCollate` that drops the keys of tasks left out of this run."""

    def __init__(
        self,
        tasks: Sequence[Task],
        input_keys: Sequence[str] | None,
        transform_inputs: Callable[[Any], Inputs] | None,
        ignore_keys: Sequence[str],
    ) -> None:
        super().__init__(tasks, input_keys, transform_inputs)
        self.ignore_keys = set(ignore_keys)

    def split_item(self, item: Any, index: int | str) -> tuple[Any, Mapping[str, Any]]:
        inputs, targets = super().split_item(item, index)
        if self.ignore_keys:
            targets = {k: v for k, v in targets.items() if k not in self.ignore_keys}
        return inputs, targets

    def targets_only(self, items: list[Mapping[str, Any]], rows: Sequence[int]) -> dict[str, Tensor]:
        return {t.name: self._stack_targets(t, items, rows) for t in self.tasks}


def _in_step(batches: Iterator[Batch], rank: int, world_size: int) -> Iterator[Batch]:
    """Rank ``rank``'s share of an iterable's batches: only whole rounds of ``world_size``."""
    while True:
        block = list(itertools.islice(batches, world_size))
        if len(block) < world_size:
            return
        yield block[rank]


def _named(batches: Iterator[Batch], name: str) -> Iterator[Batch]:
    """Re-raise contract errors from the collate as :class:`DataError` naming the data set."""
    try:
        yield from batches
    except BatchError as err:
        raise DataError(f"{name}: {err}") from None
