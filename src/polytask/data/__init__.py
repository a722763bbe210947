"""Data: in-memory multi-task tensors, verified real data files, and data set loaders.

Importing this package is cheap: optional extras (rdkit for molecules, pyarrow for Parquet) are
imported only by the loaders that need them, when they are called.
"""

from __future__ import annotations

from polytask.data.base import DataError, MultiTaskData, Splits, iterate_batches, random_split
from polytask.data.census import load_census
from polytask.data.files import KNOWN_FILES, resolve
from polytask.data.molecules import load_moleculenet, load_smiles_csv
from polytask.data.multimnist import load_multimnist
from polytask.data.registry import available, load_dataset, register_dataset
from polytask.data.school import load_school, load_school_raw, school_explained_variance
from polytask.data.table import TablePreprocessor, infer_kind, load_table

__all__ = [
    "KNOWN_FILES",
    "DataError",
    "MultiTaskData",
    "Splits",
    "TablePreprocessor",
    "available",
    "infer_kind",
    "iterate_batches",
    "load_census",
    "load_dataset",
    "load_moleculenet",
    "load_multimnist",
    "load_school",
    "load_school_raw",
    "load_smiles_csv",
    "load_table",
    "random_split",
    "register_dataset",
    "resolve",
    "school_explained_variance",
]
