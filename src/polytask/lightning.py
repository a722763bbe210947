"""Lightning adapter: any polytask model and balancer trained under a Lightning ``Trainer``.

Why an adapter and not a port: a polytask update is not "a loss, then backward". A balancer
declares what it needs (the losses, per-task gradients, a Gramian) and the
:class:`~polytask.balancing.engine.GradientEngine` computes exactly that and writes ``.grad``.
Lightning's automatic optimisation owns backward and would take that away, so
:class:`PolytaskLightningModule` sets ``automatic_optimization = False`` and its
``training_step`` calls polytask's own :func:`~polytask.training.step.train_step` with the
optimizer Lightning hands it: the same forward, masked losses, gradient strategy, clipping,
update and after-step as :func:`polytask.training.fit`, whatever the method. Lightning keeps what
it is good at: the loop, callbacks (checkpoints, early stopping), loggers, progress.

Validation and test metrics are the project's evaluation: the batch outputs are collected and
handed to :func:`polytask.evaluation.metrics.evaluate` (per task, labelled rows only, undefined
metrics reported as NaN *and* counted), logged as ``val/<task>/<metric>``, ``val/mean_primary``
(the selection score ``fit`` uses without baselines, higher is better) and
``val/warning/<key>``.

:class:`PolytaskDataModule` serves :class:`~polytask.data.base.Splits`: the training batches of
epoch ``e`` are ``splits.train.batches(batch_size, shuffle=True,
generator=epoch_generator(seed, e))``, the very call ``fit`` makes, so with the same seed, model,
balancer and settings the two trainers see the same batches in the same order and end with the
same weights (``tests/test_lightning.py`` checks it, bit for bit).

What ``fit`` does that this adapter leaves to Lightning: the number of epochs (``max_epochs``),
checkpoints and selection (``ModelCheckpoint(monitor="val/mean_primary", mode="max")``), early
stopping (``EarlyStopping``), learning-rate schedules (return one from ``configure_optimizers``;
it is stepped once per epoch), logging. Not supported, and refused when the Trainer starts:
several devices (polytask's own distributed engine is ``polytask train --nproc``) and Lightning
precision plugins (use ``amp=`` here: polytask autocasts the forward and keeps losses in float32).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

try:
    import lightning.pytorch as pl
except ImportError as err:  # pragma: no cover - the extra is installed where this is tested
    raise ImportError(
        "polytask.lightning needs Lightning >= 2.4: pip install 'polytask[lightning]'"
    ) from err

from polytask.balancing import Balancer, GradientEngine, StepOutput, create_balancer
from polytask.config import format_validation_error
from polytask.data.base import Batch, MultiTaskData, Splits, TaskData
from polytask.evaluation.metrics import evaluate, mean_primary
from polytask.models.base import MultiTaskModel
from polytask.tasks import Task
from polytask.training import NonFiniteLossError, TrainSettings
from polytask.training.loop import epoch_generator, seed_everything, training_optimizer
from polytask.training.precision import Precision
from polytask.training.step import train_step

__all__ = ["EpochBatches", "PolytaskDataModule", "PolytaskLightningModule"]

Metrics = dict[str, dict[str, float]]

_FULL_PRECISION = ("32-true", "32", 32)


class PolytaskLightningModule(pl.LightningModule):
    """A polytask model, its tasks and a balancer as a ``LightningModule`` (manual optimisation).

    Args:
        model: a :class:`~polytask.models.base.MultiTaskModel` (``create_model`` /
            ``build_model``), its tasks in the model's order.
        tasks: the :class:`~polytask.Task` of each head (kinds, losses, metrics, scalers).
        balancer: a :class:`~polytask.balancing.Balancer`, or a registered name
            (``polytask list balancers``) built with ``balancer_options``.
        lr, weight_decay, optimizer, momentum, grad_clip, amp, engine, chunk_size: as in
            :class:`polytask.config.TrainingConfig` (validated there, same defaults).
        seed: seeds the run as ``fit`` does (Python, NumPy and torch at the start of
            ``trainer.fit``; the balancer's per-step randomness). Give the data module the same
            seed to draw ``fit``'s batches.
        eval_batch_size: rows per chunk when the collected outputs are evaluated.

    After validation / test, ``evaluation["val"]`` / ``["test"]`` holds the metrics per task.
    """

    def __init__(
        self,
        model: MultiTaskModel,
        tasks: Sequence[Task],
        balancer: Balancer | str,
        *,
        balancer_options: Mapping[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: str = "adamw",
        momentum: float = 0.9,
        grad_clip: float | None = None,
        amp: bool | str = False,
        engine: str = "jacobian",
        chunk_size: int | None = None,
        seed: int = 0,
        eval_batch_size: int = 1024,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False  # the GradientEngine writes .grad, not backward()
        self.tasks = list(tasks)
        names = [t.name for t in self.tasks]
        if not isinstance(model, MultiTaskModel):
            raise TypeError(
                f"model must be a polytask MultiTaskModel (create_model / build_model), got "
                f"{type(model).__name__}"
            )
        if names != model.task_names:
            raise ValueError(f"tasks {names} differ from the model's heads {model.task_names}")
        if isinstance(balancer, str):
            balancer = create_balancer(balancer, names, **dict(balancer_options or {}))
        elif balancer_options:
            raise ValueError("balancer_options go with a balancer name, not a built Balancer")
        try:
            self.settings = TrainSettings(
                lr=lr, weight_decay=weight_decay, optimizer=optimizer, momentum=momentum,
                grad_clip=grad_clip, amp=amp, engine=engine, chunk_size=chunk_size, seed=seed,
                eval_batch_size=eval_batch_size, progress=False, tensorboard=False,
            )  # fmt: skip
        except ValidationError as err:
            raise ValueError(
                format_validation_error(err, "", "PolytaskLightningModule setting")
            ) from None
        self.model = model
        self.balancer = balancer
        self.engine = self._engine()  # incompatible model / balancer / engine: EngineError now
        self.evaluation: dict[str, Metrics] = {}
        self._step = 0  # updates applied so far: the balancer's per-step seed, as in fit
        self._collected: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []

    def _engine(self) -> GradientEngine:
        s = self.settings
        return GradientEngine(
            self.model, self.tasks, self.balancer, mode=s.engine, chunk_size=s.chunk_size,
            seed=s.seed,
        )

    # ------------------------------------------------------------------ training
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The optimizer :func:`polytask.training.fit` builds (the same function, so the same
        parameter groups: the balancer's learnable weights without weight decay)."""
        return training_optimizer(self.model, self.balancer, self.settings)

    def on_fit_start(self) -> None:
        """Refuse what the step cannot honour, then seed and build the engine as ``fit`` does."""
        trainer = self.trainer
        if trainer.world_size > 1:
            raise RuntimeError(
                f"PolytaskLightningModule runs on one device; the Trainer has {trainer.world_size} "
                "processes. polytask's distributed engine (exact Jacobians across ranks) is "
                "`polytask train CONFIG --nproc N`"
            )
        if trainer.precision not in _FULL_PRECISION:
            raise RuntimeError(
                f"Trainer(precision={trainer.precision!r}): leave the Trainer at '32-true' and "
                "pass amp='bf16' (or 'fp16' on CUDA) to PolytaskLightningModule; polytask "
                "autocasts the forward itself and keeps the task losses in float32"
            )
        seed_everything(self.settings.seed)
        self.engine = self._engine()  # after the move to the Trainer's device
        self._precision = Precision.of(self.settings.amp, self.device)

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        """One polytask update (:func:`~polytask.training.step.train_step`) through the optimizer
        Lightning wraps, so its step counting and ``on_before_optimizer_step`` hooks run."""
        optimizer = self.optimizers()
        assert isinstance(optimizer, torch.optim.Optimizer)  # one optimizer: ours
        out = train_step(
            self.engine, optimizer, batch, self._step, self.current_epoch, device=self.device,
            precision=self._precision, grad_clip=self.settings.grad_clip, check=self._check,
        )  # fmt: skip
        if out is None:  # no task labelled in this batch: nothing was updated
            self.log(
                "train/warning/batch_without_labels", 1.0, on_step=False, on_epoch=True,
                reduce_fx="sum", batch_size=1,
            )  # fmt: skip
            return
        if out.skipped:
            self.log(
                "train/warning/amp/skipped_updates", 1.0, on_step=False, on_epoch=True,
                reduce_fx="sum", batch_size=1,
            )  # fmt: skip
        self._step += 1
        logged = {
            f"train/loss/{t.name}": out.losses[i].detach()
            for i, t in enumerate(self.tasks)
            if bool(out.present[i])
        }
        logged.update(
            {f"train/weight/{t.name}": out.weights[i].detach() for i, t in enumerate(self.tasks)}
        )
        # batch_size=1: the epoch value is the mean over steps, as fit's train loss is
        self.log_dict(logged, on_step=False, on_epoch=True, batch_size=1)

    def _check(self, out: StepOutput) -> None:
        """Before the update: a non-finite loss of a present task stops training, naming it."""
        bad = out.present & ~torch.isfinite(out.losses)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise NonFiniteLossError(
                f"loss of task {self.tasks[i].name!r} is {float(out.losses[i])} at step "
                f"{self._step} (epoch {self.current_epoch}); training stopped before the update"
            )

    def on_train_epoch_end(self) -> None:
        """Step a scheduler from ``configure_optimizers`` (per epoch) and log the balancer's
        warning counts of the epoch (clipped weights, solver fallbacks, ...)."""
        scheduler = self.lr_schedulers()
        if isinstance(scheduler, Sequence):
            raise RuntimeError("PolytaskLightningModule steps one learning-rate scheduler")
        if scheduler is not None:
            scheduler.step()  # type: ignore[call-arg]
        counts = dict(self.balancer.warning_counts)
        self.balancer.warning_counts.clear()
        for key, n in counts.items():
            self.log(f"train/warning/balancer/{key}", float(n), reduce_fx="sum", batch_size=1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["polytask_step"] = self._step

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._step = int(checkpoint.get("polytask_step", 0))

    # ------------------------------------------------------------------ evaluation
    def forward(self, x: Any) -> dict[str, Tensor]:
        return self.model(x)

    def _collect(self, batch: Batch) -> None:
        x, y = batch
        outputs = self.model(x)
        self._collected.append(
            (
                {t.name: outputs[t.name].detach().float().cpu() for t in self.tasks},
                {t.name: y[t.name].detach().cpu() for t in self.tasks},
            )
        )

    def on_validation_epoch_start(self) -> None:
        self._collected = []

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._collect(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self._collected = []

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._collect(batch)

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        """Predictions per task in the targets' units (:meth:`polytask.Task.predict`)."""
        x = batch[0] if isinstance(batch, tuple | list) else batch
        outputs = self.model(x)
        return {t.name: t.predict(outputs[t.name].float()) for t in self.tasks}

    def _log_evaluation(self, stage: str) -> None:
        """The collected outputs through :func:`~polytask.evaluation.metrics.evaluate`."""
        chunks, self._collected = self._collected, []
        if not chunks:
            return
        outputs = {t.name: torch.cat([o[t.name] for o, _ in chunks]) for t in self.tasks}
        targets = {t.name: torch.cat([y[t.name] for _, y in chunks]) for t in self.tasks}
        recorded = MultiTaskData(outputs, targets, self.tasks, name=stage)
        metrics, warning_counts = evaluate(
            _Recorded(), self.tasks, recorded, self.settings.eval_batch_size, torch.device("cpu")
        )
        self.evaluation[stage] = metrics
        logged = {
            f"{stage}/{task}/{name}": float(value)
            for task, scores in metrics.items()
            for name, value in scores.items()
        }
        logged[f"{stage}/mean_primary"] = mean_primary(metrics, self.tasks)
        logged.update({f"{stage}/warning/{k}": float(n) for k, n in warning_counts.items()})
        self.log_dict(logged, on_step=False, on_epoch=True, batch_size=1)


class _Recorded(nn.Module):
    """The "model" that evaluates recorded outputs: its input already is ``{task: output}``."""

    def forward(self, x: dict[str, Tensor]) -> dict[str, Tensor]:
        return x


# ---------------------------------------------------------------------------------------- data
class EpochBatches(Sampler):
    """The batches of one epoch of a split, drawn exactly as :func:`polytask.training.fit` draws
    them (``data.batches`` with the epoch's generator); Lightning calls :meth:`set_epoch`.

    A sampler that yields whole batches (not indices) lets every :class:`TaskData` keep its own
    batching (index slices in memory, a DataLoader with workers for a Dataset) unchanged.
    """

    def __init__(self, data: TaskData, batch_size: int, *, shuffle: bool, seed: int) -> None:
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        generator = epoch_generator(self.seed, self.epoch) if self.shuffle else None
        return iter(self.data.batches(self.batch_size, shuffle=self.shuffle, generator=generator))

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)


class _Given(Dataset):
    """Returns what the sampler hands it: the batch itself."""

    def __getitem__(self, batch: Batch) -> Batch:  # type: ignore[override]
        return batch


def _as_is(batch: Batch) -> Batch:
    """No collation: :class:`EpochBatches` yields finished batches (picklable, unlike a lambda)."""
    return batch


class PolytaskDataModule(pl.LightningDataModule):
    """Train / validation / test loaders of polytask :class:`~polytask.data.base.Splits`.

    Args:
        splits: any polytask splits (a loader's, ``random_split``'s, in memory or Datasets).
        batch_size: training rows per step; ``eval_batch_size``: per validation / test batch.
        seed: the run's seed; with the module's seed, the batches of ``fit`` epoch by epoch.
    """

    def __init__(
        self, splits: Splits, *, batch_size: int = 128, eval_batch_size: int = 1024, seed: int = 0
    ) -> None:
        super().__init__()
        if not isinstance(splits, Splits):
            raise TypeError(
                f"PolytaskDataModule takes polytask Splits, got {type(splits).__name__}; cut "
                "data with polytask.data.random_split(data)"
            )
        for what, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be an integer >= 1, got {value!r}")
        self.splits = splits
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed

    def _loader(self, data: TaskData, batch_size: int, shuffle: bool) -> DataLoader:
        sampler = EpochBatches(data, batch_size, shuffle=shuffle, seed=self.seed)
        # Its own generator: creating the iterator must not draw from torch's global RNG,
        # which fit's training (dropout) reads.
        return DataLoader(
            _Given(), sampler=sampler, batch_size=None, collate_fn=_as_is,
            generator=torch.Generator(),
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.splits.train, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits.val, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.splits.test, self.eval_batch_size, shuffle=False)
