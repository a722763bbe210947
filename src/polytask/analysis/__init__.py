"""Which tasks belong together: relationship measures recorded during training, and their analysis.

* :mod:`polytask.analysis.relations`: the recorder (``training.relations``), the
  ``relations.json`` format and its reader :func:`read_relations`;
* :mod:`polytask.analysis.cluster`: tasks clustered from an affinity matrix;
* :mod:`polytask.analysis.analyze`: ``polytask analyze`` (``analysis.json`` and a table).

See ``docs/relationships.md``.
"""

from polytask.analysis.cluster import Clustering, cluster_tasks, symmetrize
from polytask.analysis.relations import (
    MEASURES,
    Relations,
    RelationsError,
    read_relations,
)

__all__ = [
    "MEASURES",
    "Clustering",
    "Relations",
    "RelationsError",
    "cluster_tasks",
    "read_relations",
    "symmetrize",
]
