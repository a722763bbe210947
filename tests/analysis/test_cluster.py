"""Clustering tasks from an affinity matrix: the threshold means "average affinity at least"."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from polytask.analysis.cluster import cluster_tasks, symmetrize


def test_two_blocks_are_recovered_and_adjacent_in_the_order() -> None:
    names = ["a", "b", "c", "d", "e"]
    s = np.full((5, 5), -0.4)
    for group in ([0, 2, 4], [1, 3]):
        s[np.ix_(group, group)] = 0.6
    s[0, 2], s[2, 0] = 0.9, 0.1  # directed: symmetrised to 0.5
    c = cluster_tasks(names, s, threshold=0.0)
    assert sorted(map(sorted, c.clusters)) == [["a", "c", "e"], ["b", "d"]]
    pos = {n: i for i, n in enumerate(c.order)}
    assert abs(pos["b"] - pos["d"]) == 1
    assert c.merges[-1]["mean_affinity"] == pytest.approx(-0.4)
    assert len(cluster_tasks(names, s, threshold=0.7).clusters) == 5
    assert len(cluster_tasks(names, s, threshold=-1.0).clusters) == 1


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float64, (6, 6), elements=st.floats(-1, 1, allow_nan=False)),
    st.floats(-0.5, 0.5),
)
def test_merges_report_the_mean_affinity_between_groups(a: np.ndarray, threshold: float) -> None:
    names = [f"t{i}" for i in range(6)]
    s = symmetrize(a)
    c = cluster_tasks(names, a, threshold)
    idx = {n: i for i, n in enumerate(names)}
    for m in c.merges:
        left, right = [idx[n] for n in m["left"]], [idx[n] for n in m["right"]]
        assert m["mean_affinity"] == pytest.approx(s[np.ix_(left, right)].mean(), abs=1e-9)
    # a flat cluster is joined only by merges at or above the threshold; clusters are a partition
    assert sorted(n for g in c.clusters for n in g) == sorted(names)
    for m in c.merges:
        if abs(m["mean_affinity"] - threshold) < 1e-9:
            continue  # at the threshold itself rounding decides; the rule is tested away from it
        inside = any(set(m["left"] + m["right"]) <= set(g) for g in c.clusters)
        assert inside == (m["mean_affinity"] > threshold)


def test_no_evidence_and_a_single_task_are_errors() -> None:
    s = np.eye(3)
    s[0, 1] = s[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"\('a', 'b'\)"):
        cluster_tasks(["a", "b", "c"], s)
    with pytest.raises(ValueError, match="single task"):
        cluster_tasks(["a"], np.ones((1, 1)))
    with pytest.raises(ValueError, match="2 tasks"):
        cluster_tasks(["a", "b"], np.ones((3, 3)))
