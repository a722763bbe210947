"""Δm% and evaluation on labelled rows only."""

from __future__ import annotations

import math

import pytest
import torch

from polytask.data.base import MultiTaskData
from polytask.evaluation import EvaluationError, delta_m, evaluate
from polytask.models import create_model, create_trunk
from polytask.tasks import Task


def test_delta_m_matches_the_formula_by_hand() -> None:
    tasks = [Task("acc", "multiclass", num_classes=3), Task("err", "regression")]
    metrics = {"acc": {"accuracy": 0.9}, "err": {"mae": 1.1}}
    baseline = {"acc": {"accuracy": 0.8}, "err": {"mae": 1.0}}
    # accuracy: higher is better -> -(0.9-0.8)/0.8 = -12.5%; mae: +(1.1-1.0)/1.0 = +10%
    assert delta_m(metrics, baseline, tasks) == pytest.approx(100 * (-0.125 + 0.1) / 2)


def test_delta_m_refuses_an_undefined_baseline() -> None:
    tasks = [Task("err", "regression")]
    with pytest.raises(EvaluationError, match="task 'err'"):
        delta_m({"err": {"mae": 1.0}}, {"err": {"mae": 0.0}}, tasks)


def test_undefined_auroc_is_nan_and_counted_not_invented() -> None:
    tasks = [Task("t", "binary")]
    data = MultiTaskData(torch.randn(8, 3), {"t": torch.tensor([1.0] * 4 + [math.nan] * 4)}, tasks)
    model = create_model("hard_sharing", create_trunk("mlp", in_features=3, hidden=(4,)), tasks)
    with pytest.warns(UserWarning, match="ROC-AUC undefined"):
        metrics, warnings = evaluate(model, tasks, data)
    assert math.isnan(metrics["t"]["auroc"])
    assert warnings == {"undefined_metric/t/auroc": 1}
    assert metrics["t"]["labelled"] == 4
