"""Census-income (KDD): the MMoE tasks, their real positive rates, and leakage-free features."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from polytask.data.census import load_census


def _labels(splits: object, task: str) -> torch.Tensor:
    return torch.cat([getattr(splits, s).targets[task] for s in ("train", "val", "test")])


def test_two_tasks_with_real_positive_rates(data_dir: Path) -> None:
    splits = load_census()
    assert [t.name for t in splits.tasks] == ["income", "marital"]
    sizes = [len(splits.train), len(splits.val), len(splits.test)]
    assert sum(sizes) == 99762
    assert sizes[0] == round(0.7 * 99762) and sizes[1] == round(0.15 * 99762)
    income = _labels(splits, "income")
    marital = _labels(splits, "marital")
    assert float(income.mean()) == pytest.approx(0.062, abs=0.01)  # > 50K: about 6%
    assert float(marital.mean()) == pytest.approx(0.432, abs=0.02)  # never married: about 43%
    # the split is a shuffle of the file: every split sees both classes at similar rates
    for data in (splits.train, splits.val, splits.test):
        assert 0.04 < float(data.targets["income"].mean()) < 0.08
    pre = splits.info["preprocessing"]
    assert isinstance(pre, dict)
    json.dumps(pre)  # plain JSON, reusable by `polytask predict`
    features = " ".join(pre["feature_names"])
    for leaked in ("instance_weight", "marital_status", "income"):
        assert leaked not in features
    assert "education=Children" in pre["feature_names"]  # education is a feature here
    assert "detailed_industry_recode=0" in pre["feature_names"]  # codes are one-hot
    x = splits.train.inputs
    assert x.shape == (sizes[0], len(pre["feature_names"])) and x.dtype == torch.float32
    assert x[:, 0].mean().abs() < 1e-4  # age, standardized with train statistics


def test_three_tasks_and_determinism(data_dir: Path) -> None:
    splits = load_census(three_tasks=True, max_rows=4000, seed=2)
    assert [t.name for t in splits.tasks] == ["income", "marital", "education"]
    assert len(splits.train) + len(splits.val) + len(splits.test) == 4000
    education = _labels(splits, "education")
    assert 0.1 < float(education.mean()) < 0.2  # bachelor's or higher: about 15%
    assert not any(
        n.startswith("education=") for n in splits.info["preprocessing"]["feature_names"]
    )
    again = load_census(three_tasks=True, max_rows=4000, seed=2)
    assert torch.equal(again.test.row_ids, splits.test.row_ids)
    assert torch.equal(again.test.inputs, splits.test.inputs)
    other = load_census(max_rows=4000, seed=3)
    assert not torch.equal(other.test.row_ids, splits.test.row_ids)
