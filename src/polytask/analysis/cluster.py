"""Tasks clustered from an affinity matrix: average-linkage hierarchy, leaf order, flat groups.

Why average linkage on ``d = c - s`` (``s`` the symmetrised affinity, ``c`` its largest
off-diagonal value): the height at which average linkage merges two clusters is then ``c`` minus
the *mean affinity between their tasks*, so cutting the tree at ``c - threshold`` keeps together
exactly the groups whose average pairwise affinity is at least ``threshold``. The threshold is read
in the measure's own units (0 for a cosine or a lookahead affinity: "helps rather than hurts on
average"), whatever the measure's scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Clustering", "cluster_tasks", "symmetrize"]


def symmetrize(affinity: np.ndarray) -> np.ndarray:
    """``(A + Aᵀ) / 2``: a directed affinity (``i -> j``) made into a similarity of the pair."""
    a = np.asarray(affinity, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"an affinity matrix is square, got shape {a.shape}")
    return (a + a.T) / 2.0


@dataclass(frozen=True)
class Clustering:
    """The hierarchy of ``tasks`` and its flat clusters at ``threshold``.

    ``order`` is the dendrogram's leaf order (optimal leaf ordering: similar tasks adjacent, for
    plots); ``clusters`` are the flat groups, in that order; ``merges`` lists each merge of the
    hierarchy with the mean affinity between the two groups it joined; ``linkage`` is scipy's
    linkage matrix on the distances ``offset - similarity``.
    """

    tasks: list[str]
    order: list[str]
    clusters: list[list[str]]
    threshold: float
    merges: list[dict[str, Any]]
    linkage: np.ndarray
    offset: float

    def to_json(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "clusters": self.clusters,
            "threshold": self.threshold,
            "merges": self.merges,
            "linkage": self.linkage.tolist(),
            "distance_offset": self.offset,
        }


def cluster_tasks(
    tasks: Sequence[str], affinity: np.ndarray, threshold: float = 0.0
) -> Clustering:
    """Average-linkage clustering of ``tasks`` from ``affinity`` (``[T, T]``, higher = closer).

    ``affinity`` is symmetrised first; its diagonal is ignored. A pair without evidence (NaN) has
    no distance: the error names the pairs rather than guessing a value for them.
    """
    from scipy.cluster.hierarchy import fcluster, leaves_list, linkage, optimal_leaf_ordering
    from scipy.spatial.distance import squareform

    names = list(tasks)
    s = symmetrize(affinity)
    if s.shape[0] != len(names):
        raise ValueError(f"affinity is {s.shape[0]}x{s.shape[0]} but there are {len(names)} tasks")
    if len(names) < 2:
        raise ValueError(f"a single task ({names}) has nothing to be clustered with")
    off = ~np.eye(len(names), dtype=bool)
    missing = [
        (names[i], names[j])
        for i in range(len(names)) for j in range(i + 1, len(names))
        if not np.isfinite(s[i, j])
    ]  # fmt: skip
    if missing:
        raise ValueError(
            f"no evidence for {len(missing)} task pair(s) (never labelled together in a recorded "
            f"batch): {missing[:5]}{' ...' if len(missing) > 5 else ''}"
        )
    offset = float(s[off].max())
    distance = np.where(off, offset - s, 0.0)
    condensed = squareform(distance, checks=False)
    z = linkage(condensed, method="average")
    if len(names) > 2:
        z = optimal_leaf_ordering(z, condensed)
    order = [names[i] for i in leaves_list(z)]
    labels = fcluster(z, t=offset - threshold, criterion="distance")
    groups: dict[int, list[str]] = {}
    for name in order:
        groups.setdefault(int(labels[names.index(name)]), []).append(name)
    members: list[list[str]] = [[n] for n in names]
    merges = []
    for left, right, height, _ in z:
        a, b = members[int(left)], members[int(right)]
        members.append(a + b)
        merges.append({"left": a, "right": b, "mean_affinity": offset - float(height)})
    return Clustering(
        tasks=names, order=order, clusters=list(groups.values()), threshold=float(threshold),
        merges=merges, linkage=z, offset=offset,
    )
