"""The benchmarks live in the repository's ``benchmarks/`` folder, outside the installed package:
their folder goes on ``sys.path`` (appended, as ``polytask bench`` does), so that the tests import
``polytask_bench`` as the benchmark scripts do."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

if str(BENCHMARKS) not in sys.path:
    sys.path.append(str(BENCHMARKS))
