"""A finished run's selected model and its data, for export and compression.

Export and compression both start from a run directory (``config.yaml``, ``tasks.json``,
``checkpoints/best.pt``). They need the model the run *selected* (on validation), rebuilt from the
config and read from ``best.pt``, and the run's own splits: export verifies on held-out rows,
compression re-evaluates and fine-tunes. A run trained on data given from Python has no data set
to reload; then the caller passes its splits (or, for export, rows to verify on).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from polytask.data.base import Splits
from polytask.data.batch import Inputs
from polytask.data.registry import UnknownDatasetError
from polytask.experiment import build_model, load_data
from polytask.inference import LoadedRun, load_run
from polytask.models.base import MultiTaskModel
from polytask.training.checkpoint import load_checkpoint, load_model_state

__all__ = ["MissingCheckpointError", "RunModel", "check_run_dir", "load_run_model"]


class MissingCheckpointError(FileNotFoundError):
    """A run directory without ``checkpoints/best.pt``: nothing was selected to export."""


@dataclass
class RunModel:
    """The selected model of a run, with the run's description and (when reloadable) its data."""

    run: LoadedRun
    model: MultiTaskModel
    splits: Splits | None


def check_run_dir(run_dir: Path) -> None:
    """Refuse, before any work, a path that is no finished run, saying what is missing and why."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    missing = [n for n in ("config.yaml", "tasks.json") if not (run_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{run_dir} is not a run directory (missing {', '.join(missing)}); give one run of an "
            "experiment, e.g. runs/<name>/<balancer>-seed0"
        )
    best = run_dir / "checkpoints" / "best.pt"
    if best.is_file():
        return
    if (run_dir / "checkpoints" / "last.pt").is_file():
        why = (
            "only checkpoints/last.pt exists: the run was interrupted before an epoch was selected "
            "or every validation score was NaN; finish it (`polytask train CONFIG --resume`)"
        )
    else:
        why = "the run has no checkpoint at all: it never finished an epoch"
    raise MissingCheckpointError(
        f"{run_dir} has no selected checkpoint {best}: {why}. Export and compression read the "
        "model selected on validation, never the last one"
    )


def load_run_model(
    run_dir: str | Path, splits: Splits | None = None, example: Inputs | None = None
) -> RunModel:
    """Rebuild a run's selected model (``best.pt``) on the CPU, in eval mode.

    ``splits``: the run's data when it cannot be reloaded from its config (data given from
    Python); otherwise the config's data is loaded with the run's seed. ``example``: rows to
    build the model from when there are no splits at all (the model is then built from their
    shapes, and the data-derived options of a trunk, such as category counts, are unknown).
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    run = load_run(run_dir)
    if splits is None:
        try:
            splits = load_data(run.config, run.seed)
        except UnknownDatasetError as err:
            if example is None:
                raise ValueError(
                    f"{run_dir} was trained on data given from Python ({err}); pass its splits "
                    "(splits=...) or rows of inputs (inputs=...)"
                ) from None
    names = [t.name for t in run.tasks]
    if splits is not None:
        if [t.name for t in splits.tasks] != names:
            raise ValueError(
                f"the data's tasks {[t.name for t in splits.tasks]} differ from the run's {names}"
            )
        example, info = splits.train.example(), splits.info
    else:
        info = {}
    assert example is not None
    with torch.random.fork_rng(devices=[]):  # building draws weights: leave the caller's RNG be
        model = build_model(run.config, run.tasks, example, data_info=info)
    path = run_dir / "checkpoints" / "best.pt"
    state = load_checkpoint(path, task_names=names, map_location="cpu")
    load_model_state(model, state, path)
    model.eval()
    return RunModel(run=run, model=model, splits=splits)
