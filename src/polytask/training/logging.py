"""Run-directory logging: metrics.csv, weights.csv, experts.csv and TensorBoard events.

Formats (read by :mod:`polytask.report`):

* ``metrics.csv``: ``epoch,split,task,metric,value`` (``task`` empty for run-level values);
* ``weights.csv``: ``step,epoch,task,weight``, the weights the balancer applied at every step;
* ``experts.csv``: ``epoch,task,expert,weight``, mean gate weights of mixture models.

On resume, rows of epochs after the checkpoint are dropped first, so a resumed run's files are the
same as an uninterrupted run's.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["RunLogger"]

_HEADERS = {
    "metrics.csv": ["epoch", "split", "task", "metric", "value"],
    "weights.csv": ["step", "epoch", "task", "weight"],
    "experts.csv": ["epoch", "task", "expert", "weight"],
}


class RunLogger:
    def __init__(
        self, run_dir: Path, task_names: Sequence[str], *, keep_through_epoch: int, tensorboard: bool
    ) -> None:
        self.run_dir = run_dir
        self.task_names = list(task_names)
        self.warnings: dict[str, int] = {}
        run_dir.mkdir(parents=True, exist_ok=True)
        for name, header in _HEADERS.items():
            self._truncate(run_dir / name, header, keep_through_epoch)
        self._weights: list[list[Any]] = []
        self._gates: dict[str, torch.Tensor] = {}
        self._gate_steps = 0
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(run_dir / "tb"))
            except ImportError:
                self.count("tensorboard_missing")
                warnings.warn(
                    "TensorBoard events not written: install the extra with "
                    "`pip install 'polytask[tensorboard]'`",
                    stacklevel=2,
                )

    @staticmethod
    def _truncate(path: Path, header: list[str], keep_through_epoch: int) -> None:
        rows: list[list[str]] = []
        if path.exists() and keep_through_epoch >= 0:
            with path.open(newline="") as fh:
                reader = csv.reader(fh)
                file_header = next(reader, None)
                col = (file_header or header).index("epoch")
                rows = [r for r in reader if r and int(r[col]) <= keep_through_epoch]
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)

    def _append(self, name: str, rows: Sequence[Sequence[Any]]) -> None:
        with (self.run_dir / name).open("a", newline="") as fh:
            csv.writer(fh).writerows(rows)

    def count(self, key: str, n: int = 1) -> None:
        self.warnings[key] = self.warnings.get(key, 0) + n

    def step(
        self, step: int, epoch: int, weights: torch.Tensor, gates: Mapping[str, torch.Tensor] | None
    ) -> None:
        for name, w in zip(self.task_names, weights.tolist(), strict=True):
            self._weights.append([step, epoch, name, f"{w:.6g}"])
        if gates:
            for name, g in gates.items():
                g = g.detach().float().cpu()
                self._gates[name] = self._gates.get(name, torch.zeros_like(g)) + g
            self._gate_steps += 1

    def epoch(self, epoch: int, rows: Sequence[tuple[str, str, str, float]]) -> None:
        """Write one epoch: ``rows`` of ``(split, task, metric, value)`` plus buffered steps."""
        self._append("metrics.csv", [[epoch, s, t, m, f"{v:.8g}"] for s, t, m, v in rows])
        self._append("weights.csv", self._weights)
        if self._gates:
            gate_rows = [
                [epoch, task, e, f"{float(w) / self._gate_steps:.6g}"]
                for task, g in self._gates.items()
                for e, w in enumerate(g.tolist())
            ]
            self._append("experts.csv", gate_rows)
        if self.tb is not None:
            for s, t, m, v in rows:
                self.tb.add_scalar(f"{s}/{t + '/' if t else ''}{m}", v, epoch)
            for task, w in self._epoch_mean_weights().items():
                self.tb.add_scalar(f"weights/{task}", w, epoch)
            self.tb.flush()
        self._weights, self._gates, self._gate_steps = [], {}, 0

    def _epoch_mean_weights(self) -> dict[str, float]:
        sums: dict[str, list[float]] = {}
        for _, _, task, w in self._weights:
            sums.setdefault(task, []).append(float(w))
        return {k: sum(v) / len(v) for k, v in sums.items()}

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
