"""Budgets: parsed from what people type, spent against a clock."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polytask.auto.budget import Budget, BudgetError, format_seconds, parse_budget


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90.0), ("10m", 600.0), ("1.5h", 5400.0), ("45", 45.0), (" 2 min ", 120.0), (30, 30.0)],
)
def test_parse_budget(text: str | float, seconds: float) -> None:
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10 parsecs", "0s", "-5m", "m"])
def test_bad_budgets_say_what_is_expected(text: str) -> None:
    with pytest.raises(BudgetError, match="budget"):
        parse_budget(text)


@given(st.floats(0.01, 1e5))
def test_minutes_and_seconds_agree(minutes: float) -> None:
    assert parse_budget(f"{minutes}m") == pytest.approx(parse_budget(f"{minutes * 60}s"))


def test_budget_accounts_for_elapsed_time_and_the_reserve() -> None:
    budget = Budget(10.0, started=time.perf_counter() - 4.0)
    assert 4.0 <= budget.elapsed() < 10.0
    assert budget.fits(3.0, reserve=2.0)
    assert not budget.fits(3.0, reserve=4.0)
    assert budget.remaining() <= 6.0
    assert format_seconds(95) == "1m35s" and format_seconds(12.34) == "12.3s"
