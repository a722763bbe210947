"""The validation score that picks the kept epoch: each metric's own direction, slashed names."""

from __future__ import annotations

import pytest

from polytask.tasks import Task
from polytask.training.loop import TrainingError, selection_score


@pytest.mark.parametrize(
    ("metric", "better", "worse"),
    [("mae", 1.0, 2.0), ("rmse", 1.0, 2.0), ("explained_variance", 0.9, 0.1), ("loss", 0.1, 0.5)],
)
def test_a_task_metric_rule_prefers_the_better_value_in_its_own_direction(
    metric: str, better: float, worse: float
) -> None:
    task = Task("y", "regression")
    score = lambda v: selection_score(f"y/{metric}", {"y": {metric: v}}, [task], None)  # noqa: E731
    assert score(better) > score(worse)


def test_a_task_name_with_a_slash_is_read_up_to_the_last_slash() -> None:
    task = Task("NR-AR/LBD", "binary")
    val = {"NR-AR/LBD": {"auroc": 0.7, "accuracy": 0.6}}
    assert selection_score("NR-AR/LBD/accuracy", val, [task], None) == pytest.approx(0.6)
    with pytest.raises(TrainingError, match="names no task/metric"):
        selection_score("NR-AR/f1", val, [task], None)


def test_an_unknown_metric_has_no_direction() -> None:
    with pytest.raises(ValueError, match="has no metric 'bleu'"):
        Task("y", "regression").metric_higher_is_better("bleu")
