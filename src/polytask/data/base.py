"""In-memory multi-task data: inputs (a tensor or named tensors), one target tensor per task.

:class:`MultiTaskData` is the fast implementation of the data contract (:mod:`polytask.data.batch`):
batches are index slices of tensors, with no per-sample Python and no collate, and a batch is
identical on every run with the same generator seed. Data that does not fit in memory, or comes as
a ``torch.utils.data.Dataset``, goes through :class:`polytask.data.loader.DatasetData`, which
yields the same batches through a ``DataLoader``. Both implement :class:`TaskData`, the small
protocol that the loop, the evaluation and the experiment read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from polytask.data.batch import Batch, Inputs, batch_len, slice_inputs
from polytask.task_kinds.sequence import token_alignment_problem
from polytask.tasks import LabelError, Task, TaskKind

__all__ = [
    "Batch",
    "DataError",
    "MultiTaskData",
    "Splits",
    "TaskData",
    "batch_plan",
    "iterate_batches",
    "random_split",
    "split_indices",
]


class DataError(ValueError):
    """Input data that cannot be used as it is; the message names the column, row or file."""


@runtime_checkable
class TaskData(Protocol):
    """What training and evaluation read from one split, whatever holds the data.

    ``batches`` yields ``(inputs, {task: target})`` with every task's key; under DDP rank ``r`` of
    ``world_size`` gets a disjoint shard, and the same ``generator`` state gives the same batches.
    ``label_counts`` is read before training (a task without a training label is refused) and
    ``targets`` (every row's targets, per task) by the regression scalers and the single-task
    baselines.
    """

    tasks: list[Task]
    name: str

    def __len__(self) -> int: ...

    @property
    def task_names(self) -> list[str]: ...

    @property
    def targets(self) -> dict[str, Tensor]: ...

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[Batch]: ...

    def example(self, n: int = 2) -> Inputs: ...

    def subset(self, index: Tensor | Sequence[int]) -> TaskData: ...

    def with_tasks(self, tasks: Sequence[Task]) -> TaskData: ...

    def validate(self, split: str = "") -> TaskData: ...

    def label_counts(self) -> dict[str, int]: ...


@dataclass
class MultiTaskData:
    """Inputs ``[N, ...]`` (or named inputs, a dict of such tensors) and, per task, targets
    ``[N, ...]`` with missing labels marked (per sample, or per element for dense targets).

    ``row_ids`` keeps each row's position in the source file so that errors and predictions can
    point back to it after shuffling and splitting.
    """

    inputs: Inputs
    targets: dict[str, Tensor]
    tasks: list[Task]
    name: str = "data"
    row_ids: Tensor | None = None
    info: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.inputs, Tensor | dict):
            raise TypeError(
                f"{self.name}: inputs must be a tensor or a dict of named tensors, got "
                f"{type(self.inputs).__name__}"
            )
        if self.row_ids is None:
            self.row_ids = torch.arange(batch_len(self.inputs))

    def __len__(self) -> int:
        return batch_len(self.inputs)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def subset(self, index: Tensor | Sequence[int]) -> MultiTaskData:
        idx = torch.as_tensor(index, dtype=torch.long)
        assert self.row_ids is not None
        return MultiTaskData(
            inputs=slice_inputs(self.inputs, idx),
            targets={k: v[idx] for k, v in self.targets.items()},
            tasks=self.tasks,
            name=self.name,
            row_ids=self.row_ids[idx],
            info=self.info,
        )

    def validate(self, split: str = "") -> MultiTaskData:
        """Check shapes, dtypes and values; raise naming the task, row or split that is wrong."""
        where = f"{self.name}{'/' + split if split else ''}"
        n = len(self)
        named = self.inputs if isinstance(self.inputs, dict) else {"": self.inputs}
        for key, value in named.items():
            what = f"input {key!r}" if key else "inputs"
            if value.dtype == torch.bool or value.is_complex():
                raise DataError(f"{where}: {what} must be real numbers, got {value.dtype}")
            if not value.is_floating_point():
                continue  # token ids and category codes: integers by design
            finite = torch.isfinite(value.reshape(n, -1)).all(dim=1)
            if not bool(finite.all()):
                bad = int((~finite).nonzero()[0, 0])
                assert self.row_ids is not None
                raise DataError(
                    f"{where}: {what} contain NaN or inf at row {int(self.row_ids[bad])} "
                    f"({int((~finite).sum())} row(s) in all); impute or drop them first"
                )
        names = self.task_names
        if len(set(names)) != len(names):
            raise DataError(f"{where}: duplicate task names {names}")
        for task in self.tasks:
            if task.name not in self.targets:
                raise DataError(f"{where}: no targets for task {task.name!r}")
            y = self.targets[task.name]
            if y.shape[0] != n:
                raise DataError(
                    f"{where}: task {task.name!r} has {y.shape[0]} targets for {n} inputs"
                )
            try:
                task.validate_targets(y, where)
            except LabelError as err:
                raise DataError(str(err)) from None
            if task.layout == "token" and isinstance(self.inputs, Tensor):  # ids and labels align
                assert self.row_ids is not None
                problem = token_alignment_problem(task, self.inputs, y, self.row_ids.tolist())
                if problem is not None:
                    raise DataError(f"{where}: {problem} (rows are the data's row ids)")
        extra = set(self.targets) - set(names)
        if extra:
            raise DataError(f"{where}: targets for unknown task(s) {sorted(extra)}")
        return self

    def label_counts(self) -> dict[str, int]:
        return {t.name: int(t.label_mask(self.targets[t.name]).sum()) for t in self.tasks}

    def example(self, n: int = 2) -> Inputs:
        """The first ``n`` rows' inputs: what a model is built from (shapes, widths)."""
        return slice_inputs(self.inputs, slice(0, n))

    def with_tasks(self, tasks: Sequence[Task]) -> MultiTaskData:
        """The same rows, keeping only ``tasks`` (a subset of this data's tasks)."""
        return MultiTaskData(
            inputs=self.inputs, targets={t.name: self.targets[t.name] for t in tasks},
            tasks=list(tasks), name=self.name, row_ids=self.row_ids, info=self.info,
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
        """Index-slice batches; see :func:`iterate_batches`."""
        return iterate_batches(
            self, batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last,
            rank=rank, world_size=world_size,
        )


@dataclass
class Splits:
    """Train / validation / test splits sharing one list of tasks (in memory, or Datasets)."""

    train: TaskData
    val: TaskData
    test: TaskData
    info: dict[str, object] = field(default_factory=dict)

    @property
    def tasks(self) -> list[Task]:
        return self.train.tasks

    def validate(self) -> Splits:
        for split, data in (("train", self.train), ("val", self.val), ("test", self.test)):
            data.validate(split)
        for name, count in self.train.label_counts().items():
            if count == 0:
                raise DataError(f"task {name!r} has no label in the training split")
        return self

    def fit_target_scalers(self, mode: str = "per_task") -> Splits:
        """Fit regression scalers on the training split only (never on validation or test).

        ``mode="per_task"`` gives every regression task its own mean and std. ``mode="pooled"``
        gives all standardized regression tasks one mean and std, fitted on their labelled training
        values together. Why pooled: when the tasks predict the same quantity in different groups
        (School: one exam score, one task per school), per-task scaling puts each task on its own
        scale, so a relationship the tasks share (the same slope of score on verbal reasoning in
        every school) looks different in every task, and a per-task shift of the mean (a school
        effect) is removed before the model can learn it. Pooled scaling keeps those comparable.
        """
        if mode == "per_task":
            for task in self.tasks:
                task.fit_target_scaler(self.train.targets[task.name])
            return self
        if mode != "pooled":
            raise DataError(f"target scaling must be 'per_task' or 'pooled', got {mode!r}")
        scaled = [t for t in self.tasks if t.kind is TaskKind.REGRESSION and t.standardize]
        values = [
            self.train.targets[t.name][t.label_mask(self.train.targets[t.name])].double()
            for t in scaled
        ]
        pooled = torch.cat(values) if values else torch.empty(0, dtype=torch.float64)
        if scaled and pooled.numel() == 0:
            raise DataError("pooled target scaling: no regression label in the training split")
        mean = float(pooled.mean()) if pooled.numel() else 0.0
        std = float(pooled.std()) if pooled.numel() > 1 else 1.0
        for task in scaled:
            task.target_mean_ = mean
            task.target_std_ = std if std > 1e-12 else 1.0
        return self


def split_indices(
    n: int, fractions: Sequence[float], seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Row indices of train / val / test: ``randperm`` of a generator seeded with ``seed``, cut at
    the rounded ``fractions`` (the one rule every random split of this package follows)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"split fractions must be 3 non-negative numbers summing to 1: {fractions}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = round(fractions[0] * n)
    n_val = round(fractions[1] * n)
    return perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]


def batch_plan(
    n: int,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Tensor]:
    """The row indices of each of rank ``rank``'s batches of one epoch over ``n`` rows.

    The permutation is drawn from ``generator`` on every rank identically, then rank ``r`` takes
    its slice of every ``world_size * batch_size`` block, so the union of the ranks' batches is
    exactly the single-process epoch (the last incomplete round is dropped under DDP to keep ranks
    in step). Both the in-memory path and the DataLoader path batch by this plan, which is why
    they give the same batches for the same generator state.
    """
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    global_batch = batch_size * world_size
    stop = n - (n % global_batch) if (drop_last or world_size > 1) else n
    for start in range(0, stop, global_batch):
        idx = order[start : start + global_batch][rank * batch_size : (rank + 1) * batch_size]
        if idx.numel() == 0 or (drop_last and idx.numel() < batch_size):
            continue
        yield idx


def random_split(
    data: TaskData,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    *,
    scale_targets: bool = True,
) -> Splits:
    """Shuffle rows with ``seed`` and cut them into train / val / test by ``fractions``.

    Regression tasks get their target scalers fitted on the training part (``scale_targets``), as
    every built-in loader does, so standardized regression trains on the scale it reports.
    """
    train, val, test = split_indices(len(data), fractions, seed)
    splits = Splits(
        train=data.subset(train),
        val=data.subset(val),
        test=data.subset(test),
        info={"split": "random", "seed": seed, "fractions": list(fractions)},
    )
    return splits.fit_target_scalers() if scale_targets else splits


def iterate_batches(
    data: MultiTaskData,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:
    """Yield ``(inputs, targets)`` index slices; under DDP each rank takes a disjoint shard.

    The order and the DDP shards are :func:`batch_plan`'s.
    """
    for idx in batch_plan(
        len(data), batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last,
        rank=rank, world_size=world_size,
    ):
        yield slice_inputs(data.inputs, idx), {k: v[idx] for k, v in data.targets.items()}
