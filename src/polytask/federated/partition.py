"""Which rows each client holds: the federation's data, partitioned and checked before any round.

A client holds its own training, validation and test rows (:class:`ClientData`); every client's
data carries every task of the federation (labels it lacks are missing, as in any polytask batch),
so every client builds the same model and the engine masks the tasks a client cannot train.

* ``by_source``: one client per data source (``data.sources``, or a several-datasets loader such as
  ``school_sources``). A client's training rows are its source's; its validation and test rows are
  those of its source (when the split records each row's source) or else those labelled for the
  tasks only its source labels. School: client ``school_017`` holds that school's students.
* ``iid``: every split's rows shuffled with the run seed and dealt to N clients.
* ``missing``: a client's labels of some tasks removed (a client that lacks tasks entirely).
* ``merge_tasks``: clients that each label one task of the same quantity train it as *one* task;
  with personal heads each client still has its own head of it, without them one global head.

Everything that can be wrong is refused here, naming the client or task: a client without a
training label, a task no client labels, an unknown client or task in ``missing``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from polytask.data.base import DataError, MultiTaskData, TaskData
from polytask.federated.config import FederatedConfig
from polytask.tasks import Task

__all__ = ["ClientData", "FederatedError", "Federation", "partition_clients"]


class FederatedError(ValueError):
    """A federation that cannot run; the message names the client, task, round or key."""


@dataclass
class ClientData:
    """One client's rows: training, validation and test, each keyed by every federation task."""

    name: str
    train: MultiTaskData
    val: MultiTaskData
    test: MultiTaskData

    def labelled_tasks(self, split: str = "train") -> list[str]:
        data: MultiTaskData = getattr(self, split)
        return [name for name, n in data.label_counts().items() if n > 0]


@dataclass
class Federation:
    """The tasks every client's model has, and the clients in partition-id order."""

    tasks: list[Task]
    clients: list[ClientData]
    info: dict[str, object] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.clients]


def partition_clients(config: FederatedConfig, seed: int) -> Federation:
    """Load the configured data with ``seed`` and deal it to clients (``federated.partition``)."""
    from polytask.experiment import load_sources

    settings = config.federated
    try:
        splits, sources = load_sources(config.experiment(), seed)
    except DataError as err:
        raise FederatedError(f"data: {err}") from None
    train, val, test = (
        _in_memory(d, s)
        for d, s in ((splits.train, "train"), (splits.val, "val"), (splits.test, "test"))
    )
    tasks = list(splits.tasks)
    if settings.partition.kind == "by_source":
        if sources is None:
            raise FederatedError(
                "federated.partition: by_source needs several data sources (data.sources, or a "
                "several-datasets loader such as school_sources); this data is one data set, use "
                "{iid: {clients: N}}"
            )
        owner = {name: sources.labelled_tasks(name) for name in sources.names}
        clients = [
            ClientData(name, _rows(train, train_rows), _rows(val, val_rows), _rows(test, test_rows))
            for name, train_rows, val_rows, test_rows in zip(
                sources.names,
                _by_recorded_source(train, len(owner)),
                _by_owner(val, owner, "val"),
                _by_owner(test, owner, "test"),
                strict=True,
            )
        ]
    else:
        assert settings.partition.iid is not None
        n = settings.partition.iid.clients
        parts = [_dealt(d, n, seed + k) for k, d in enumerate((train, val, test))]
        clients = [
            ClientData(
                f"client_{i:03d}",
                *(_rows(d, p[i]) for d, p in zip((train, val, test), parts, strict=True)),
            )
            for i in range(n)
        ]
    clients = _remove_labels(clients, settings.missing, [t.name for t in tasks])
    if settings.merge_tasks is not None:
        tasks, clients = _merge(clients, tasks, settings.merge_tasks)
    _check(clients, tasks)
    return Federation(
        tasks=tasks,
        clients=clients,
        info={"partition": settings.partition.kind, "seed": seed, "source_info": dict(splits.info)},
    )


def _in_memory(data: TaskData, split: str) -> MultiTaskData:
    if not isinstance(data, MultiTaskData):
        raise FederatedError(
            f"{split}: federated runs partition in-memory data (MultiTaskData); this loader gives "
            f"{type(data).__name__}"
        )
    return data


def _rows(data: MultiTaskData, rows: Tensor) -> MultiTaskData:
    sub = data.subset(rows)
    sub.info = {k: v for k, v in data.info.items() if k not in ("source", "sources")}
    return sub


def _by_recorded_source(data: MultiTaskData, n_sources: int) -> list[Tensor]:
    """Rows of each source, from the ``info["source"]`` index the stacking recorded per row."""
    source = data.info.get("source")
    if not isinstance(source, Tensor) or source.numel() != len(data):
        raise FederatedError("training rows do not record their source; cannot partition by source")
    return [(source == k).nonzero().flatten() for k in range(n_sources)]


def _by_owner(data: MultiTaskData, owner: dict[str, list[str]], split: str) -> list[Tensor]:
    """Validation / test rows per source: recorded per row, or else by the tasks a row labels.

    A row labelled only for tasks that one source alone labels belongs to that source; a row
    labelled for tasks of two sources, or a task two sources label (with no recorded source),
    cannot be assigned and is refused rather than guessed.
    """
    names = list(owner)
    recorded = data.info.get("source")
    if isinstance(recorded, Tensor) and recorded.numel() == len(data):
        return [(recorded == k).nonzero().flatten() for k in range(len(names))]
    task_owner: dict[str, int] = {}
    for k, name in enumerate(names):
        for task in owner[name]:
            if task in task_owner:
                raise FederatedError(
                    f"{split}: task {task!r} is labelled by sources {names[task_owner[task]]!r} "
                    f"and {name!r} and the split does not record each row's source; its rows "
                    "cannot be given to one client"
                )
            task_owner[task] = k
    row_owner = torch.full((len(data),), -1, dtype=torch.long)
    for task in data.tasks:
        labelled = task.label_mask(data.targets[task.name]).reshape(len(data), -1).any(dim=1)
        if not bool(labelled.any()):
            continue
        k = task_owner.get(task.name, -2)
        clash = labelled & (row_owner >= 0) & (row_owner != k)
        if bool(clash.any()):
            row = int(data.row_ids[clash.nonzero()[0, 0]])  # type: ignore[index]
            raise FederatedError(
                f"{split}: row {row} is labelled for tasks of two sources; it cannot be given to "
                "one client"
            )
        row_owner[labelled] = k
    return [(row_owner == k).nonzero().flatten() for k in range(len(names))]


def _dealt(data: MultiTaskData, n: int, seed: int) -> list[Tensor]:
    if len(data) < n:
        raise FederatedError(f"{data.name}: {len(data)} rows cannot be dealt to {n} clients")
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return [part.sort().values for part in torch.tensor_split(perm, n)]


def _remove_labels(
    clients: list[ClientData], missing: dict[str, list[str]], task_names: list[str]
) -> list[ClientData]:
    by_name = {c.name: c for c in clients}
    for client, tasks in missing.items():
        if client not in by_name:
            raise FederatedError(
                f"federated.missing: unknown client {client!r}; clients: {sorted(by_name)[:10]}"
                f"{' ...' if len(by_name) > 10 else ''}"
            )
        unknown = [t for t in tasks if t not in task_names]
        if unknown:
            raise FederatedError(
                f"federated.missing.{client}: unknown task(s) {unknown}; tasks: {task_names}"
            )
        for split in ("train", "val", "test"):
            data: MultiTaskData = getattr(by_name[client], split)
            for task in data.tasks:
                if task.name in tasks:
                    data.targets[task.name] = torch.full_like(
                        data.targets[task.name], task.missing_marker
                    )
    return clients


def _merge(
    clients: list[ClientData], tasks: list[Task], merged: str
) -> tuple[list[Task], list[ClientData]]:
    """Each client's one task renamed ``merged`` (the same quantity in every client)."""
    by_name = {t.name: t for t in tasks}
    own: dict[str, str] = {}
    for c in clients:
        labelled = c.labelled_tasks("train")
        if len(labelled) != 1:
            raise FederatedError(
                f"federated.merge_tasks: client {c.name!r} labels {len(labelled)} tasks "
                f"({labelled}); merging needs exactly one per client"
            )
        own[c.name] = labelled[0]
    first = by_name[own[clients[0].name]]
    for c in clients:
        t = by_name[own[c.name]]
        if (t.kind, t.output_dim) != (first.kind, first.output_dim):
            raise FederatedError(
                f"federated.merge_tasks: client {c.name!r}'s task {t.name!r} is {t.kind.value} "
                f"with {t.output_dim} output(s), unlike {first.name!r}; only one quantity merges"
            )
    task = dataclasses.replace(first, name=merged)

    def renamed(data: MultiTaskData, source: str) -> MultiTaskData:
        return MultiTaskData(
            inputs=data.inputs,
            targets={merged: data.targets[source]},
            tasks=[task],
            name=data.name,
            row_ids=data.row_ids,
            info=data.info,
        )

    out = [
        ClientData(c.name, *(renamed(getattr(c, s), own[c.name]) for s in ("train", "val", "test")))
        for c in clients
    ]
    return [task], out


def _check(clients: list[ClientData], tasks: list[Task]) -> None:
    if not clients:
        raise FederatedError("the partition gives no client")
    labelled: set[str] = set()
    for c in clients:
        own = c.labelled_tasks("train")
        if not own:
            raise FederatedError(
                f"client {c.name!r} holds no training label for any task "
                f"({len(c.train)} training rows); it cannot train"
            )
        labelled.update(own)
    unlabelled = [t.name for t in tasks if t.name not in labelled]
    if unlabelled:
        raise FederatedError(f"no client holds a training label of task(s) {unlabelled}")
