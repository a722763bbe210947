"""The Lightning adapter: under a Lightning ``Trainer``, the same run as polytask's own ``fit``.

Why: the adapter's promise is that Lightning changes who drives the loop, not what is learned.
So the test is the strongest one available: from the same initial model, seed, data (300 real
Census rows), balancer and settings, ``Trainer.fit`` and :func:`polytask.training.fit` must end
with the same weights *bit for bit* (no tolerance is needed: the step is the same function, the
batches come from the same call with the same generator, the global RNG is seeded the same way
and nothing in Lightning's loop draws from it). The MLP has dropout, so the global RNG matters;
the sanity validation steps stay on. The metrics are compared with those ``fit`` wrote
(``metrics.csv`` keeps 8 significant digits: that is the only tolerance).
"""

from __future__ import annotations

import copy
import csv
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from polytask.balancing import EngineError, create_balancer
from polytask.data.base import Splits
from polytask.data.census import load_census
from polytask.evaluation.metrics import evaluate
from polytask.lightning import PolytaskDataModule, PolytaskLightningModule
from polytask.models import create_model, create_trunk
from polytask.models.base import MultiTaskModel
from polytask.training import NonFiniteLossError, TrainSettings, fit
from polytask.training.checkpoint import load_checkpoint

SEED, EPOCHS, BATCH, LR = 3, 2, 32, 1e-2


@pytest.fixture(autouse=True)
def _quiet_lightning() -> Iterator[None]:
    """Lightning's advice (worker counts, loggers) is not under test here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        yield


@pytest.fixture(scope="module")
def splits(data_dir: Path) -> Splits:
    return load_census(max_rows=300)


@pytest.fixture(scope="module")
def initial(splits: Splits) -> MultiTaskModel:
    torch.manual_seed(0)
    width = int(splits.train.example().shape[1])
    trunk = create_trunk("mlp", in_features=width, hidden=[16], dropout=0.2)
    return create_model("hard_sharing", trunk, splits.tasks)


def _trainer(**options: Any) -> pl.Trainer:
    return pl.Trainer(
        **{
            "max_epochs": EPOCHS, "accelerator": "cpu", "logger": False,
            "enable_checkpointing": False, "enable_progress_bar": False,
            "enable_model_summary": False, **options,
        }
    )  # fmt: skip


def _fit_metrics(run_dir: Path, epoch: int) -> dict[str, dict[str, float]]:
    """The validation metrics ``fit`` logged for ``epoch`` (metrics.csv)."""
    out: dict[str, dict[str, float]] = {}
    with (run_dir / "metrics.csv").open() as fh:
        for row in csv.DictReader(fh):
            if row["split"] == "val" and row["task"] and int(row["epoch"]) == epoch:
                out.setdefault(row["task"], {})[row["metric"]] = float(row["value"])
    return out


@pytest.mark.parametrize("method", ["equal", "upgrad", "uncertainty"])
def test_trainer_fit_equals_polytask_fit_bit_for_bit(
    method: str, splits: Splits, initial: MultiTaskModel, tmp_path: Path
) -> None:
    """equal: loss-based; upgrad: per-task gradients through the Jacobian strategy;
    uncertainty: learnable task weights in the optimizer (their own parameter group)."""
    names = [t.name for t in splits.tasks]
    ours, theirs = copy.deepcopy(initial), copy.deepcopy(initial)
    settings = TrainSettings(
        epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=SEED, grad_clip=1.0, device="cpu",
        progress=False, tensorboard=False,
    )  # fmt: skip
    balancer = create_balancer(method, names)
    fit(ours, splits, balancer, settings, tmp_path)
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt", task_names=names)

    module = PolytaskLightningModule(theirs, splits.tasks, method, lr=LR, seed=SEED, grad_clip=1.0)
    trainer = _trainer()
    trainer.fit(module, datamodule=PolytaskDataModule(splits, batch_size=BATCH, seed=SEED))

    got = module.model.state_dict()
    assert got.keys() == last["model"].keys()
    unequal = [k for k in got if not torch.equal(got[k], last["model"][k])]
    assert not unequal, f"{method}: parameters differ from fit's: {unequal}"
    moved = [k for k in got if not torch.equal(got[k], initial.state_dict()[k])]
    assert moved, "nothing was trained"
    for key, value in module.balancer.state_dict().items():
        assert torch.equal(value, last["balancer"][key]), f"balancer state {key} differs"
    steps = EPOCHS * math.ceil(len(splits.train) / BATCH)
    assert module._step == trainer.global_step == last["step"] == steps

    logged = _fit_metrics(tmp_path, EPOCHS - 1)
    for task, scores in logged.items():
        for metric, value in scores.items():
            assert module.evaluation["val"][task][metric] == pytest.approx(value, rel=1e-7), (
                task, metric,
            )  # fmt: skip
            assert float(trainer.callback_metrics[f"val/{task}/{metric}"]) == pytest.approx(
                value, rel=1e-6
            )  # float32 in Lightning's logged tensors


def test_validate_and_test_log_the_projects_evaluation(
    splits: Splits, initial: MultiTaskModel
) -> None:
    module = PolytaskLightningModule(copy.deepcopy(initial), splits.tasks, "pcgrad", seed=SEED)
    data = PolytaskDataModule(splits, batch_size=BATCH, eval_batch_size=16, seed=SEED)
    trainer = _trainer(max_epochs=1)
    trainer.fit(module, datamodule=data)
    (tested,) = trainer.test(module, datamodule=data, verbose=False)
    direct, _ = evaluate(module.model, splits.tasks, splits.test, 512, torch.device("cpu"))
    for task in ("income", "marital"):
        for metric in ("loss", "accuracy", "auroc", "labelled"):
            assert tested[f"test/{task}/{metric}"] == pytest.approx(
                direct[task][metric], rel=1e-6
            )  # batches of 16 vs 512: the loss sums differ in rounding only
    means = [direct[t]["auroc"] for t in ("income", "marital")]
    assert tested["test/mean_primary"] == pytest.approx(sum(means) / 2, rel=1e-6)
    predicted = trainer.predict(module, dataloaders=data.test_dataloader())
    assert predicted is not None
    probabilities = torch.cat([p["income"] for p in predicted])  # type: ignore[index]
    assert probabilities.shape == (len(splits.test),)
    assert bool(((probabilities >= 0) & (probabilities <= 1)).all())


def test_scheduler_from_configure_optimizers_steps_each_epoch(
    splits: Splits, initial: MultiTaskModel
) -> None:
    class Decaying(PolytaskLightningModule):
        def configure_optimizers(self) -> Any:
            optimizer = super().configure_optimizers()
            step = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
            return {"optimizer": optimizer, "lr_scheduler": step}

    module = Decaying(copy.deepcopy(initial), splits.tasks, "equal", lr=0.01, seed=SEED)
    _trainer(limit_val_batches=0).fit(
        module, datamodule=PolytaskDataModule(splits, batch_size=BATCH, seed=SEED)
    )
    optimizer = module.optimizers()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**EPOCHS)  # type: ignore[union-attr]


def test_refusals_name_the_setting(splits: Splits, initial: MultiTaskModel) -> None:
    tasks = splits.tasks
    with pytest.raises(ValueError, match="lr"):
        PolytaskLightningModule(copy.deepcopy(initial), tasks, "equal", lr=-1.0)
    with pytest.raises(ValueError, match=r"tasks \['marital', 'income'\] differ"):
        PolytaskLightningModule(copy.deepcopy(initial), tasks[::-1], "equal")
    with pytest.raises(EngineError):  # a loss-only balancer cannot use the representation mode
        PolytaskLightningModule(copy.deepcopy(initial), tasks, "equal", engine="representation")
    with pytest.raises(TypeError, match="takes polytask Splits"):
        PolytaskDataModule(splits.train)  # type: ignore[arg-type]
    module = PolytaskLightningModule(copy.deepcopy(initial), tasks, "equal")
    data = PolytaskDataModule(splits, batch_size=BATCH)
    with pytest.raises(RuntimeError, match="leave the Trainer at '32-true' and pass amp='bf16'"):
        _trainer(precision="bf16-mixed").fit(module, datamodule=data)


def test_non_finite_loss_stops_before_the_update_naming_the_task(
    splits: Splits, initial: MultiTaskModel
) -> None:
    model = copy.deepcopy(initial)
    head = model.task_parameters("marital")
    with torch.no_grad():
        head[0].fill_(float("nan"))
    module = PolytaskLightningModule(model, splits.tasks, "equal", seed=SEED)
    before = [p.detach().clone() for p in model.shared_parameters()]
    with pytest.raises(NonFiniteLossError, match="loss of task 'marital' is nan at step 0"):
        _trainer(num_sanity_val_steps=0).fit(
            module, datamodule=PolytaskDataModule(splits, batch_size=BATCH, seed=SEED)
        )
    for p, b in zip(model.shared_parameters(), before, strict=True):
        assert torch.equal(p.detach(), b)  # the update was not applied
