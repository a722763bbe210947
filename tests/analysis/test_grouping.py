"""Grouping search: exact search is exact, beam search agrees with it, scores behave."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polytask.analysis.grouping import (
    GroupingError,
    beam_search,
    exact_search,
    late_epochs,
    partition_score,
    search_affinity,
    search_groupings,
)
from polytask.analysis.relations import Measure, Relations

BELL = [1, 1, 2, 5, 15, 52, 203, 877]


def all_partitions(items: list[int]) -> Iterator[list[list[int]]]:
    """Every set partition, built differently from the search (insert the first item anywhere)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in all_partitions(rest):
        for k in range(len(part)):
            yield [*part[:k], [first, *part[k]], *part[k + 1:]]
        yield [[first], *part]


def naive_score(a: np.ndarray, groups: list[list[int]], cost: float) -> float:
    """The documented score, one task at a time in plain Python."""
    total = 0.0
    for g in groups:
        for j in g:
            mates = [i for i in g if i != j]
            if mates:
                total += sum(a[i][j] for i in mates) / len(mates)
    return total - cost * (len(groups) - 1)


@st.composite
def problems(draw: st.DrawFn, max_tasks: int = 6) -> tuple[list[str], np.ndarray]:
    t = draw(st.integers(1, max_tasks))
    values = draw(st.lists(st.floats(-1, 1, allow_nan=False), min_size=t * t, max_size=t * t))
    return [f"task{i}" for i in range(t)], np.array(values).reshape(t, t)


def as_indices(names: list[str], groups: list[list[str]]) -> list[list[int]]:
    return [[names.index(n) for n in g] for g in groups]


@settings(max_examples=25, deadline=None)
@given(problems(max_tasks=5), st.sampled_from([0.0, 0.3]), st.sampled_from([None, 1, 2]))
def test_exact_search_finds_the_brute_force_best(
    problem: tuple[list[str], np.ndarray], cost: float, max_groups: int | None
) -> None:
    names, a = problem
    brute = [
        naive_score(np.where(np.eye(len(names), dtype=bool), 0, a), p, cost)
        for p in all_partitions(list(range(len(names))))
        if max_groups is None or len(p) <= max_groups
    ]
    found = exact_search(names, a, k=3, max_groups=max_groups, group_cost=cost)
    assert found[0].score == pytest.approx(max(brute), abs=1e-9)
    assert len(found) == min(3, len(brute))
    assert [p.score for p in found] == sorted((p.score for p in found), reverse=True)
    assert len({p.key for p in found}) == len(found)
    for p in found:  # each reported score is the partition's own score
        assert p.score == pytest.approx(naive_score(a, as_indices(names, p.groups), cost), abs=1e-9)
        assert max_groups is None or len(p.groups) <= max_groups


def test_exact_search_enumerates_every_partition_once() -> None:
    names = [f"t{i}" for i in range(6)]
    a = np.random.default_rng(0).normal(size=(6, 6))
    found = exact_search(names, a, k=10_000)
    assert len(found) == BELL[6]
    assert len({p.key for p in found}) == BELL[6]


@settings(max_examples=20, deadline=None)
@given(problems(max_tasks=5), st.sampled_from([None, 2]))
def test_beam_search_wide_enough_is_the_exact_search(
    problem: tuple[list[str], np.ndarray], max_groups: int | None
) -> None:
    names, a = problem
    exact = exact_search(names, a, k=4, max_groups=max_groups)
    beam = beam_search(names, a, k=4, beam_width=BELL[len(names)], max_groups=max_groups)
    assert [p.score for p in beam] == pytest.approx([p.score for p in exact], abs=1e-9)


@settings(max_examples=15, deadline=None)
@given(st.integers(3, 7), st.integers(0, 10_000))
def test_beam_search_recovers_planted_groups_like_exact_search(t: int, seed: int) -> None:
    """Tasks with a block structure (affinity within groups, interference across) plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, max(1, t // 2), size=t)
    same = labels[:, None] == labels[None, :]
    a = np.where(same, 1.0, -1.0) + rng.normal(scale=0.1, size=(t, t))
    names = [f"t{i}" for i in range(t)]
    # the mean affinity is indifferent to splitting a true group in two: a group cost decides
    exact = exact_search(names, a, k=1, group_cost=0.5)[0]
    beam = beam_search(names, a, k=1, beam_width=8, group_cost=0.5)[0]
    assert beam.key == exact.key
    planted = [[names[i] for i in range(t) if labels[i] == g] for g in sorted(set(labels))]
    assert exact.key == tuple(sorted(tuple(sorted(g)) for g in planted))


@settings(max_examples=20, deadline=None)
@given(problems(max_tasks=5), st.randoms(use_true_random=False))
def test_permuting_the_tasks_permutes_the_result(
    problem: tuple[list[str], np.ndarray], rnd: object
) -> None:
    names, a = problem
    perm = list(range(len(names)))
    rnd.shuffle(perm)  # type: ignore[attr-defined]
    shuffled = [names[i] for i in perm]
    b = a[np.ix_(perm, perm)]
    first = exact_search(names, a, k=3)
    second = exact_search(shuffled, b, k=3)
    assert [p.score for p in second] == pytest.approx([p.score for p in first], abs=1e-9)
    for p in second:  # the same partitions, named by task: the same score on the original order
        assert partition_score(names, a, p.groups) == pytest.approx(p.score, abs=1e-9)
    if len(first) > 1 and first[0].score - first[1].score > 1e-6:
        assert second[0].key == first[0].key


def test_score_of_a_small_partition_by_hand() -> None:
    a = np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 4.0], [5.0, 6.0, 0.0]])
    names = ["a", "b", "c"]
    # {a, b}: a gains A[b, a] = 3, b gains A[a, b] = 1; c alone gains nothing
    assert partition_score(names, a, [["a", "b"], ["c"]]) == pytest.approx(4.0)
    # one group: a (3 + 5) / 2, b (1 + 6) / 2, c (2 + 4) / 2
    assert partition_score(names, a, [["a", "b", "c"]]) == pytest.approx(10.5)
    assert partition_score(names, a, [["a", "b"], ["c"]], group_cost=0.5) == pytest.approx(3.5)
    assert partition_score(names, a, [["a"], ["b"], ["c"]]) == 0.0


def test_group_limits_and_costs_shape_the_answer() -> None:
    names = [f"t{i}" for i in range(5)]
    a = np.random.default_rng(1).normal(size=(5, 5))
    assert exact_search(names, a, k=1, max_groups=1)[0].groups == [names]
    # a cost above any possible gain makes one model the best
    assert exact_search(names, a, k=1, group_cost=100.0)[0].groups == [names]
    big = [f"t{i}" for i in range(12)]
    b = np.random.default_rng(2).normal(size=(12, 12))
    found = search_groupings(big, b, k=3, max_groups=3)  # beyond the exact limit: beam
    assert all(len(p.groups) <= 3 for p in found)
    assert sorted(n for g in found[0].groups for n in g) == sorted(big)


def test_bad_inputs_are_named() -> None:
    a = np.zeros((3, 3))
    a[0, 2] = np.nan
    with pytest.raises(GroupingError, match=r"\('x', 'z'\)"):
        exact_search(["x", "y", "z"], a)
    with pytest.raises(GroupingError, match="square"):
        exact_search(["x", "y"], np.zeros((2, 3)))
    with pytest.raises(GroupingError, match="3 tasks"):
        exact_search(["x", "y", "z"], np.zeros((2, 2)))
    with pytest.raises(GroupingError, match="not a partition"):
        partition_score(["x", "y"], np.zeros((2, 2)), [["x"], ["x", "y"]])
    with pytest.raises(GroupingError, match="exact search"):
        exact_search([str(i) for i in range(13)], np.zeros((13, 13)))
    with pytest.raises(GroupingError, match="max_groups"):
        beam_search(["x", "y"], np.zeros((2, 2)), max_groups=0)


def test_brute_force_helper_counts_bell_numbers() -> None:
    for n, bell in enumerate(BELL[:7]):
        assert sum(1 for _ in all_partitions(list(range(n)))) == bell
    assert all(len(set(itertools.chain(*p))) == 4 for p in all_partitions(list(range(4))))


@given(st.integers(1, 40))
def test_late_epochs_is_the_second_half_and_never_empty(recorded: int) -> None:
    kept = list(range(recorded))[late_epochs(recorded)]
    assert kept and kept[-1] == recorded - 1
    assert len(kept) == recorded - recorded // 2  # the middle epoch of an odd count included
    with pytest.raises(GroupingError, match="no recorded epoch"):
        late_epochs(0)


def relations_with(per_epoch: np.ndarray, tasks: list[str]) -> Relations:
    e = per_epoch.shape[0]
    measure = Measure("lookahead_affinity", "", "parameters", True, per_epoch, [1] * e)
    return Relations(path=Path("relations.json"), tasks=tasks,
                     epochs=list(range(e)), measures={"lookahead_affinity": measure},
                     loss_ratio=[{} for _ in range(e)], loss_initial={}, counts={},
                     settings={})


def test_search_affinity_reads_the_late_epochs_and_their_grouping() -> None:
    """Early epochs pairing (a, c), (b, d); late ones (a, b), (c, d): the late grouping wins."""
    tasks = ["a", "b", "c", "d"]
    early, late = np.full((4, 4), -0.1), np.full((4, 4), -0.1)
    for i, j in [(0, 2), (1, 3)]:
        early[i, j] = early[j, i] = 1.0
    for i, j in [(0, 1), (2, 3)]:
        late[i, j] = late[j, i] = 0.3
    per_epoch = np.stack([early, early, early, late, late, late])
    rel = relations_with(per_epoch, tasks)
    names, a = search_affinity(rel, "lookahead_affinity")
    assert names == tasks
    np.testing.assert_allclose(a, late)
    best = search_groupings(names, a, k=1)[0]
    assert best.key == (("a", "b"), ("c", "d"))
    _, everything = rel.affinity("lookahead_affinity")  # all epochs: the early pairs dominate
    assert search_groupings(tasks, everything, k=1)[0].key == (("a", "c"), ("b", "d"))
