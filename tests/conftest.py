"""Shared fixtures: the real data beside the checkout, and small deterministic settings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("POLYTASK_DATA", ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The directory of real data files (``POLYTASK_DATA`` or ``../shared/data``)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data directory not found: {SHARED_DATA} (set POLYTASK_DATA)")
    os.environ["POLYTASK_DATA"] = str(SHARED_DATA)
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture
def single_thread(_deterministic: None) -> Iterator[None]:
    """One intra-op thread for modules of tiny tensors (``pytestmark = usefixtures(...)``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
