"""A wall-clock budget for ``polytask advise`` / ``fit --auto``: parse it, spend it, account for it.

Why a budget object rather than a trial count: users know how long they can wait, not how many
trainings that is on their machine. Every decision to launch a training asks :meth:`Budget.fits`
with that training's estimated cost (measured from the trainings already done) plus the reserve
kept for the final retraining, so the whole search ends within the budget, up to the error of the
estimates (the tolerance the advisor reports against).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

__all__ = ["DEFAULT_AUTO_BUDGET_S", "Budget", "BudgetError", "format_seconds", "parse_budget"]

#: What ``polytask fit --auto`` spends without ``--budget``: a small, fast search.
DEFAULT_AUTO_BUDGET_S = 120.0

_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$")


class BudgetError(ValueError):
    """A budget that cannot be parsed, or that is too small for even one candidate."""


def parse_budget(text: str | float) -> float:
    """Seconds from ``"10m"``, ``"90s"``, ``"1.5h"`` or a plain number of seconds."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = _PATTERN.match(text.lower())
        if match is None or match.group(2) not in _UNITS:
            raise BudgetError(
                f"budget {text!r}: expected a number with an optional unit s, m or h "
                "(e.g. 90s, 10m, 1.5h)"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise BudgetError(f"budget {text!r}: must be a positive duration")
    return seconds


def format_seconds(seconds: float) -> str:
    """``95.0 -> "1m35s"``: durations as people read them."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"


@dataclass
class Budget:
    """``seconds`` of wall time from ``started`` (a ``time.perf_counter`` reading)."""

    seconds: float
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def remaining(self) -> float:
        return self.seconds - self.elapsed()

    def fits(self, cost: float, reserve: float = 0.0) -> bool:
        """Whether a job of estimated ``cost`` seconds, then ``reserve`` more, ends in time."""
        return self.elapsed() + cost + reserve <= self.seconds
