"""Meta-learning an initialisation for new tasks: Reptile and first-order MAML, measured honestly.

Question answered: given a new task with only k labelled examples, which starting point adapts
best: a random network (training from scratch), the trunk of a multi-task model trained on the
other tasks (plus the mean of its heads), or an initialisation meta-learned for fast adaptation?

* **Reptile** (Nichol, Achiam & Schulman 2018): for a sampled task, take a few SGD steps from the
  initialisation θ to φ, then move θ towards φ: ``θ <- θ + ε (φ - θ)`` (averaged over a meta-batch
  of tasks, ε annealed linearly to 0). No second derivatives, no support / query split.
* **First-order MAML** (Finn, Abbeel & Levine 2017, first-order variant): adapt θ to φ on a support
  batch, take the gradient of a disjoint query batch's loss *at φ* and apply it to θ (Adam).

The data set's tasks are split into three disjoint groups by seed: meta-training tasks (the
initialisations and the multi-task model learn from them), validation tasks (the adaptation
learning rate and number of steps of every method are chosen on them) and held-out test tasks.
On a held-out task a seeded permutation of its rows gives the support set (the first k rows) and
the query set (every row after the largest k, so every k is scored on the same rows); adaptation
reads the support rows only, and the query rows are scored once with the choices already fixed.
Every method adapts with the same procedure (full-batch SGD on the support rows), so the methods
differ only by where they start.

Data:

* School (ILEA, 139 schools as regression tasks; inputs standardised and targets scaled with
  statistics of the meta-training tasks' rows only). Scores are in exam-score units.
* Tox21 (12 binary assays with missing labels, ECFP4 bits). Molecules are split too: a seeded
  ``heldout_molecules`` share of them is reserved as the query (test) molecules of the held-out
  assays and is never seen by any meta-training or multi-task training; the support set of a
  held-out assay is k of its labelled *other* molecules, balanced (k/2 positives, k/2 negatives:
  with 3-16 % positives a stratified draw of k = 10 would often hold no positive at all), drawn
  ``episodes`` times per assay. Scores: ROC-AUC on each held-out assay's query molecules (its
  labelled held-out molecules), the mean over episodes.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

if TYPE_CHECKING:
    from polytask.data.base import Splits

__all__ = [
    "METHODS",
    "MetaConfig",
    "MetaResult",
    "MetaTask",
    "adapt",
    "fomaml_gradient",
    "heldout_predictions",
    "load_meta_config",
    "reptile_step",
    "run_meta",
    "school_meta_tasks",
    "tox21_meta_tasks",
]

METHODS = ("scratch", "mtl", "reptile", "fomaml")
#: Data sets whose tasks ``polytask meta`` can use, and their task kind.
DATASETS = {"school": "regression", "tox21": "binary"}
Kind = Literal["regression", "binary"]


# ---------------------------------------------------------------------------------- config
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MetaTraining(_Strict):
    """Meta-training of the Reptile / FOMAML initialisations."""

    iterations: int = Field(1000, ge=1, description="meta-updates")
    meta_batch: int = Field(5, ge=1, description="tasks per meta-update")
    inner_steps: int = Field(5, ge=1, description="SGD steps from θ on each sampled task")
    inner_lr: float = Field(0.02, gt=0, description="learning rate of the inner SGD steps")
    batch_size: int = Field(10, ge=1, description="rows per inner step (and per FOMAML query)")
    reptile_lr: float = Field(0.5, gt=0, le=1, description="Reptile ε at the start (annealed to 0)")
    fomaml_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the FOMAML outer step")


class MTLTraining(_Strict):
    """The multi-task model on the meta-training tasks (polytask's own training loop)."""

    epochs: int = Field(20, ge=1)
    lr: float = Field(2e-3, gt=0)
    batch_size: int = Field(128, ge=1)
    weight_decay: float = Field(0.0, ge=0)


class AdaptGrid(_Strict):
    """Adaptation on k support rows: full-batch SGD; (steps, lr) chosen on validation tasks."""

    steps: list[int] = Field(default_factory=lambda: [10, 40], min_length=1)
    lr: list[float] = Field(default_factory=lambda: [0.01, 0.05], min_length=1)


class MetaConfig(_Strict):
    """``polytask meta CONFIG``: the tasks, the methods compared, the shots, the seeds."""

    name: str = "meta"
    dataset: Literal["school", "tox21"] = Field(
        "school", description="the tasks: school (139 schools) or tox21 (12 assays)"
    )
    methods: list[Literal["scratch", "mtl", "reptile", "fomaml"]] = Field(
        default_factory=lambda: list(METHODS), min_length=1
    )
    shots: list[int] = Field(default_factory=lambda: [5, 10, 20], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    val_fraction: float = Field(0.2, gt=0, lt=1, description="tasks used to choose adaptation")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="held-out tasks, scored once")
    hidden: list[int] = Field(default_factory=lambda: [32], min_length=1)
    episodes: int = Field(
        1, ge=1, description="support draws per validation / held-out task (scores averaged)"
    )
    heldout_molecules: float = Field(
        0.2, gt=0, lt=1, description="tox21: share of molecules reserved as query molecules"
    )
    max_rows: int | None = Field(
        None, ge=10, description="tox21: read only the first rows of the file (tests, smoke runs)"
    )
    meta: MetaTraining = Field(default_factory=MetaTraining)
    mtl: MTLTraining = Field(default_factory=MTLTraining)
    adapt: AdaptGrid = Field(default_factory=AdaptGrid)
    output_dir: str = "runs"

    @model_validator(mode="after")
    def _check(self) -> MetaConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                "val_fraction + test_fraction must leave >= 10% of tasks to meta-train"
            )
        if any(k < 1 for k in self.shots):
            raise ValueError(f"shots must be >= 1, got {self.shots}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods listed twice: {self.methods}")
        if DATASETS[self.dataset] == "binary" and any(k % 2 for k in self.shots):
            raise ValueError(
                f"shots {self.shots}: {self.dataset}'s support sets are balanced (k/2 positives, "
                "k/2 negatives), so every k must be even"
            )
        if self.dataset != "tox21" and self.max_rows is not None:
            raise ValueError("max_rows applies to dataset 'tox21' only")
        return self


def load_meta_config(path: str | Path) -> MetaConfig:
    import yaml
    from pydantic import ValidationError

    raw = yaml.safe_load(Path(path).read_text()) or {}
    try:
        return MetaConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{path}: {where}: {first['msg']}") from None


# ---------------------------------------------------------------------------------- tasks
@dataclass
class MetaTask:
    """One task's rows: inputs ``[n, d]`` and targets ``[n]`` (already scaled; binary: 0 / 1).

    ``query_rows``: rows reserved as the query set (never support, never meta-trained on); None
    means support and query are both drawn from a permutation of all rows (School).
    ``ids``: a global row id per row (Tox21: the molecule), so that tasks sharing rows build one
    multi-task table; None means every task's rows are its own.
    """

    name: str
    x: Tensor
    y: Tensor
    kind: Kind = "regression"
    query_rows: Tensor | None = None
    ids: Tensor | None = None


def school_meta_tasks(
    seed: int, val_fraction: float, test_fraction: float, path: str | None = None
) -> tuple[list[MetaTask], list[MetaTask], list[MetaTask], dict[str, Any]]:
    """School's schools as tasks, split into meta-train / validation / test schools by ``seed``.

    Inputs: the bias column dropped; the non-binary columns standardised and the target centred
    and scaled with the meta-training schools' rows only (no statistic sees a held-out school).
    """
    from polytask.data.school import load_school_raw, school_task_names

    raw = load_school_raw(path)
    names = school_task_names(len(raw))
    order = np.random.default_rng(seed).permutation(len(raw))
    n_test = max(1, round(test_fraction * len(raw)))
    n_val = max(1, round(val_fraction * len(raw)))
    test_idx, val_idx, train_idx = (
        order[:n_test],
        order[n_test : n_test + n_val],
        order[n_test + n_val :],
    )
    x_train = np.concatenate([raw[i][0][:, :-1] for i in train_idx])
    y_train = np.concatenate([raw[i][1] for i in train_idx])
    binary = np.all((x_train == 0) | (x_train == 1), axis=0)
    mean = np.where(binary, 0.0, x_train.mean(axis=0))
    std = np.where(binary, 1.0, x_train.std(axis=0))
    std = np.where(std > 1e-12, std, 1.0)
    y_mean, y_std = float(y_train.mean()), float(y_train.std())

    def make(i: int) -> MetaTask:
        x, y = raw[i]
        xs = torch.from_numpy(((x[:, :-1] - mean) / std).astype(np.float32))
        ys = torch.from_numpy(((y - y_mean) / y_std).astype(np.float32))
        return MetaTask(names[i], xs, ys)

    info = {"y_mean": y_mean, "y_std": y_std, "test_tasks": [names[i] for i in sorted(test_idx)],
            "val_tasks": [names[i] for i in sorted(val_idx)], "train_tasks": len(train_idx)}  # fmt: skip
    return ([make(i) for i in train_idx], [make(i) for i in val_idx],
            [make(i) for i in test_idx], info)  # fmt: skip


def tox21_meta_tasks(
    seed: int,
    val_fraction: float,
    test_fraction: float,
    path: str | None = None,
    *,
    heldout_molecules: float = 0.2,
    max_rows: int | None = None,
) -> tuple[list[MetaTask], list[MetaTask], list[MetaTask], dict[str, Any]]:
    """Tox21's 12 assays as binary tasks, split into meta-train / validation / test assays by
    ``seed``; the molecules split by ``seed`` into support molecules and query molecules.

    Meta-training assays keep only their labelled support molecules (the query molecules never
    reach a meta-training or multi-task update); validation and held-out assays keep every labelled
    molecule, with the labelled query molecules as ``query_rows``. Inputs: ECFP4 bits (2,048).
    """
    from polytask.data import load_moleculenet

    splits = load_moleculenet("tox21", path, split="random", seed=0, max_rows=max_rows)
    parts = (splits.train, splits.val, splits.test)
    x_all = torch.cat([p.inputs for p in parts]).float()  # type: ignore[misc]
    ids = torch.cat([p.row_ids for p in parts])  # type: ignore[misc]
    order = ids.argsort()  # file order, whatever the loader's split was
    x_all, ids = x_all[order], ids[order]
    names = [t.name for t in splits.tasks]
    labels = {n: torch.cat([p.targets[n] for p in parts])[order].float() for n in names}
    gen = torch.Generator().manual_seed(seed)
    query = torch.zeros(len(ids), dtype=torch.bool)
    query[torch.randperm(len(ids), generator=gen)[: round(heldout_molecules * len(ids))]] = True
    perm = np.random.default_rng(seed).permutation(len(names))
    n_test = max(1, round(test_fraction * len(names)))
    n_val = max(1, round(val_fraction * len(names)))
    test_idx, val_idx, train_idx = (
        perm[:n_test],
        perm[n_test : n_test + n_val],
        perm[n_test + n_val :],
    )

    def make(i: int, held_out: bool) -> MetaTask:
        y = labels[names[i]]
        keep = ~torch.isnan(y) & (torch.ones_like(query) if held_out else ~query)
        rows = keep.nonzero().flatten()
        task = MetaTask(names[i], x_all[rows], y[rows], "binary", ids=ids[rows])
        if held_out:
            task.query_rows = query[rows].nonzero().flatten()
        return task

    info = {"y_mean": 0.0, "y_std": 1.0, "test_tasks": [names[i] for i in sorted(test_idx)],
            "val_tasks": [names[i] for i in sorted(val_idx)],
            "train_tasks": [names[i] for i in sorted(train_idx)],
            "molecules": len(ids), "query_molecules": int(query.sum())}  # fmt: skip
    return ([make(i, False) for i in train_idx], [make(i, True) for i in val_idx],
            [make(i, True) for i in test_idx], info)  # fmt: skip


def meta_tasks(
    cfg: MetaConfig, seed: int, data_path: str | None
) -> tuple[list[MetaTask], list[MetaTask], list[MetaTask], dict[str, Any]]:
    """The configured data set's tasks, split for ``seed``."""
    if cfg.dataset == "tox21":
        return tox21_meta_tasks(
            seed, cfg.val_fraction, cfg.test_fraction, data_path,
            heldout_molecules=cfg.heldout_molecules, max_rows=cfg.max_rows,
        )  # fmt: skip
    return school_meta_tasks(seed, cfg.val_fraction, cfg.test_fraction, data_path)


# ---------------------------------------------------------------------------------- networks
def make_net(in_features: int, hidden: Sequence[int]) -> nn.Sequential:
    """The single-task network every method adapts: the MLP trunk and one linear output."""
    from polytask.models.trunks import MLP

    trunk = MLP(in_features, hidden=list(hidden))
    return nn.Sequential(trunk, nn.Linear(trunk.out_features, 1))


def _loss(net: nn.Module, x: Tensor, y: Tensor, kind: Kind = "regression") -> Tensor:
    """Mean squared error (regression) or binary cross-entropy on the logit (binary)."""
    out = net(x).squeeze(-1)
    if kind == "binary":
        return nn.functional.binary_cross_entropy_with_logits(out, y)
    return torch.mean((out - y) ** 2)


def _sgd(
    net: nn.Module, x: Tensor, y: Tensor, steps: int, lr: float, kind: Kind = "regression"
) -> None:
    params = [p for p in net.parameters() if p.requires_grad]
    for _ in range(steps):
        grads = torch.autograd.grad(_loss(net, x, y, kind), params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(lr * g)


def adapt(
    init: nn.Module,
    support_x: Tensor,
    support_y: Tensor,
    steps: int,
    lr: float,
    kind: Kind = "regression",
) -> nn.Module:
    """A copy of ``init`` after ``steps`` full-batch SGD steps on the support rows only.

    Its signature is the discipline: nothing but the k support rows reaches the adaptation.
    """
    net = copy.deepcopy(init)
    net.train()
    _sgd(net, support_x, support_y, steps, lr, kind)
    net.eval()
    return net


def reptile_step(
    net: nn.Module,
    task_batches: Sequence[Sequence[tuple[Tensor, Tensor]]],
    inner_lr: float,
    epsilon: float,
    kind: Kind = "regression",
) -> None:
    """One Reptile meta-update, in place: ``θ <- θ + ε (mean_tasks φ_task - θ)``.

    ``task_batches``: per task of the meta-batch, the batches of its inner SGD steps (one step
    per batch, learning rate ``inner_lr``).
    """
    theta = [p.detach().clone() for p in net.parameters()]
    delta = [torch.zeros_like(p) for p in theta]
    for batches in task_batches:
        with torch.no_grad():
            for p, t in zip(net.parameters(), theta, strict=True):
                p.copy_(t)
        for x, y in batches:
            _sgd(net, x, y, 1, inner_lr, kind)
        with torch.no_grad():
            for d, p, t in zip(delta, net.parameters(), theta, strict=True):
                d.add_(p - t)
    with torch.no_grad():
        for p, t, d in zip(net.parameters(), theta, delta, strict=True):
            p.copy_(t + epsilon * d / len(task_batches))


def fomaml_gradient(
    net: nn.Module,
    support: Sequence[tuple[Tensor, Tensor]],
    query: tuple[Tensor, Tensor],
    inner_lr: float,
    kind: Kind = "regression",
) -> list[Tensor]:
    """First-order MAML: the query loss's gradient at the adapted φ (θ left unchanged)."""
    adapted = copy.deepcopy(net)
    for x, y in support:
        _sgd(adapted, x, y, 1, inner_lr, kind)
    params = list(adapted.parameters())
    return list(torch.autograd.grad(_loss(adapted, *query, kind), params))


def _draw(task: MetaTask, rows: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """``n`` of ``rows`` with replacement; binary tasks half positives, half negatives, as the
    held-out support sets are (meta-training episodes then look like the test episodes)."""
    if task.kind != "binary":
        return rows[torch.randint(len(rows), (min(n, len(rows)),), generator=gen)]
    y = task.y[rows]
    pos, neg = rows[y == 1], rows[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"task {task.name!r}: meta-training rows hold only one class")
    half = max(1, n // 2)
    return torch.cat([pos[torch.randint(len(pos), (half,), generator=gen)],
                      neg[torch.randint(len(neg), (n - half or 1,), generator=gen)]])  # fmt: skip


def _task_batches(
    task: MetaTask, steps: int, batch: int, gen: torch.Generator, rows: Tensor | None = None
) -> list[tuple[Tensor, Tensor]]:
    rows = torch.arange(len(task.y)) if rows is None else rows
    out = []
    for _ in range(steps):
        idx = _draw(task, rows, batch, gen)
        out.append((task.x[idx], task.y[idx]))
    return out


def meta_train(method: str, tasks: Sequence[MetaTask], cfg: MetaConfig, seed: int) -> nn.Module:
    """Reptile or FOMAML on the meta-training tasks; returns the learnt initialisation."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = make_net(tasks[0].x.shape[1], cfg.hidden)
    kind = tasks[0].kind
    m = cfg.meta
    opt = torch.optim.Adam(net.parameters(), lr=m.fomaml_lr) if method == "fomaml" else None
    for it in range(m.iterations):
        picks = torch.randint(len(tasks), (m.meta_batch,), generator=gen).tolist()
        if method == "reptile":
            eps = m.reptile_lr * (1 - it / m.iterations)
            batches = [_task_batches(tasks[i], m.inner_steps, m.batch_size, gen) for i in picks]
            reptile_step(net, batches, m.inner_lr, eps, kind)
            continue
        assert opt is not None
        total = [torch.zeros_like(p) for p in net.parameters()]
        for i in picks:
            task = tasks[i]
            perm = torch.randperm(len(task.y), generator=gen)
            half = len(perm) // 2  # support and query rows drawn from disjoint halves
            if kind == "binary":
                qry = _draw(task, perm[half:], m.batch_size, gen)
            else:
                qry = perm[half:][: m.batch_size]
            grads = fomaml_gradient(
                net,
                _task_batches(task, m.inner_steps, m.batch_size, gen, rows=perm[:half]),
                (task.x[qry], task.y[qry]),
                m.inner_lr,
                kind,
            )
            for t, g in zip(total, grads, strict=True):
                t.add_(g / len(picks))
        opt.zero_grad()
        for p, g in zip(net.parameters(), total, strict=True):
            p.grad = g
        opt.step()
    return net


def _mtl_splits(tasks: Sequence[MetaTask], seed: int) -> tuple[Splits, Tensor]:
    """The meta-training tasks as one multi-task table, cut into train / val / test.

    Tasks with their own rows (School): stacked, each row labelled for its task only, and cut
    within every task (80 / 10 / 10), so that every task is scored on each split (a row split
    would leave small schools without validation rows). Tasks sharing rows (``ids``, Tox21's
    molecules): one row per id with every task's label (NaN where missing), cut by row.
    """
    from polytask.data.base import MultiTaskData, Splits
    from polytask.tasks import Task

    names = [t.name for t in tasks]
    specs = [Task(name, tasks[0].kind, standardize=False) for name in names]
    gen = torch.Generator().manual_seed(seed)
    if tasks[0].ids is not None:
        ids = torch.cat([t.ids for t in tasks if t.ids is not None]).unique()  # sorted
        x = torch.zeros(len(ids), tasks[0].x.shape[1])
        targets = {}
        for t in tasks:
            assert t.ids is not None
            pos = torch.searchsorted(ids, t.ids)
            x[pos] = t.x
            targets[t.name] = torch.full((len(ids),), math.nan).index_put_((pos,), t.y)
        data = MultiTaskData(inputs=x, targets=targets, tasks=specs, name="meta-train tasks")
        perm = torch.randperm(len(ids), generator=gen)
        cut = max(1, len(perm) // 10)
        parts = {"train": [perm[2 * cut :]], "val": [perm[:cut]], "test": [perm[cut : 2 * cut]]}
        return Splits(*(data.subset(torch.cat(parts[k]).sort().values) for k in parts)), x
    n = sum(len(t.y) for t in tasks)
    x = torch.cat([t.x for t in tasks])
    targets = {}
    start = 0
    for t in tasks:
        col = torch.full((n,), math.nan)
        col[start : start + len(t.y)] = t.y
        targets[t.name] = col
        start += len(t.y)
    data = MultiTaskData(inputs=x, targets=targets, tasks=specs, name="meta-train tasks")
    parts = {"train": [], "val": [], "test": []}
    start = 0
    for t in tasks:
        perm = start + torch.randperm(len(t.y), generator=gen)
        cut = max(1, len(perm) // 10)
        parts["val"].append(perm[:cut])
        parts["test"].append(perm[cut : 2 * cut])
        parts["train"].append(perm[2 * cut :])
        start += len(t.y)
    return Splits(*(data.subset(torch.cat(parts[k]).sort().values) for k in parts)), x


def mtl_init(tasks: Sequence[MetaTask], cfg: MetaConfig, seed: int, work: Path) -> nn.Module:
    """A hard-sharing model on the meta-training tasks (polytask's ``fit``); its trunk plus the
    mean of its heads as the starting point for a new task (every weight is then fine-tuned)."""
    from polytask.balancing import create_balancer
    from polytask.models import create_model
    from polytask.models.trunks import MLP
    from polytask.training import TrainSettings, fit

    names = [t.name for t in tasks]
    splits, x = _mtl_splits(tasks, seed)
    torch.manual_seed(seed)
    trunk = MLP(x.shape[1], hidden=list(cfg.hidden))
    model = create_model("hard_sharing", trunk, list(splits.tasks), example_input=x[:2])
    c = cfg.mtl
    settings = TrainSettings(
        epochs=c.epochs,
        lr=c.lr,
        batch_size=c.batch_size,
        weight_decay=c.weight_decay,
        seed=seed,
        progress=False,
        tensorboard=False,
        selection="val_loss",
        device="cpu",
    )
    fit(model, splits, create_balancer("equal", names), settings, work)
    head = nn.Linear(trunk.out_features, 1)
    heads = [model.heads[name] for name in names]
    with torch.no_grad():
        head.weight.copy_(torch.stack([h.weight for h in heads]).mean(0))
        head.bias.copy_(torch.stack([h.bias for h in heads]).mean(0))
    return nn.Sequential(copy.deepcopy(trunk), head)


# ---------------------------------------------------------------------------------- evaluation
def support_query(task: MetaTask, k: int, k_max: int, seed: int) -> tuple[Tensor, Tensor]:
    """Row indices: the first ``k`` of a seeded permutation (support), and every row after the
    largest k (query), so that each k is scored on the same rows.

    A task with ``query_rows`` (Tox21): the query is those rows; the support is drawn from the
    other rows, balanced for a binary task (the first k/2 of a seeded permutation of its
    positives and of its negatives, so a smaller k's support is part of a larger k's).
    """
    if task.query_rows is not None:
        return _reserved_support(task, k, k_max, seed), task.query_rows
    if len(task.y) < k_max + 2:
        raise ValueError(
            f"task {task.name!r} has {len(task.y)} rows: too few for {k_max} support rows and a "
            "query set of at least 2"
        )
    perm = torch.randperm(len(task.y), generator=torch.Generator().manual_seed(seed))
    return perm[:k], perm[k_max:]


def _reserved_support(task: MetaTask, k: int, k_max: int, seed: int) -> Tensor:
    assert task.query_rows is not None
    free = torch.ones(len(task.y), dtype=torch.bool)
    free[task.query_rows] = False
    gen = torch.Generator().manual_seed(seed)
    if task.kind != "binary":
        rows = free.nonzero().flatten()
        if len(rows) < k_max:
            raise ValueError(f"task {task.name!r}: {len(rows)} support rows, fewer than {k_max}")
        return rows[torch.randperm(len(rows), generator=gen)[:k]]
    picked = []  # the query labels are never read here
    for label in (1.0, 0.0):
        rows = (free & (task.y == label)).nonzero().flatten()
        if len(rows) < k_max // 2:
            raise ValueError(
                f"task {task.name!r}: {len(rows)} support rows of class {int(label)}, fewer than "
                f"k/2 = {k_max // 2} for the largest k"
            )
        picked.append(rows[torch.randperm(len(rows), generator=gen)[: k // 2]])
    return torch.cat(picked)


def heldout_predictions(
    init: nn.Module,
    tasks: Sequence[MetaTask],
    k: int,
    k_max: int,
    steps: int,
    lr: float,
    seed: int,
    y_std: float,
    episode: int = 0,
) -> list[tuple[Tensor, Tensor]]:
    """Per task: (query predictions, query targets), in target units, after adapting on k rows.

    Binary tasks: the predictions are logits (ROC-AUC reads their order). ``episode`` picks
    another support draw of the same tasks.
    """
    out = []
    for i, task in enumerate(tasks):
        sup, qry = support_query(task, k, k_max, seed * 100_003 + i + episode * 1_000_033)
        net = adapt(init, task.x[sup], task.y[sup], steps, lr, task.kind)
        with torch.no_grad():
            pred = net(task.x[qry]).squeeze(-1)
        out.append((pred * y_std, task.y[qry] * y_std))
    return out


def _auroc(pairs: Sequence[tuple[Tensor, Tensor]], names: Sequence[str]) -> list[float]:
    """ROC-AUC per task (torchmetrics), NaN where a query label is unknown (NaN); a query set of
    one class is an error naming the task (its ROC-AUC is undefined)."""
    from torchmetrics.functional.classification import binary_auroc

    out = []
    for (logits, y), name in zip(pairs, names, strict=True):
        if bool(torch.isnan(y).any()):
            out.append(math.nan)
            continue
        if not bool((y == 1).any() and (y == 0).any()):
            raise ValueError(
                f"task {name!r}: its {len(y)} query rows hold one class only; ROC-AUC is "
                "undefined (use more rows or a larger heldout_molecules)"
            )
        out.append(float(binary_auroc(logits, y.long())))
    return out


def _rmse(pairs: Sequence[tuple[Tensor, Tensor]]) -> list[float]:
    return [float(torch.sqrt(torch.mean((p - y) ** 2))) for p, y in pairs]


def _explained_variance(pairs: Sequence[tuple[Tensor, Tensor]]) -> float:
    """Pooled over the tasks' query rows, in %, as School results are reported."""
    p = torch.cat([a for a, _ in pairs]).double()
    y = torch.cat([b for _, b in pairs]).double()
    return 100.0 * (1.0 - float(((y - p) ** 2).sum()) / float(((y - y.mean()) ** 2).sum()))


@dataclass
class MetaResult:
    """Per (method, k): held-out query RMSE and explained variance (regression tasks) or ROC-AUC
    (binary tasks), over tasks and seeds."""

    out_dir: Path
    records: list[dict[str, Any]]
    chosen: list[dict[str, Any]]
    times: dict[str, float] = field(default_factory=dict)

    @property
    def binary(self) -> bool:
        return bool(self.records) and "auroc" in self.records[0]

    def summary(self) -> list[dict[str, Any]]:
        if self.binary:
            return self._auroc_summary()
        rows = []
        keys = dict.fromkeys((r["method"], r["k"]) for r in self.records)
        for method, k in keys:
            recs = [r for r in self.records if r["method"] == method and r["k"] == k]
            per_seed = [float(np.mean(r["rmse"])) for r in recs]
            ev = [r["explained_variance"] for r in recs]
            all_tasks = [v for r in recs for v in r["rmse"]]
            rows.append({
                "method": method, "k": k, "seeds": len(recs),
                "rmse_mean": float(np.mean(per_seed)), "rmse_std_seeds": _std(per_seed),
                "rmse_std_tasks": _std(all_tasks),
                "ev_mean": float(np.mean(ev)), "ev_std_seeds": _std(ev),
            })  # fmt: skip
        return rows

    def _auroc_summary(self) -> list[dict[str, Any]]:
        rows = []
        keys = dict.fromkeys((r["method"], r["k"]) for r in self.records)
        for method, k in keys:
            recs = [r for r in self.records if r["method"] == method and r["k"] == k]
            per_seed = [float(np.mean(r["auroc"])) for r in recs]
            rows.append({
                "method": method, "k": k, "seeds": len(recs),
                "auroc_mean": float(np.mean(per_seed)), "auroc_std_seeds": _std(per_seed),
                "auroc_std_tasks": _std([v for r in recs for v in r["auroc"]]),
            })  # fmt: skip
        return rows

    def per_task(self) -> list[dict[str, Any]]:
        """Binary tasks: each held-out (seed, task)'s ROC-AUC per method and k."""
        return [
            {"seed": r["seed"], "task": task, "method": r["method"], "k": r["k"], "auroc": v}
            for r in self.records
            for task, v in zip(r["tasks"], r["auroc"], strict=True)
        ]

    def table(self) -> str:
        if self.binary:
            lines = [
                "| method | k | held-out ROC-AUC (mean ± std over seeds) | std over tasks |",
                "|---|---|---|---|",
            ]
            for r in self.summary():
                lines.append(
                    f"| {r['method']} | {r['k']} | {r['auroc_mean']:.4f} ± "
                    f"{r['auroc_std_seeds']:.4f} | {r['auroc_std_tasks']:.4f} |"
                )
            return "\n".join(lines)
        lines = [
            "| method | k | held-out query RMSE (mean ± std over seeds) | std over tasks "
            "| explained variance % (mean ± std over seeds) |",
            "|---|---|---|---|---|",
        ]
        for r in self.summary():
            lines.append(
                f"| {r['method']} | {r['k']} | {r['rmse_mean']:.3f} ± {r['rmse_std_seeds']:.3f} | "
                f"{r['rmse_std_tasks']:.3f} | {r['ev_mean']:.2f} ± {r['ev_std_seeds']:.2f} |"
            )
        return "\n".join(lines)


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation (NaN in, NaN out: an unscored task is never dropped silently)."""
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=1)) if len(values) > 1 else 0.0


def _score(
    init: nn.Module,
    tasks: Sequence[MetaTask],
    k: int,
    k_max: int,
    steps: int,
    lr: float,
    seed: int,
    info: dict[str, Any],
    episodes: int,
) -> dict[str, Any]:
    """Per task: RMSE (regression; the first episode's, with the pooled explained variance) or
    ROC-AUC (binary; the mean over ``episodes`` support draws, and every draw's)."""
    if tasks[0].kind == "binary":
        names = [t.name for t in tasks]
        draws = [
            _auroc(heldout_predictions(init, tasks, k, k_max, steps, lr, seed, 1.0, e), names)
            for e in range(episodes)
        ]
        per_task = [float(np.mean(v)) for v in zip(*draws, strict=True)]
        return {"auroc": per_task, "auroc_episodes": draws, "loss": -statistics.fmean(per_task)}
    runs = [
        heldout_predictions(init, tasks, k, k_max, steps, lr, seed, info["y_std"], e)
        for e in range(episodes)
    ]
    rmse = [float(np.mean(v)) for v in zip(*(_rmse(p) for p in runs), strict=True)]
    ev = statistics.fmean(_explained_variance(p) for p in runs)
    return {"rmse": rmse, "explained_variance": ev, "loss": statistics.fmean(rmse)}


def run_meta(
    config: MetaConfig | str | Path,
    out_dir: str | Path | None = None,
    *,
    data_path: str | None = None,
    log: Callable[[str], None] = print,
) -> MetaResult:
    """Meta-train, choose adaptation on validation tasks, score held-out tasks once; write JSON."""
    cfg = config if isinstance(config, MetaConfig) else load_meta_config(config)
    out = Path(out_dir) if out_dir is not None else Path(cfg.output_dir) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    k_max = max(cfg.shots)
    records: list[dict[str, Any]] = []
    chosen: list[dict[str, Any]] = []
    times: dict[str, float] = {}
    for seed in cfg.seeds:
        train, val, test, info = meta_tasks(cfg, seed, data_path)
        small = [t.name for t in val + test if t.query_rows is None and len(t.y) < k_max + 2]
        if small:
            raise ValueError(f"tasks {small} have fewer than {k_max + 2} rows; lower the shots")
        log(f"seed {seed}: {len(train)} meta-training, {len(val)} validation, {len(test)} "
            f"held-out tasks ({', '.join(t.name for t in test)})")  # fmt: skip
        inits: dict[str, nn.Module] = {}
        for method in cfg.methods:
            started = time.perf_counter()
            if method == "scratch":
                torch.manual_seed(seed)
                inits[method] = make_net(train[0].x.shape[1], cfg.hidden)
            elif method == "mtl":
                inits[method] = mtl_init(train, cfg, seed, out / f"mtl-seed{seed}")
            else:
                inits[method] = meta_train(method, train, cfg, seed)
            times[f"{method}/seed{seed}"] = time.perf_counter() - started
            log(
                f"seed {seed}: {method} initialisation ready ({times[f'{method}/seed{seed}']:.1f} s)"
            )
        for method, init in inits.items():
            for k in cfg.shots:
                best = None
                for steps in cfg.adapt.steps:
                    for lr in cfg.adapt.lr:  # validation tasks only
                        score = _score(init, val, k, k_max, steps, lr, seed, info, cfg.episodes)
                        loss = score["loss"]
                        if math.isfinite(loss) and (best is None or loss < best[0]):
                            best = (loss, steps, lr)
                if best is None:
                    raise ValueError(f"{method}, k={k}: every adaptation diverged on validation")
                _, steps, lr = best
                choice = {"seed": seed, "method": method, "k": k, "steps": steps, "lr": lr}
                if val[0].kind == "binary":
                    choice["val_auroc"] = -best[0]
                else:
                    choice["val_rmse"] = best[0]
                chosen.append(choice)
                score = _score(init, test, k, k_max, steps, lr, seed, info, cfg.episodes)
                score.pop("loss")
                records.append({"seed": seed, "method": method, "k": k, **score,
                                "tasks": [t.name for t in test]})  # fmt: skip
        result = _write(cfg, MetaResult(out, records, chosen, times))  # after every seed
    return result


def _write(cfg: MetaConfig, result: MetaResult) -> MetaResult:
    """``meta.json`` and ``meta.md`` with the seeds finished so far (a long run that is stopped
    keeps its finished seeds)."""
    payload = {"config": cfg.model_dump(), "summary": result.summary(), "chosen": result.chosen,
               "records": result.records, "times_s": result.times}  # fmt: skip
    (result.out_dir / "meta.json").write_text(json.dumps(payload, indent=2))
    (result.out_dir / "meta.md").write_text(result.table() + "\n")
    return result
