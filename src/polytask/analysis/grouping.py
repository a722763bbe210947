"""Which tasks to train together: partitions of the tasks scored from an affinity matrix.

Why: a shared model helps some tasks and hurts others (docs/results.md: sharing hurts on QM8, QM9
and MultiMNIST). Training every grouping is out of reach beyond a handful of tasks, so, as in TAG
(Fifty et al., NeurIPS 2021), groupings are ranked by the affinities recorded while one shared
model trained (``relations.json``), and only the best few are trained and compared on validation
(:mod:`polytask.auto.search`).

A *partition* splits the tasks into disjoint groups; each group is one shared model, a singleton
is a single-task model. Its score, with ``A[i, j]`` the affinity of ``i`` onto ``j`` (row ->
column, the orientation of the lookahead affinity; higher = better together)::

    score = Σ_tasks j   mean_{i in group(j), i != j} A[i, j]   -   group_cost · (groups - 1)

that is, each task counts how much the rest of its group helps it, on average (TAG's "total
inter-task affinity onto a task"); a task alone counts 0 (no transfer, no interference). The mean,
not the sum, keeps a big group from scoring well by size alone; ``group_cost`` charges each extra
model (training and serving cost) in the affinity's own units, and ``max_groups`` caps the count.

Which epochs: :func:`search_affinity` reads a run's ``relations.json`` for the search, averaging
the second half of the recorded epochs. Early in training every task's gradient carries the same
"fit anything" component (output biases, the label means, the first features any task needs),
which makes all pairs look alike and drowns the differences that decide a grouping; on a data set
with a known grouping (``benchmarks/grouping_known.py``, docs/relationships.md) the second half
found it on 5 of 6 runs, all epochs on 3 of 6.

Search: exact over every partition (restricted-growth strings; Bell(T) partitions: 21,147 for
T = 9, vectorised) up to ``exact_limit`` tasks, else a beam search that places the tasks one at a
time into an existing group or a new one, keeping the ``beam_width`` best partial partitions.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from polytask.analysis.relations import Relations

__all__ = [
    "GroupingError",
    "Partition",
    "beam_search",
    "exact_search",
    "late_epochs",
    "partition_score",
    "search_affinity",
    "search_groupings",
]

#: Up to this many tasks :func:`search_groupings` enumerates every partition (Bell(9) = 21,147).
EXACT_LIMIT = 9


class GroupingError(ValueError):
    """An affinity matrix or search setting that cannot be searched; the message says which."""


@dataclass(frozen=True)
class Partition:
    """One candidate grouping: its groups (task names, in task order) and its score."""

    groups: list[list[str]]
    score: float

    @property
    def key(self) -> tuple[tuple[str, ...], ...]:
        """A hashable, order-free identity (groups sorted)."""
        return tuple(sorted(tuple(sorted(g)) for g in self.groups))


def _checked(tasks: Sequence[str], affinity: np.ndarray) -> np.ndarray:
    """``affinity`` as a float ``[T, T]`` array with a zero diagonal; NaN pairs are refused."""
    names = list(tasks)
    a = np.asarray(affinity, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise GroupingError(f"an affinity matrix is square, got shape {a.shape}")
    if a.shape[0] != len(names):
        raise GroupingError(f"affinity is {a.shape[0]}x{a.shape[0]} but there are {len(names)} tasks")
    if len(set(names)) != len(names):
        raise GroupingError(f"task names must be unique, got {names}")
    off = ~np.eye(len(names), dtype=bool)
    bad = [
        (names[i], names[j])
        for i, j in zip(*np.nonzero(off & ~np.isfinite(a)), strict=True)
    ]
    if bad:
        raise GroupingError(
            f"no finite affinity for {len(bad)} ordered task pair(s) (never labelled together in "
            f"a recorded batch, or not recorded): {bad[:5]}{' ...' if len(bad) > 5 else ''}"
        )
    a = a.copy()
    np.fill_diagonal(a, 0.0)
    return a


def late_epochs(recorded: int) -> slice:
    """The second half of ``recorded`` epochs, by position: the middle one included, never empty."""
    if recorded < 1:
        raise GroupingError("no recorded epoch: the run finished no epoch with relations on")
    return slice(recorded // 2, None)


def search_affinity(relations: Relations, measure: str) -> tuple[list[str], np.ndarray]:
    """``(tasks, [T, T])``: ``measure`` averaged over the second half of the recorded epochs.

    What the grouping search should read (see the module docstring for why not all epochs).
    """
    return relations.affinity(measure, late_epochs(len(relations.epochs)))


def _check_settings(n: int, k: int, max_groups: int | None, group_cost: float) -> None:
    if n < 1:
        raise GroupingError("there are no tasks to group")
    if k < 1:
        raise GroupingError(f"k (candidates to return) must be >= 1, got {k}")
    if max_groups is not None and max_groups < 1:
        raise GroupingError(f"max_groups must be >= 1, got {max_groups}")
    if not math.isfinite(group_cost) or group_cost < 0:
        raise GroupingError(f"group_cost must be a finite number >= 0, got {group_cost}")


def _labels_score(labels: np.ndarray, a: np.ndarray, group_cost: float) -> np.ndarray:
    """Scores of ``[P, T]`` group labels (vectorised over the P partitions)."""
    same = labels[:, :, None] == labels[:, None, :]  # [P, i, j]
    t = a.shape[0]
    same &= ~np.eye(t, dtype=bool)[None]
    onto = (same * a[None]).sum(axis=1)  # [P, j]: Σ_i A[i, j] over j's group mates
    mates = same.sum(axis=1)
    per_task = np.divide(onto, mates, out=np.zeros_like(onto), where=mates > 0)
    groups = labels.max(axis=1) + 1
    return per_task.sum(axis=1) - group_cost * (groups - 1)


def partition_score(
    tasks: Sequence[str],
    affinity: np.ndarray,
    groups: Sequence[Sequence[str]],
    group_cost: float = 0.0,
) -> float:
    """The score of ``groups`` (a partition of ``tasks``) under ``affinity`` (see the module doc)."""
    names = list(tasks)
    a = _checked(names, affinity)
    seen = [n for g in groups for n in g]
    if sorted(seen) != sorted(names) or len(seen) != len(set(seen)):
        raise GroupingError(f"groups {list(map(list, groups))} are not a partition of {names}")
    label = {n: k for k, g in enumerate(groups) for n in g}
    labels = np.array([[label[n] for n in names]])
    return float(_labels_score(labels, a, group_cost)[0])


def _restricted_growth(n: int, max_groups: int | None) -> Iterator[list[int]]:
    """Every partition of ``n`` items once, as labels with ``label[i] <= max(label[:i]) + 1``."""
    limit = n if max_groups is None else max_groups
    labels = [0] * n

    def grow(i: int, top: int) -> Iterator[list[int]]:
        if i == n:
            yield list(labels)
            return
        for g in range(min(top + 2, limit)):
            labels[i] = g
            yield from grow(i + 1, max(top, g))

    if n:
        yield from grow(1, 0)


def _groups(names: list[str], labels: Sequence[int]) -> list[list[str]]:
    out: dict[int, list[str]] = {}
    for name, g in zip(names, labels, strict=True):
        out.setdefault(int(g), []).append(name)
    return list(out.values())


def _top(
    names: list[str], labels: np.ndarray, scores: np.ndarray, k: int
) -> list[Partition]:
    # ties broken by fewer groups, then by the labels (a deterministic order)
    order = sorted(
        range(len(scores)), key=lambda p: (-scores[p], labels[p].max(), tuple(labels[p]))
    )[:k]
    return [Partition(_groups(names, labels[p]), float(scores[p])) for p in order]


def exact_search(
    tasks: Sequence[str],
    affinity: np.ndarray,
    k: int = 5,
    *,
    max_groups: int | None = None,
    group_cost: float = 0.0,
    exact_limit: int = 12,
) -> list[Partition]:
    """The ``k`` best partitions of ``tasks`` among all of them (best first).

    Refused beyond ``exact_limit`` tasks (Bell(12) is already 4.2 million partitions).
    """
    names = list(tasks)
    _check_settings(len(names), k, max_groups, group_cost)
    a = _checked(names, affinity)
    if len(names) > exact_limit:
        raise GroupingError(
            f"{len(names)} tasks: exact search enumerates every partition and stops at "
            f"{exact_limit} tasks; use beam_search (or search_groupings, which switches itself)"
        )
    best: list[Partition] = []
    chunk: list[list[int]] = []

    def flush() -> None:
        nonlocal best
        if chunk:
            labels = np.array(chunk)
            best = _merge(best, _top(names, labels, _labels_score(labels, a, group_cost), k), k)
            chunk.clear()

    for labels in _restricted_growth(len(names), max_groups):
        chunk.append(labels)
        if len(chunk) >= 20_000:
            flush()
    flush()
    return best


def _merge(a: list[Partition], b: list[Partition], k: int) -> list[Partition]:
    both = a + b
    both.sort(key=lambda p: (-p.score, len(p.groups), p.key))
    return both[:k]


def beam_search(
    tasks: Sequence[str],
    affinity: np.ndarray,
    k: int = 5,
    *,
    beam_width: int = 256,
    max_groups: int | None = None,
    group_cost: float = 0.0,
) -> list[Partition]:
    """The ``k`` best partitions found by placing tasks one at a time (best first).

    Tasks are placed in order of their strongest affinity (strongly related tasks first, so the
    early partial partitions already carry the structure); each partial partition is extended by
    putting the next task into each of its groups or a new one (never beyond ``max_groups``), and
    the ``beam_width`` best partial partitions, scored as partitions of the tasks placed so far,
    are kept. With ``beam_width`` at least the number of partitions it is exhaustive.
    """
    names = list(tasks)
    _check_settings(len(names), k, max_groups, group_cost)
    if beam_width < 1:
        raise GroupingError(f"beam_width must be >= 1, got {beam_width}")
    a = _checked(names, affinity)
    n = len(names)
    strength = np.maximum(np.abs(a), np.abs(a.T)).max(axis=1)
    order = sorted(range(n), key=lambda i: (-strength[i], i))
    limit = n if max_groups is None else max_groups
    beam: list[tuple[int, ...]] = [(0,)]  # labels of the tasks placed so far (in ``order``)
    for step in range(1, n):
        placed = order[: step + 1]
        sub = a[np.ix_(placed, placed)]
        extended = [
            (*labels, g)
            for labels in beam
            for g in range(min(max(labels) + 2, limit))
        ]
        arr = np.array(extended)
        scores = _labels_score(arr, sub, group_cost)
        keep = max(beam_width, k) if step == n - 1 else beam_width
        best = heapq.nsmallest(
            keep, range(len(extended)), key=lambda p: (-scores[p], arr[p].max(), extended[p])
        )
        beam = [extended[p] for p in best]
    full = np.zeros((len(beam), n), dtype=int)
    for row, labels in enumerate(beam):
        full[row, order] = labels
    # relabel in task order (restricted growth) so equal partitions compare equal
    canon = np.array([_canonical(r) for r in full])
    return _top(names, canon, _labels_score(canon, a, group_cost), k)


def _canonical(labels: Sequence[int]) -> list[int]:
    seen: dict[int, int] = {}
    return [seen.setdefault(int(g), len(seen)) for g in labels]


def search_groupings(
    tasks: Sequence[str],
    affinity: np.ndarray,
    k: int = 5,
    *,
    max_groups: int | None = None,
    group_cost: float = 0.0,
    exact_limit: int = EXACT_LIMIT,
    beam_width: int = 256,
) -> list[Partition]:
    """The ``k`` best partitions: exact up to ``exact_limit`` tasks, beam search beyond."""
    if len(list(tasks)) <= exact_limit:
        return exact_search(
            tasks, affinity, k, max_groups=max_groups, group_cost=group_cost,
            exact_limit=exact_limit,
        )
    return beam_search(
        tasks, affinity, k, beam_width=beam_width, max_groups=max_groups, group_cost=group_cost
    )
