"""Add tasks to a trained model: new heads on the trained trunk, with the old tasks measured.

Why a separate step rather than retraining: a trained trunk already encodes what the old tasks
taught it; a new task often needs only a head on those features (``frozen``), or a light touch of
the last stages (``partial``) or of the whole trunk (``finetune``). The price of touching the
trunk is *forgetting*: the old tasks' heads read features that moved. This module measures that
price instead of hiding it: every extension reports the old tasks' metrics before and after, and
the new tasks' metrics against a model trained on them from scratch.

Training follows "linear probe, then fine-tune" (Kumar et al. 2022, LP-FT): the new heads are
first trained on the frozen trunk; only then, in ``partial`` / ``finetune`` mode, are trunk stages
unfrozen at a smaller learning rate (``lr_scale`` x the config's). Starting the trunk's update from
trained heads instead of random ones keeps the early, large gradients of a random head from
distorting the shared features. ``keep_old`` adds the old tasks' losses (on the old data's
labels) to the second phase's objective and lets their heads move with the trunk.

The new data must reach the trunk the way the old data did: the same input shape and the same
featurisation recipe (for molecules: fingerprint radius and width, descriptors); both are checked
before anything trains, as are task-name clashes and heads the trunk's features cannot feed.

The result is an ordinary run directory (``load_run`` reloads it): its ``config.yaml`` lists the
old and the new data as two sources of one several-datasets run, so re-evaluating it reads each
task's labels from where they came.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from polytask.balancing import create_balancer
from polytask.config import ExperimentConfig, load_config, parse_config
from polytask.data.base import Splits
from polytask.data.batch import Inputs
from polytask.evaluation.metrics import evaluate
from polytask.experiment import build_model, load_data, load_sources, run_experiment
from polytask.experiment import train_source as make_train_source
from polytask.lifecycle._run import load_run_model
from polytask.lifecycle._table import markdown_table
from polytask.models.base import MultiTaskModel
from polytask.models.freeze import stage_modules, unfreeze_stages
from polytask.models.heads import HeadError
from polytask.tasks import Task
from polytask.training import fit
from polytask.training.checkpoint import capture_rng, save_checkpoint

__all__ = [
    "MODES",
    "ExtendError",
    "ExtendResult",
    "GrowsWithTasks",
    "TaskView",
    "check_new_tasks",
    "extend_run",
    "extension_options",
    "transplant_weights",
]

Mode = Literal["frozen", "partial", "finetune"]
MODES: tuple[str, ...] = ("frozen", "partial", "finetune")
Metrics = dict[str, dict[str, float]]

# what a featurisation *recipe* is made of; other featurizer entries are statistics fitted on a
# data set's training rows (descriptor standardisation), which differ from one data set to another
_RECIPE_KEYS = ("kind", "radius", "n_bits", "descriptors")


class ExtendError(ValueError):
    """A new task or its data that cannot be added to this run; the message says what and where."""


@runtime_checkable
class GrowsWithTasks(Protocol):
    """An architecture that gives every task a path of its own through a shared part sized by the
    number of tasks (Cross-stitch: a column and a row of every unit; CGC / PLE: task experts and
    gates read by shared gates).

    Built with ``added_tasks=K`` (a model option), its last ``K`` tasks are the added ones and its
    shared tensors keep the trained shapes, so the trained tensors drop in unchanged;
    ``start_added_tasks(source)`` then starts the added tasks as copies of trained task
    ``source``'s path and returns the keys of shared tensors that exist for them only.
    """

    added_tasks: int

    def start_added_tasks(self, source: str) -> list[str]: ...


def extension_options(model: MultiTaskModel, new_tasks: int) -> dict[str, Any]:
    """The model options that rebuild ``model``'s architecture with ``new_tasks`` more tasks."""
    return {"added_tasks": new_tasks} if isinstance(model, GrowsWithTasks) else {}


class TaskView(MultiTaskModel):
    """A trained model seen through a subset of its tasks (training and evaluating only those).

    Why: the gradient engine and the loop train exactly the tasks a model declares. Adding tasks
    to a model of several architectures is simplest by building the full model once and *viewing*
    it with the tasks being trained; the parameters are the full model's, so nothing is copied.
    Parameters of hidden tasks must be frozen (``check_ownership`` refuses them otherwise).
    """

    def __init__(self, model: MultiTaskModel, tasks: Sequence[Task]) -> None:
        super().__init__()
        unknown = [t.name for t in tasks if t.name not in model.task_names]
        if unknown:
            raise ExtendError(f"tasks {unknown} are not tasks of the model {model.task_names}")
        self.base = model
        self.tasks = list(tasks)
        self.supports_representation_grad = model.supports_representation_grad

    def encode(self, x: Inputs) -> Tensor:
        return self.base.encode(x)

    def decode(self, rep: Tensor, x: Inputs) -> dict[str, Tensor]:
        out = self.base.decode(rep, x)
        return {name: out[name] for name in self.task_names}

    def shared_modules(self) -> list[nn.Module]:
        return self.base.shared_modules()

    def task_modules(self, task: str) -> list[nn.Module]:
        return self.base.task_modules(task)

    def gate_weights(self) -> dict[str, Tensor] | None:
        gates = self.base.gate_weights()
        return None if gates is None else {k: v for k, v in gates.items() if k in self.task_names}


@dataclass
class ExtendResult:
    """The extended run and its comparison table (one row per task)."""

    run_dir: Path
    mode: str
    keep_old: bool
    rows: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)

    def table(self) -> str:
        """Markdown: old tasks before -> after (forgetting), new tasks extended vs from scratch."""
        header = ["task", "group", "metric", "val: reference", "val: extended",
                  "test: reference", "test: extended", "test change"]  # fmt: skip
        return markdown_table(header, (
            [r["task"], f"{r['group']} (vs {'before' if r['group'] == 'old' else 'scratch'})",
             r["metric"], _fmt(r["val_reference"]), _fmt(r["val_extended"]),
             _fmt(r["test_reference"]), _fmt(r["test_extended"]),
             f"{r['test_extended'] - r['test_reference']:+.4f}"]
            for r in self.rows
        ))  # fmt: skip


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


# ---------------------------------------------------------------------------------- validation
def check_new_tasks(
    model: MultiTaskModel,
    old_tasks: Sequence[Task],
    new_tasks: Sequence[Task],
    *,
    replace: bool = False,
) -> None:
    """Refuse new tasks whose names clash (unless ``replace``) or whose heads the trunk cannot feed.

    The head check asks :func:`polytask.models.heads.make_task_head` for each new task on the
    trunk's feature spec (when the architecture declares one), so a task of the wrong layout
    (a dense map on a vector trunk) fails here, naming the task, its kind and the trunk's features.
    """
    old_names = [t.name for t in old_tasks]
    clash = [t.name for t in new_tasks if t.name in old_names]
    if clash and not replace:
        raise ExtendError(
            f"task(s) {clash} already exist in the run (its tasks: {old_names}); rename them in "
            "the new config, drop them from its data, or pass --replace to retrain their heads"
        )
    seen: set[str] = set()
    for t in new_tasks:
        if t.name in seen:
            raise ExtendError(f"the new config lists task {t.name!r} twice")
        seen.add(t.name)
    spec = getattr(model, "feature_spec", None)
    if spec is None:
        return
    from polytask.models.heads import make_task_head

    for t in new_tasks:
        try:
            make_task_head(t, spec)
        except HeadError as err:
            raise ExtendError(
                f"new task {t.name!r} (kind {t.kind.value}, {t.layout} targets) does not fit the "
                f"trunk's features ({spec.describe()}): {err}"
            ) from None


def _shape(x: Inputs) -> Any:
    if isinstance(x, dict):
        return {k: list(v.shape[1:]) for k, v in x.items()}
    return list(x.shape[1:])


def _check_inputs(old: Splits, new: Splits, old_name: str, new_name: str) -> list[str]:
    """Same input shape and featurisation recipe; fitted statistics that differ are warned about."""
    a, b = _shape(old.train.example()), _shape(new.train.example())
    if a != b:
        raise ExtendError(
            f"the new data's inputs ({new_name}: per-row shape {b}) do not match the trunk's "
            f"({old_name}: per-row shape {a}); featurise the new data as the old"
        )
    fa, fb = old.info.get("featurizer"), new.info.get("featurizer")
    if fa is None and fb is None:
        return []
    if fa is None or fb is None:
        raise ExtendError(
            f"featurisation differs: {old_name} has {fa}, {new_name} has {fb} (same shape, "
            "different meaning)"
        )
    ra = {k: fa.get(k) for k in _RECIPE_KEYS}
    rb = {k: fb.get(k) for k in _RECIPE_KEYS}
    if ra != rb:
        raise ExtendError(
            f"featurisation differs: the trunk read {old_name} as {ra}, the new data {new_name} "
            f"is {rb}; give the new data the old featurisation options"
        )
    if {k: v for k, v in fa.items() if k not in _RECIPE_KEYS} != {
        k: v for k, v in fb.items() if k not in _RECIPE_KEYS
    }:
        message = (
            f"the new data {new_name}'s featurisation statistics (fitted on its own training "
            f"rows) differ from those {old_name}'s trunk was trained with; its inputs are "
            "standardised on a different scale"
        )
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        return [message]
    return []


def _single_dataset(config: ExperimentConfig, what: str) -> None:
    d = config.data
    if d.dataset is None:
        raise ExtendError(
            f"{what}: extend reads registered data sets (data.dataset); this config has "
            f"{'a table' if d.table is not None else 'several sources'}"
        )
    from polytask.data import is_multisource

    if is_multisource(d.dataset):
        raise ExtendError(f"{what}: {d.dataset!r} is several data sets; give one registered set")


# ---------------------------------------------------------------------------------- model surgery
def _module_keys(model: nn.Module, modules: Sequence[nn.Module]) -> set[str]:
    """State-dict keys of ``model`` that live in ``modules``."""
    wanted = {id(m) for m in modules}
    keys: set[str] = set()
    for prefix, module in model.named_modules():
        if id(module) in wanted:
            head = f"{prefix}." if prefix else ""
            keys.update(f"{head}{k}" for k in module.state_dict())
    return keys


def transplant_weights(
    extended: MultiTaskModel,
    old: MultiTaskModel,
    new_names: Sequence[str],
    dropped: set[str],
    source: str | None = None,
) -> None:
    """Copy every trained tensor of ``old`` into ``extended``; only the new tasks' stay fresh.

    An architecture that grows with its tasks (:class:`GrowsWithTasks`, built with
    :func:`extension_options`) then starts the new tasks' paths from trained task ``source``'s
    (default: the first kept old task). Refuses a shared tensor whose shape changed with the
    number of tasks (the trunk would not be the trained one) and an untrained tensor that belongs
    to no new task, naming the tensor.
    """
    own, theirs = extended.state_dict(), old.state_dict()
    dropped_keys = _module_keys(old, [m for t in dropped for m in old.task_modules(t)])
    fresh = _module_keys(extended, [m for t in new_names for m in extended.task_modules(t)])
    arch = type(extended).__name__
    for key, value in theirs.items():
        if key in dropped_keys:
            continue
        if key not in own:
            raise ExtendError(
                f"{arch}: the trained tensor {key!r} has no place in the extended model"
            )
        if tuple(own[key].shape) != tuple(value.shape):
            why = (
                f"replacing {sorted(dropped)} would remove a path the other tasks read through "
                "it; give the new task another name instead of --replace"
                if dropped
                else "this architecture's shared part depends on the number of tasks, so it "
                "cannot be extended in place"
            )
            raise ExtendError(
                f"{arch}: tensor {key!r} has shape {tuple(value.shape)} in the trained model and "
                f"{tuple(own[key].shape)} with the new tasks; {why}"
            )
        own[key] = value
    extended.load_state_dict(own)
    started: list[str] = []
    if isinstance(extended, GrowsWithTasks) and extended.added_tasks:
        kept = [t for t in old.task_names if t not in dropped]
        source = source if source is not None else kept[0]
        if source not in kept:
            raise ExtendError(f"{arch}: init_from task {source!r} is not a kept old task {kept}")
        started = extended.start_added_tasks(source)
    untrained = sorted(k for k in own if k not in theirs or k in dropped_keys)
    stray = [k for k in untrained if k not in fresh and k not in started]
    if stray:
        raise ExtendError(
            f"{arch}: tensors {stray[:3]} of the extended model belong to no new task and have no "
            "trained value; this architecture cannot be extended in place"
        )


def _set_trainable(
    model: MultiTaskModel, train_tasks: Sequence[str], trunk: str, stages: int
) -> None:
    """``requires_grad`` on the heads of ``train_tasks`` and on the chosen part of the trunk."""
    for p in model.parameters():
        p.requires_grad_(False)
    for name in train_tasks:
        for module in model.task_modules(name):
            module.requires_grad_(True)
    if trunk == "all":
        for module in model.shared_modules():
            module.requires_grad_(True)
    elif trunk == "last":
        unfreeze_stages(_staged_trunk(model, stages), list(range(-stages, 0)))


def _staged_trunk(model: MultiTaskModel, stages: int) -> nn.Module:
    """The one trunk whose last ``stages`` stages ``partial`` unfreezes, or why there is none."""
    body = getattr(model, "trunk", None)
    if body is None or stage_modules(body) is None:
        raise ExtendError(
            f"mode partial unfreezes the trunk's last stages; {type(model).__name__} has "
            f"{'no trunk' if body is None else type(body).__name__ + ' without stages'}; "
            "use --mode frozen or finetune"
        )
    count = len(stage_modules(body) or [])
    if not 1 <= stages <= count:
        raise ExtendError(f"partial: {stages} stage(s) asked, the trunk has {count}")
    return body


# ---------------------------------------------------------------------------------- configs
def _extended_config(
    run_config: ExperimentConfig,
    new: ExperimentConfig,
    old_tasks: list[str],
    model_options: dict[str, Any],
) -> ExperimentConfig:
    """The extended run's config: old and new data as two sources, the run's model (with the
    options that size it for the added tasks, :func:`extension_options`)."""
    assert run_config.data.dataset is not None and new.data.dataset is not None
    base = {"dataset": run_config.data.dataset, "name": "base",
            "options": dict(run_config.data.options), "tasks": old_tasks}  # fmt: skip
    added = {"dataset": new.data.dataset, "name": "added", "options": dict(new.data.options)}
    raw = run_config.model_dump(mode="json", exclude_none=True)
    raw.pop("models", None)
    model = run_config.model_list[0].model_dump(mode="json")
    model["options"] = {**model.get("options", {}), **model_options}
    raw.update(
        name=f"{run_config.name}+{new.name}",
        data={"sources": [base, added], "split_seed": run_config.data.split_seed},
        model=model,
        training=new.training.model_dump(mode="json", exclude_none=True),
        balancers=[new.balancers[0].model_dump(mode="json", exclude_none=True)],
        baselines={"stl": False},
    )
    if raw["data"]["split_seed"] is None:
        raw["data"].pop("split_seed")
    return parse_config(raw, "extended run")


def _read_new_config(
    path_or_config: str | Path | ExperimentConfig,
) -> tuple[ExperimentConfig, dict]:
    if isinstance(path_or_config, ExperimentConfig):
        return path_or_config, {}  # from Python: its (defaulted) model is ignored, as documented
    import yaml

    raw = yaml.safe_load(Path(path_or_config).read_text()) or {}
    return load_config(path_or_config), raw


def _scratch_metrics(
    run_config: ExperimentConfig, new: ExperimentConfig, seed: int, log: Callable[[str], None]
) -> tuple[Metrics, Metrics]:
    """A fresh multi-task model of the run's architecture on the new tasks only, cached.

    The cache key is the resolved config (data, model, training, seed) plus the data file's
    digest when the loader reports one, so a changed file or option trains anew.
    """
    raw = new.model_dump(mode="json", exclude_none=True)
    raw.pop("models", None)
    raw.update(
        name="scratch",
        model=run_config.model_list[0].model_dump(mode="json"),
        seeds=[seed],
        baselines={"stl": False},
        balancers=raw["balancers"][:1],
    )
    if run_config.data.split_seed is not None:
        raw["data"]["split_seed"] = run_config.data.split_seed
    config = parse_config(raw, "scratch baseline")
    from polytask.experiment import cache_dir

    key = hashlib.sha256(config.to_yaml().encode()).hexdigest()[:20]
    out = cache_dir() / "extend-scratch" / key
    results = sorted(out.glob("*/results.json"))
    if not results:
        if out.exists():
            shutil.rmtree(out)  # an interrupted earlier attempt: train it again
        log(f"training the new tasks from scratch (cached in {out})")
        run_experiment(config, out, log=log, report=False)
        results = sorted(out.glob("*/results.json"))
    else:
        log(f"from-scratch model of the new tasks found in cache {out}")
    data = json.loads(results[0].read_text())
    return data["val"], data["test"]


# ---------------------------------------------------------------------------------- the step
def extend_run(
    run_dir: str | Path,
    new_config: str | Path | ExperimentConfig,
    out_dir: str | Path,
    *,
    mode: Mode = "frozen",
    keep_old: bool = False,
    replace: bool = False,
    stages: int = 1,
    lr_scale: float = 0.1,
    scratch: bool = True,
    init_from: str | None = None,
    log: Callable[[str], None] = print,
) -> ExtendResult:
    """Add the tasks of ``new_config``'s data to the trained run ``run_dir``; write ``out_dir``.

    Args:
        run_dir: a finished run (``config.yaml``, ``tasks.json``, ``checkpoints/best.pt``).
        new_config: an experiment config (path or object) whose ``data`` brings the new tasks
            and whose ``training`` (and first balancer) trains them; its ``model`` is ignored
            (the run's trunk is reused) and must be left out or equal the run's.
        out_dir: the new run directory (refused if it already holds a run).
        mode: ``frozen`` (only the new heads train), ``partial`` (then the last ``stages`` trunk
            stages at ``lr_scale`` x lr), ``finetune`` (then the whole trunk at ``lr_scale`` x lr).
        keep_old: in the second phase, also train on the old tasks (old data, old labels) so that
            the moving trunk does not forget them. Meaningless (and refused) with ``frozen``.
        replace: allow new tasks named like old ones: their old heads are dropped and retrained.
        scratch: also train (or read from the cache) a fresh model on the new tasks only, the
            reference the new tasks' metrics are compared with.
        init_from: for architectures that give each task its own path (cross_stitch, cgc, ple),
            the old task whose path (column, or experts and gates) the new tasks start from
            (default: the first old task); refused for the others, where a new task brings
            only a head or a gate.
    """
    if mode not in MODES:
        raise ExtendError(f"unknown mode {mode!r}; expected one of {list(MODES)}")
    if keep_old and mode == "frozen":
        raise ExtendError(
            "--keep-old has no effect with --mode frozen: the trunk and the old heads do not "
            "change; use it with partial or finetune"
        )
    if not lr_scale > 0:
        raise ExtendError(f"lr_scale must be > 0, got {lr_scale}")
    out = Path(out_dir)
    if (out / "results.json").exists() or (out / "checkpoints").exists():
        raise ExtendError(f"{out} already holds a run; choose another --out or delete it")
    new, raw_new = _read_new_config(new_config)
    loaded = load_run_model(run_dir)
    run, old_model, old_splits = loaded.run, loaded.model, loaded.splits
    assert old_splits is not None
    _single_dataset(run.config, f"run {run_dir}")
    _single_dataset(new, "new config")
    if "model" in raw_new and new.model_list[0] != run.config.model_list[0]:
        raise ExtendError(
            f"the new config's model {new.model_list[0].model_dump()} differs from the run's "
            f"{run.config.model_list[0].model_dump()}; leave 'model' out: the run's trunk is reused"
        )
    if new.data.split_seed != run.config.data.split_seed:
        raise ExtendError(
            f"data.split_seed differs: the run split with {run.config.data.split_seed}, the new "
            f"config with {new.data.split_seed}; the same molecules / rows must stay in test"
        )
    seed = run.seed
    new_splits = load_data(new, seed)
    new_tasks = list(new_splits.tasks)
    check_new_tasks(old_model, run.tasks, new_tasks, replace=replace)
    notes = _check_inputs(
        old_splits, new_splits, str(run.config.data.dataset), str(new.data.dataset)
    )
    dropped = {t.name for t in new_tasks} & set(old_model.task_names)
    kept_old = [t for t in run.tasks if t.name not in dropped]
    grows = isinstance(old_model, GrowsWithTasks)
    if init_from is not None and not grows:
        raise ExtendError(
            f"init_from applies to architectures that give each task its own path (cross_stitch, "
            f"cgc, ple); in {type(old_model).__name__} a new task starts from a fresh head"
        )
    if init_from is not None and init_from not in [t.name for t in kept_old]:
        raise ExtendError(
            f"init_from {init_from!r} is not an old task kept in the extended model "
            f"{[t.name for t in kept_old]}"
        )
    options = extension_options(old_model, len(new_tasks))
    ext_config = _extended_config(run.config, new, [t.name for t in kept_old], options)
    all_tasks = kept_old + new_tasks
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = build_model(
                ext_config, all_tasks, old_splits.train.example(), data_info=old_splits.info
            )
        except HeadError as err:
            raise ExtendError(f"the trunk cannot feed a new task: {err}") from None
    new_names = [t.name for t in new_tasks]
    if mode == "partial":
        _staged_trunk(model, stages)  # refused before anything trains
    if grows:
        log(f"new tasks start from old task {init_from or kept_old[0].name!r}'s path")
    transplant_weights(model, old_model, new_names, dropped, init_from)

    settings = ext_config.training.settings(seed, balancer=new.balancers[0].name,
                                            architecture=ext_config.model_list[0].architecture)  # fmt: skip
    settings = settings.model_copy(update={"progress": False})
    bal = new.balancers[0]
    log(f"phase 1: new heads {new_names} on the frozen trunk")
    _set_trainable(model, new_names, trunk="none", stages=stages)
    view = TaskView(model, new_tasks)
    fit(view, new_splits, create_balancer(bal.name, new_names, **bal.options), settings,
        out / "phases" / "heads")  # fmt: skip
    if mode != "frozen":
        train_tasks = (kept_old if keep_old else []) + new_tasks
        names = [t.name for t in train_tasks]
        _set_trainable(model, names, trunk="last" if mode == "partial" else "all", stages=stages)
        tuned = settings.model_copy(update={"lr": settings.lr * lr_scale})
        source = None
        if keep_old:
            splits, sources = load_sources(ext_config, seed)
            source = make_train_source(ext_config, sources)
        else:
            splits = new_splits
        log(f"phase 2 ({mode}, lr x {lr_scale}): training {names}")
        fit(TaskView(model, train_tasks), splits,
            create_balancer(bal.name, names, **bal.options), tuned, out / "phases" / mode,
            train_source=source)  # fmt: skip
    model.eval()
    rows = _compare(
        old_model,
        model,
        kept_old,
        new_tasks,
        old_splits,
        new_splits,
        settings.eval_batch_size,
        (lambda: _scratch_metrics(run.config, new, seed, log)) if scratch else None,
    )
    _write_run(out, ext_config, model, all_tasks, seed, rows, mode, keep_old, run_dir, notes,
               new_splits, old_splits, settings.eval_batch_size)  # fmt: skip
    return ExtendResult(run_dir=out, mode=mode, keep_old=keep_old, rows=rows, warnings=notes)


def _compare(
    old_model: MultiTaskModel,
    model: MultiTaskModel,
    old_tasks: list[Task],
    new_tasks: list[Task],
    old_splits: Splits,
    new_splits: Splits,
    batch_size: int,
    scratch: Callable[[], tuple[Metrics, Metrics]] | None,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if old_tasks:
        before = _metrics(TaskView(old_model, old_tasks), old_tasks, old_splits, batch_size)
        after = _metrics(TaskView(model, old_tasks), old_tasks, old_splits, batch_size)
        for t in old_tasks:
            rows.append(_row(t, "old", before, after))
    extended = _metrics(TaskView(model, new_tasks), new_tasks, new_splits, batch_size)
    if scratch is not None:
        val, test = scratch()
        reference = {"val": val, "test": test}
    else:
        nan = {t.name: {t.primary: math.nan} for t in new_tasks}
        reference = {"val": nan, "test": nan}
    for t in new_tasks:
        rows.append(_row(t, "new", reference, extended))
    return rows


def _metrics(
    model: MultiTaskModel, tasks: list[Task], splits: Splits, bs: int
) -> dict[str, Metrics]:
    return {s: evaluate(model, tasks, getattr(splits, s), bs)[0] for s in ("val", "test")}


def _row(t: Task, group: str, ref: dict[str, Metrics], ext: dict[str, Metrics]) -> dict[str, Any]:
    m = t.primary
    return {
        "task": t.name, "group": group, "metric": m, "higher_is_better": t.primary_higher_is_better,
        "val_reference": float(ref["val"][t.name][m]), "val_extended": float(ext["val"][t.name][m]),
        "test_reference": float(ref["test"][t.name][m]),
        "test_extended": float(ext["test"][t.name][m]),
    }  # fmt: skip


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _write_run(
    out: Path,
    config: ExperimentConfig,
    model: MultiTaskModel,
    tasks: list[Task],
    seed: int,
    rows: list[dict[str, Any]],
    mode: str,
    keep_old: bool,
    source_run: str | Path,
    notes: list[str],
    new_splits: Splits,
    old_splits: Splits,
    batch_size: int,
) -> None:
    """An ordinary run directory: what ``load_run`` and ``polytask evaluate`` read."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(config.to_yaml())
    (out / "tasks.json").write_text(json.dumps(_finite([t.to_config() for t in tasks]), indent=2))
    state = {
        "model": model.state_dict(), "optimizer": {}, "scheduler": None, "balancer": {},
        "epoch": -1, "step": 0, "selection": {}, "task_names": model.task_names,
        "rng": capture_rng(),
    }  # fmt: skip
    save_checkpoint(out / "checkpoints" / "best.pt", state)
    old = [t for t in tasks if t.name not in {r["task"] for r in rows if r["group"] == "new"}]
    new = [t for t in tasks if t not in old]
    val: Metrics = {}
    test: Metrics = {}
    for group, data in ((old, old_splits), (new, new_splits)):
        if group:
            metrics = _metrics(TaskView(model, group), group, data, batch_size)
            val.update(metrics["val"])
            test.update(metrics["test"])
    results = {
        "name": out.name, "seed": seed, "extended_from": str(source_run), "mode": mode,
        "keep_old": keep_old, "selection": "val (per phase)", "val": val, "test": test,
        "tasks": [{"name": t.name, "kind": t.kind.value, "primary_metric": t.primary,
                   "higher_is_better": t.primary_higher_is_better} for t in tasks],
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(_finite(results), indent=2))
    (out / "extend.json").write_text(
        json.dumps(_finite({"rows": rows, "warnings": notes}), indent=2)
    )
    table = ExtendResult(out, mode, keep_old, rows, notes).table()
    (out / "extend.md").write_text(table + "\n")
