"""Checkpoints: written atomically, loaded with ``weights_only=True``, validated before use.

A checkpoint holds everything needed to continue a run exactly: model, optimizer, scheduler and
balancer state, the RNG states, the epoch and step counters and the model-selection state. It is
written to a temporary file in the same directory and renamed over the old one, so a crash while
writing never leaves a truncated ``last.pt`` behind.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CheckpointError", "capture_rng", "load_checkpoint", "restore_rng", "save_checkpoint"]

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "model", "optimizer", "balancer", "epoch", "step", "task_names", "rng")


class CheckpointError(ValueError):
    """A checkpoint that is unreadable, corrupt, or belongs to a different model or task list."""


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT_VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(
    path: str | Path,
    *,
    task_names: list[str] | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load and validate a checkpoint; raise :class:`CheckpointError` saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:  # torch's EOFError has an empty message
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes): it was truncated (a full disk, an unfinished "
            "copy); polytask itself writes checkpoints atomically, so use another copy or "
            "checkpoints/last.pt / best.pt of the run"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files
        reason = str(err) or f"{type(err).__name__} (the file is truncated)"
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a polytask checkpoint: {reason}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dictionary")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks key(s) {missing}")
    if state["format"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {state['format']}, this polytask reads {FORMAT_VERSION}"
        )
    if task_names is not None and list(state["task_names"]) != list(task_names):
        raise CheckpointError(
            f"checkpoint {path} was trained on tasks {state['task_names']}, not {task_names}"
        )
    return state


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """Load weights, naming the first mismatching key instead of PyTorch's long dump."""
    own = model.state_dict()
    theirs = state["model"]
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match this model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    for key, value in own.items():
        if tuple(theirs[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"checkpoint {path}: parameter {key!r} has shape {tuple(theirs[key].shape)}, "
                f"the model expects {tuple(value.shape)}"
            )
    model.load_state_dict(theirs)
