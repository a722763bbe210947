"""UCI Census-Income (KDD) as the MMoE / PLE multi-task benchmark.

Why: Ma et al. (MMoE, KDD 2018) made this the standard tabular multi-task set, with tasks
"income > 50K" and "marital status = never married" (and, in a second group, "education at least
college"). Their tasks are only weakly correlated, which is what expert-gating models address.

Data: only the UCI *test* file (``census/census-income.test.gz``, 99,762 rows, 42 columns, no
header) is pinned here, not the 199,523-row training file the papers train on. So this loader
builds its own **deterministic 70 / 15 / 15 train / val / test split of the test file**, a seeded
shuffle (``seed``), and results are not directly comparable with the papers' numbers.

Columns (0-based, from the UCI ``census-income.names``): 24 is the instance weight (a sampling
weight, not a feature: dropped), 41 the income label (``- 50000.`` / ``50000+.``), 7 the marital
status, 4 the education. Label columns are removed from the features. The numeric columns (age,
wage per hour, capital gains / losses, dividends, persons worked for employer, weeks worked) are
standardized with training statistics; every other column, including the integer-coded industry /
occupation recodes, "own business", "veterans benefits" and "year", is one-hot encoded with
categories from the training split (via :class:`~polytask.data.table.TablePreprocessor`). With
``categorical_encoding="embedding"`` those columns are integer codes for the ``tabular`` trunk's
embedding tables instead (``{"numeric": [N, 7], "categorical": [N, C]}``, code 0 = unknown), the
input that MMoE / PLE were designed around.

Known leak, kept for comparability with the MMoE setting: the household-status columns 22 and 23
("Child 18+ never marr ...") partly encode the marital status, which is why "never married" is
so easy (AUC ~0.97+).

Tasks (binary): ``income`` = label ``50000+.``; ``marital`` = ``Never married``; with
``three_tasks=True`` also ``education`` = *holds at least a bachelor's degree* (Bachelors, Masters,
Prof school or Doctorate), and the education column then leaves the features.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch

from polytask.data import files
from polytask.data.base import DataError, MultiTaskData, Splits
from polytask.data.table import TablePreprocessor
from polytask.tasks import Task

__all__ = ["CENSUS_COLUMNS", "CENSUS_FILE", "DEGREE_VALUES", "load_census", "read_census"]

CENSUS_FILE = "census/census-income.test.gz"

CENSUS_COLUMNS: list[str] = [
    "age",  # 0
    "class_of_worker",
    "detailed_industry_recode",
    "detailed_occupation_recode",
    "education",  # 4
    "wage_per_hour",
    "enroll_in_edu_inst_last_wk",
    "marital_status",  # 7
    "major_industry_code",
    "major_occupation_code",
    "race",  # 10
    "hispanic_origin",
    "sex",
    "member_of_a_labor_union",
    "reason_for_unemployment",
    "full_or_part_time_employment_stat",  # 15
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "tax_filer_stat",
    "region_of_previous_residence",  # 20
    "state_of_previous_residence",
    "detailed_household_and_family_stat",
    "detailed_household_summary_in_household",
    "instance_weight",  # 24
    "migration_code_change_in_msa",  # 25
    "migration_code_change_in_reg",
    "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago",
    "migration_prev_res_in_sunbelt",
    "num_persons_worked_for_employer",  # 30
    "family_members_under_18",
    "country_of_birth_father",
    "country_of_birth_mother",
    "country_of_birth_self",
    "citizenship",  # 35
    "own_business_or_self_employed",
    "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits",
    "weeks_worked_in_year",
    "year",  # 40
    "income",  # 41
]
NUMERIC_COLUMNS = [
    "age",
    "wage_per_hour",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "num_persons_worked_for_employer",
    "weeks_worked_in_year",
]
INCOME_VALUES = {"- 50000.": 0.0, "50000+.": 1.0}
DEGREE_VALUES = frozenset(
    {
        "Bachelors degree(BA AB BS)",
        "Masters degree(MA MS MEng MEd MSW MBA)",
        "Prof school degree (MD DDS DVM LLB JD)",
        "Doctorate degree(PhD EdD)",
    }
)
FRACTIONS = (0.7, 0.15, 0.15)


def read_census(
    path: str | os.PathLike[str] | None = None, max_rows: int | None = None
) -> pd.DataFrame:
    """The census test file as a DataFrame with named columns, strings stripped."""
    if max_rows is not None and max_rows < 1:
        raise DataError(f"max_rows must be >= 1, got {max_rows}")
    file = files.resolve(CENSUS_FILE, path)
    df = pd.read_csv(file, header=None, names=CENSUS_COLUMNS, skipinitialspace=True, nrows=max_rows)
    if df.shape[1] != len(CENSUS_COLUMNS) or df[CENSUS_COLUMNS[-1]].isna().any():
        raise DataError(f"{file}: expected {len(CENSUS_COLUMNS)} columns on every row")
    for col in df.columns:
        if not pd.api.types.is_numeric_dtype(df[col]):
            df[col] = df[col].astype(str).str.strip()
    return df


def _income(df: pd.DataFrame) -> np.ndarray:
    mapped = df["income"].map(INCOME_VALUES)
    bad = mapped.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"census column 41 (income) has {df['income'].iloc[row]!r} at row {row}; "
            f"expected one of {sorted(INCOME_VALUES)}"
        )
    return mapped.to_numpy(dtype=np.float32)


def load_census(
    path: str | os.PathLike[str] | None = None,
    three_tasks: bool = False,
    seed: int = 0,
    max_rows: int | None = None,
    categorical_encoding: str = "onehot",
) -> Splits:
    """Census-income splits with tasks ``income``, ``marital`` (and ``education``).

    Args:
        path: the ``census-income.test.gz`` file or the data root holding ``census/``.
        three_tasks: add the ``education`` task (bachelor's degree or higher).
        seed: seeds the 70 / 15 / 15 shuffle of the rows (see the module docstring).
        max_rows: use only the first ``max_rows`` rows of the file (before shuffling).
        categorical_encoding: ``"onehot"`` (one float tensor) or ``"embedding"`` (numeric
            features and category codes, for the ``tabular`` trunk).

    ``row_ids`` are 0-based row numbers of the file; ``info["preprocessing"]`` holds the fitted
    :class:`~polytask.data.table.TablePreprocessor` as a dict, and with the embedding encoding
    ``info["cardinalities"]`` the number of codes of each categorical column.
    """
    df = read_census(path, max_rows)
    labels: dict[str, np.ndarray] = {
        "income": _income(df),
        "marital": (df["marital_status"] == "Never married").to_numpy(dtype=np.float32),
    }
    label_columns = ["income", "marital_status", "instance_weight"]
    if three_tasks:
        labels["education"] = df["education"].isin(DEGREE_VALUES).to_numpy(dtype=np.float32)
        label_columns.append("education")
    features = [c for c in CENSUS_COLUMNS if c not in label_columns]
    categorical = [c for c in features if c not in NUMERIC_COLUMNS]
    n = len(df)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    n_train, n_val = round(FRACTIONS[0] * n), round(FRACTIONS[1] * n)
    parts = {
        "train": perm[:n_train],
        "val": perm[n_train : n_train + n_val],
        "test": perm[n_train + n_val :],
    }
    if any(idx.size == 0 for idx in parts.values()):
        raise DataError(f"census: {n} rows are too few for a 70/15/15 split")
    pre = TablePreprocessor(
        features, categorical, categorical_encoding=categorical_encoding
    ).fit(df.iloc[parts["train"]])
    tasks = [Task(name, "binary") for name in labels]
    data: dict[str, MultiTaskData] = {}
    unseen: dict[str, dict[str, int]] = {}
    for split, idx in parts.items():
        data[split] = MultiTaskData(
            inputs=pre.transform(df.iloc[idx]),
            targets={k: torch.from_numpy(v[idx]) for k, v in labels.items()},
            tasks=tasks,
            name="census",
            row_ids=torch.from_numpy(idx.astype(np.int64)),
        )
        if split != "train":
            unseen[split] = dict(pre.unseen_)
    splits = Splits(
        train=data["train"],
        val=data["val"],
        test=data["test"],
        info={
            "dataset": "census",
            "file": CENSUS_FILE,
            "split": "random 70/15/15 of the UCI test file (no official train file here)",
            "seed": seed,
            "fractions": list(FRACTIONS),
            "tasks": {
                "income": "column 41 == '50000+.'",
                "marital": "column 7 == 'Never married'",
                **({"education": f"column 4 in {sorted(DEGREE_VALUES)}"} if three_tasks else {}),
            },
            "preprocessing": pre.to_dict(),
            "unseen_categories": unseen,
            **({"cardinalities": pre.cardinalities} if categorical_encoding == "embedding" else {}),
        },
    )
    return splits.validate().fit_target_scalers()
