"""Data: in-memory multi-task tensors, verified real data files, and data set loaders.

Importing this package is cheap: optional extras (rdkit for molecules, pyarrow for Parquet) are
imported only by the loaders that need them, when they are called.
"""

from __future__ import annotations

from polytask.data.base import DataError, MultiTaskData, Splits, iterate_batches, random_split
from polytask.data.census import load_census
from polytask.data.files import KNOWN_FILES, resolve
from polytask.data.mnist_scenes import load_mnist_scenes
from polytask.data.molecules import load_moleculenet, load_smiles_csv
from polytask.data.multimnist import load_multimnist
from polytask.data.multisource import (
    MultiSourceData,
    MultiSourceSplits,
    combine_sources,
    multimnist_two_sources,
    sources_by_task,
)
from polytask.data.qm9 import load_qm9
from polytask.data.registry import (
    available,
    is_multisource,
    load_dataset,
    load_multisource,
    register_dataset,
    register_multisource,
)
from polytask.data.school import load_school, load_school_raw, school_explained_variance
from polytask.data.table import TablePreprocessor, infer_kind, load_table

__all__ = [
    "KNOWN_FILES",
    "DataError",
    "MultiSourceData",
    "MultiSourceSplits",
    "MultiTaskData",
    "Splits",
    "TablePreprocessor",
    "available",
    "combine_sources",
    "infer_kind",
    "is_multisource",
    "iterate_batches",
    "load_census",
    "load_dataset",
    "load_mnist_scenes",
    "load_moleculenet",
    "load_multimnist",
    "load_multisource",
    "load_qm9",
    "load_school",
    "load_school_raw",
    "load_smiles_csv",
    "load_table",
    "multimnist_two_sources",
    "random_split",
    "register_dataset",
    "register_multisource",
    "resolve",
    "school_explained_variance",
    "sources_by_task",
]
