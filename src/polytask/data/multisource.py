"""Several data sets in one model: *sources* over one input space, each labelling some tasks.

A :class:`MultiSourceData` holds named :class:`~polytask.data.base.MultiTaskData` sources with the
same input shape. Source ``s`` labels the tasks in its own ``tasks`` list (one task or a group);
the model has the union of the tasks. When a batch is formed from a source, the targets of every
task the source does not label are filled as missing (``ignore_index``, i.e. -1, for multiclass
tasks; NaN otherwise), so a batch always carries every task key and the training loop, the losses
and the gradient engine treat it like any batch with missing labels.

Target dtypes are made uniform across sources (``int64`` for multiclass, the labelling sources'
floating dtype, or ``float32``, otherwise) so batches of several sources can be concatenated.
The global :class:`~polytask.tasks.Task` of a name is the first source's (or the one passed in
``tasks``); the other sources' tasks of that name must agree on kind, classes and output width.

How batches are drawn from the sources (which source each step, epoch length, DDP shards) is
:mod:`polytask.data.sampling`'s job. :func:`multimnist_two_sources` builds the standard demo: the
MultiMNIST training rows split into a source that labels only the left digit and a disjoint one
that labels only the right digit. :func:`combine_sources` stacks several data sets' own splits (e.g.
two MoleculeNet sets featurised alike), and :func:`sources_by_task` makes one source per task of a
missing-label data set (School: one source per school).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from polytask.data.base import Batch, DataError, MultiTaskData, Splits
from polytask.tasks import Task

__all__ = [
    "MultiSourceData",
    "MultiSourceSplits",
    "combine_sources",
    "multimnist_two_sources",
    "sources_by_task",
]


def _same_task(a: Task, b: Task) -> bool:
    return (
        a.kind == b.kind
        and a.num_classes == b.num_classes
        and a.output_dim == b.output_dim
        and a.ignore_index == b.ignore_index
    )


class MultiSourceData:
    """Named sources sharing one input space, each labelling a subset of the tasks.

    Args:
        sources: ``{name: data}`` or a sequence of data (named by their ``name``), in order.
        tasks: the model's tasks; by default the union of the sources' tasks in order of first
            appearance. Every task must be labelled by at least one source.
        validate: run :meth:`MultiTaskData.validate` on every source.
    """

    def __init__(
        self,
        sources: Mapping[str, MultiTaskData] | Sequence[MultiTaskData],
        tasks: Sequence[Task] | None = None,
        *,
        validate: bool = True,
    ) -> None:
        if isinstance(sources, Mapping):
            items = list(sources.items())
        else:
            items = [(d.name, d) for d in sources]
        if not items:
            raise DataError("MultiSourceData needs at least one source")
        names = [n for n, _ in items]
        if len(set(names)) != len(names) or any(not n for n in names):
            raise DataError(f"source names must be unique and non-empty, got {names}")
        self.sources: dict[str, MultiTaskData] = dict(items)
        first = items[0][1]
        for name, data in items:
            if validate:
                data.validate(name)
            if len(data) == 0:
                raise DataError(f"source {name!r} has no rows")
            if data.inputs.shape[1:] != first.inputs.shape[1:] or data.inputs.dtype != (
                first.inputs.dtype
            ):
                raise DataError(
                    f"source {name!r} has inputs {tuple(data.inputs.shape[1:])} "
                    f"{data.inputs.dtype}, but source {names[0]!r} has "
                    f"{tuple(first.inputs.shape[1:])} {first.inputs.dtype}: all sources must "
                    "share one input space"
                )
        if tasks is None:
            seen: dict[str, Task] = {}
            for _, data in items:
                for t in data.tasks:
                    seen.setdefault(t.name, t)
            tasks = list(seen.values())
        self.tasks: list[Task] = list(tasks)
        by_name = {t.name: t for t in self.tasks}
        self._by_name = by_name
        if len(by_name) != len(self.tasks):
            raise DataError(f"duplicate task names {self.task_names}")
        self._labelled: dict[str, list[str]] = {}
        self._template: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for name, data in items:
            own = []
            for t in data.tasks:
                if t.name not in by_name:
                    raise DataError(
                        f"source {name!r} labels task {t.name!r}, which is not one of the tasks "
                        f"{self.task_names}"
                    )
                if not _same_task(t, by_name[t.name]):
                    raise DataError(
                        f"source {name!r} defines task {t.name!r} differently (kind, classes, "
                        "output width or ignore_index) from the model's task of that name"
                    )
                y = data.targets[t.name]
                shape = tuple(y.shape[1:])
                dtype = self._dtype(by_name[t.name], y)
                if t.name in self._template and self._template[t.name][0] != shape:
                    raise DataError(
                        f"task {t.name!r}: source {name!r} has targets of shape {shape} per row, "
                        f"another source {self._template[t.name][0]}"
                    )
                self._template.setdefault(t.name, (shape, dtype))
                own.append(t.name)
            self._labelled[name] = own
        unlabelled = [t for t in self.task_names if t not in self._template]
        if unlabelled:
            raise DataError(f"no source labels task(s) {unlabelled}")

    @staticmethod
    def _dtype(task: Task, y: Tensor) -> torch.dtype:
        if task.kind_spec.index_labels:  # multiclass, segmentation, token classification
            return torch.long
        return y.dtype if y.is_floating_point() else torch.float32

    # ------------------------------------------------------------------ description
    @property
    def names(self) -> list[str]:
        return list(self.sources)

    @property
    def sizes(self) -> list[int]:
        return [len(d) for d in self.sources.values()]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def __len__(self) -> int:
        """The number of sources."""
        return len(self.sources)

    def labelled_tasks(self, source: str) -> list[str]:
        """The tasks ``source`` labels (the others are filled as missing in its batches)."""
        return list(self._labelled[source])

    def _index(self, source: int | str) -> str:
        if isinstance(source, str):
            if source not in self.sources:
                raise KeyError(f"unknown source {source!r}; sources: {self.names}")
            return source
        return self.names[source]

    # ------------------------------------------------------------------ batches
    def missing(self, task: str, n: int) -> Tensor:
        """``n`` rows of 'no label' for ``task``: its kind's marker (``ignore_index`` or NaN)."""
        t = self._by_name[task]
        shape, dtype = self._template[task]
        return torch.full((n, *shape), t.missing_marker, dtype=dtype)

    def batch(self, source: int | str, index: Tensor) -> Batch:
        """Rows ``index`` of ``source`` with every task's targets (missing ones filled)."""
        name = self._index(source)
        data = self.sources[name]
        idx = torch.as_tensor(index, dtype=torch.long)
        own = set(self._labelled[name])
        targets = {}
        for task in self.task_names:
            if task in own:
                targets[task] = data.targets[task][idx].to(self._template[task][1])
            else:
                targets[task] = self.missing(task, int(idx.numel())).to(data.inputs.device)
        return data.inputs[idx], targets

    def concat(self, batches: Sequence[Batch]) -> Batch:
        """One batch made of several (from different sources), rows in order."""
        if len(batches) == 1:
            return batches[0]
        inputs = torch.cat([b[0] for b in batches])
        return inputs, {t: torch.cat([b[1][t] for b in batches]) for t in self.task_names}

    def gather(self, parts: Sequence[tuple[int | str, Tensor]]) -> Batch:
        """``concat([batch(s, idx) for s, idx in parts])``, built task by task.

        Why: with many sources (School: 139, each labelling one task) filling every source's
        missing tasks separately costs sources x tasks small tensors per step; here each task's
        column is allocated once as missing and only the labelling sources' rows are written.
        """
        if len(parts) == 1:
            return self.batch(*parts[0])
        names = [self._index(s) for s, _ in parts]
        idx = [torch.as_tensor(i, dtype=torch.long) for _, i in parts]
        counts = [int(i.numel()) for i in idx]
        starts = [0, *itertools.accumulate(counts)]
        inputs = torch.cat([self.sources[n].inputs[i] for n, i in zip(names, idx, strict=True)])
        targets = {t: self.missing(t, starts[-1]).to(inputs.device) for t in self.task_names}
        for k, (n, i) in enumerate(zip(names, idx, strict=True)):
            for task in self._labelled[n]:
                targets[task][starts[k] : starts[k + 1]] = self.sources[n].targets[task][i]
        return inputs, targets

    def to_multitask(self, name: str = "multisource") -> MultiTaskData:
        """Every source's rows in one :class:`MultiTaskData` (missing labels filled).

        ``info["source"]`` holds each row's source index, ``row_ids`` the row ids in its source.
        """
        inputs, targets = self.gather([(s, torch.arange(n)) for s, n in enumerate(self.sizes)])
        row_ids = torch.cat([d.row_ids for d in self.sources.values()])  # type: ignore[misc]
        source = torch.cat([torch.full((n,), s) for s, n in enumerate(self.sizes)])
        return MultiTaskData(
            inputs=inputs,
            targets=targets,
            tasks=self.tasks,
            name=name,
            row_ids=row_ids,
            info={"source": source, "sources": self.names},
        )

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{n}: {len(d)} rows labelling {self._labelled[n]}" for n, d in self.sources.items()
        )
        return f"MultiSourceData({parts})"


class MultiSourceSplits(NamedTuple):
    """Training sources, and the (fully labelled) validation and test data."""

    train: MultiSourceData
    val: MultiTaskData
    test: MultiTaskData


def multimnist_two_sources(
    splits: Splits, *, seed: int = 0, left_fraction: float = 0.5
) -> MultiSourceSplits:
    """MultiMNIST as two data sets: one labels the left digit only, a disjoint one the right.

    The training rows of ``splits`` (tasks ``left`` and ``right``, e.g. from
    :func:`polytask.data.multimnist.load_multimnist`) are shuffled with ``seed`` and cut in two:
    source ``"left"`` (the first ``left_fraction`` of the rows) labels only ``left``, source
    ``"right"`` (the rest) only ``right``; in batches the other digit is -1 (missing). Validation and
    test keep both labels, so the model is evaluated on both tasks everywhere.
    """
    tasks = {t.name: t for t in splits.tasks}
    if set(tasks) != {"left", "right"}:
        raise DataError(f"expected the MultiMNIST tasks 'left' and 'right', got {sorted(tasks)}")
    if not 0.0 < left_fraction < 1.0:
        raise DataError(f"left_fraction must be in (0, 1), got {left_fraction}")
    train = splits.train
    n = len(train)
    cut = round(left_fraction * n)
    if cut < 1 or cut > n - 1:
        raise DataError(f"{n} training rows cannot be split into two non-empty sources")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    assert train.row_ids is not None

    def source(name: str, rows: Tensor) -> MultiTaskData:
        return MultiTaskData(
            inputs=train.inputs[rows],
            targets={name: train.targets[name][rows]},
            tasks=[tasks[name]],
            name=name,
            row_ids=train.row_ids[rows],  # type: ignore[index]
            info={**train.info, "source_of": train.name},
        )

    sources = MultiSourceData(
        {"left": source("left", perm[:cut]), "right": source("right", perm[cut:])},
        tasks=splits.tasks,
    )
    return MultiSourceSplits(train=sources, val=splits.val, test=splits.test)


def _merged(parts: Mapping[str, MultiTaskData], tasks: Sequence[Task], name: str) -> MultiTaskData:
    """Validation or test parts of several sources as one fully-keyed :class:`MultiTaskData`."""
    return MultiSourceData(parts, tasks=tasks, validate=False).to_multitask(name)


def combine_sources(named: Mapping[str, Splits]) -> MultiSourceSplits:
    """Several data sets, each with its own train / val / test split, as one multi-source problem.

    Why: a model trained on several data sets is still selected and scored on every task, so the
    validation (test) data is the union of the sources' validation (test) parts, each row keeping
    only its own source's labels. Sources that label a task of the same name must agree on its
    kind and width (:class:`MultiSourceData` checks); a regression task labelled by several sources
    gets its target scaler re-fitted on the union of their *training* targets, so no source's
    scale silently wins.
    """
    if not named:
        raise DataError("combine_sources needs at least one named source")
    train = MultiSourceData({n: s.train for n, s in named.items()})
    tasks = train.tasks
    shared = {
        t.name for t in tasks if sum(t.name in s.train.targets for s in named.values()) > 1
    }
    if shared:
        pooled = train.to_multitask()
        for t in tasks:
            if t.name in shared:
                t.fit_target_scaler(pooled.targets[t.name])
    return MultiSourceSplits(
        train=train,
        val=_merged({n: s.val for n, s in named.items()}, tasks, "val"),
        test=_merged({n: s.test for n, s in named.items()}, tasks, "test"),
    )


def sources_by_task(splits: Splits) -> MultiSourceSplits:
    """One training source per task: the rows labelled for it, labelling only that task.

    Why: a missing-label data set such as School (each student labelled for their own school only)
    *is* several data sets stacked; serving it as one source per task lets the samplers of
    :mod:`polytask.data.sampling` decide how often each task is trained, instead of the row mix of
    the stacked table. A row labelled for several tasks joins each of their sources (labelled
    there for that task only). Validation and test are kept as they are.
    """
    train = splits.train
    assert train.row_ids is not None
    sources: dict[str, MultiTaskData] = {}
    for task in splits.tasks:
        y = train.targets[task.name]
        rows = task.label_mask(y).reshape(len(train), -1).any(dim=1).nonzero().flatten()
        if rows.numel() == 0:
            raise DataError(f"task {task.name!r} has no labelled training row")
        sources[task.name] = MultiTaskData(
            inputs=train.inputs[rows],
            targets={task.name: y[rows]},
            tasks=[task],
            name=task.name,
            row_ids=train.row_ids[rows],
            info=train.info,
        )
    return MultiSourceSplits(
        train=MultiSourceData(sources, tasks=splits.tasks), val=splits.val, test=splits.test
    )
