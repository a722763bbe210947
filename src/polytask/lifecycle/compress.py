"""Compress a trained run's model (int8 quantisation, pruning) and measure what it costs per task.

Why per task: compression is not neutral between tasks. A shared trunk that loses half its
weights, or whose Linear layers are rounded to int8, can keep the mean metric and still cost one
task (a rare-positive assay, a small regression target) much more than the others. So the only
result this module reports is the full table: every task's validation and test metric before and
after, the model's size on disk and its CPU latency per batch, with the most-hurt task marked.

The recipe, in order (each step optional):

1. **Prune** the trunk (``model.shared_modules()``: the parameters every task reads; for
   Cross-stitch, whose trunk is one column per task, the columns: :func:`trunk_modules`) with
   ``torch.nn.utils.prune``: L1 unstructured (that fraction of each layer's weights with the
   smallest magnitude) or, with ``structured``, L2 structured on output channels (whole rows of a
   Linear, whole filters of a convolution). Every Linear and Conv layer of the trunk is pruned by
   the same fraction, so the trunk's sparsity is that fraction.
2. **Fine-tune** for a few epochs on the run's training split with the masks in place (pruned
   weights stay zero), through the project's own loop (:func:`polytask.training.loop.fit`) with
   the run's balancer and settings; the epoch is selected on validation only.
3. Make the pruning **permanent** (``prune.remove``: plain weights with zeros, no masks).
4. **Quantise** every ``nn.Linear`` to dynamic int8 (int8 weights, activations quantised per batch
   at run time): torchao's ``quantize_`` with ``Int8DynamicActivationInt8WeightConfig``
   (``quantizer="torchao"``, the default), or PyTorch's own
   ``torch.ao.quantization.quantize_dynamic`` (``quantizer="torch"``). Which one ran is printed and
   written to ``compress.json``; there is no silent switch from one to the other.

Output (default ``<run>/compressed/``): ``model.pt`` (the compressed state dict, loadable with
``weights_only=True``), ``compress.json`` (recipe, metrics, sizes, latency, machine load) and, when
fine-tuned, ``finetune/`` (the fine-tuning run's metrics and checkpoints).
:func:`load_compressed` rebuilds the model from them.
"""

from __future__ import annotations

import io
import json
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from polytask.data.base import Splits
from polytask.data.batch import Inputs, batch_len
from polytask.evaluation.metrics import evaluate
from polytask.models.base import MultiTaskModel
from polytask.tasks import Task
from polytask.training.loop import json_safe

__all__ = [
    "QUANTIZERS",
    "CompressResult",
    "check_prune_amount",
    "compress_run",
    "cpu_latency",
    "load_compressed",
    "prunable_layers",
    "prune_trunk",
    "quantize_int8",
    "serialized_bytes",
    "trunk_modules",
    "trunk_sparsity",
]

QUANTIZERS = {
    "torchao": "torchao quantize_ with Int8DynamicActivationInt8WeightConfig (int8 weights, "
    "int8 dynamic activations)",
    "torch": "torch.ao.quantization.quantize_dynamic (int8 weights, dynamic activations)",
}
"""int8 backends: name -> what is written in the output and in compress.json."""

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
MODEL_FILE = "model.pt"
REPORT_FILE = "compress.json"

Metrics = dict[str, dict[str, float]]


# ---------------------------------------------------------------------------------------- pieces
def check_prune_amount(amount: Any) -> float:
    """The pruning fraction, refused with its value unless strictly between 0 and 1."""
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        raise ValueError(f"prune amount must be a number in (0, 1), got {amount!r}")
    if not (0.0 < float(amount) < 1.0):
        raise ValueError(
            f"prune amount {amount!r} is outside (0, 1): it is the fraction of each trunk layer's "
            "weights set to zero (0.5 = half)"
        )
    return float(amount)


def trunk_modules(model: MultiTaskModel) -> list[nn.Module]:
    """The modules holding the trunk: the shared modules, and Cross-stitch's task columns.

    Why the columns: a Cross-stitch model copies the whole trunk once per task (its shared part is
    only the input pre-processing and the mixing units), so its trunk *is* the columns; pruning
    only shared modules would find no layer there. Every other architecture keeps its trunk (or
    its experts) in its shared modules; task heads and gates are never pruned.
    """
    from polytask.models.cross_stitch import CrossStitch

    modules = list(model.shared_modules())
    if isinstance(model, CrossStitch):
        modules += [model.columns[name] for name in model.task_names]
    return modules


def prunable_layers(model: MultiTaskModel) -> list[tuple[str, nn.Module]]:
    """The trunk's Linear and Conv layers (:func:`trunk_modules`), named as in the model."""
    names = {id(m): n for n, m in model.named_modules()}
    layers: list[tuple[str, nn.Module]] = []
    for shared in trunk_modules(model):
        for module in shared.modules():
            if isinstance(module, PRUNABLE) and id(module) in names:
                layers.append((names[id(module)], module))
    return layers


def prune_trunk(model: MultiTaskModel, amount: float, structured: bool = False) -> list[str]:
    """Prune every trunk layer by ``amount``; the masks stay (weights ``weight_orig * mask``).

    L1 unstructured, or with ``structured`` L2 (``ln_structured``, n=2) on output channels
    (dimension 0 of the weight). Returns the pruned layers' names. Call :func:`make_permanent`
    after any fine-tuning: while the masks are in place, pruned weights stay zero under training.
    """
    amount = check_prune_amount(amount)
    layers = prunable_layers(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__}'s trunk has no Linear or Conv layer to prune "
            f"(trunk modules: {[type(m).__name__ for m in trunk_modules(model)]})"
        )
    for _, module in layers:
        if structured:
            torch_prune.ln_structured(module, "weight", amount=amount, n=2, dim=0)
        else:
            torch_prune.l1_unstructured(module, "weight", amount=amount)
    return [name for name, _ in layers]


def make_permanent(model: MultiTaskModel) -> None:
    """Fold every pruning mask into its weight (``prune.remove``): plain tensors with zeros."""
    for _, module in prunable_layers(model):
        if torch_prune.is_pruned(module) and hasattr(module, "weight_mask"):
            torch_prune.remove(module, "weight")


def trunk_sparsity(model: MultiTaskModel) -> float:
    """Fraction of exactly-zero weights over the trunk's Linear and Conv layers."""
    zeros = total = 0
    for _, module in prunable_layers(model):
        weight = module.weight
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return zeros / total if total else 0.0


def quantize_int8(model: nn.Module, quantizer: str = "torchao") -> str:
    """Dynamic int8 quantisation of every ``nn.Linear`` of ``model``, in place; says what ran.

    The model must be on the CPU (both backends' dynamic int8 kernels are CPU kernels here).
    """
    if quantizer not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {quantizer!r}; choose one of {', '.join(QUANTIZERS)}")
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to quantise to int8")
    if quantizer == "torchao":
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
        except ImportError as err:
            raise ImportError(
                f"int8 quantisation with torchao needs torchao ({err}): pip install "
                "'polytask[compress]', or choose quantizer='torch' (PyTorch's quantize_dynamic)"
            ) from None
        quantize_(model, Int8DynamicActivationInt8WeightConfig())
    else:
        with warnings.catch_warnings():
            # torch.ao.quantization is deprecated in favour of torchao; it was chosen explicitly
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated.*")
            torch.ao.quantization.quantize_dynamic(
                model, {nn.Linear}, dtype=torch.qint8, inplace=True
            )
    return QUANTIZERS[quantizer]


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: the model's size on disk, as saved here."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


@torch.inference_mode()
def cpu_latency(model: nn.Module, inputs: Inputs, repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds of one forward pass of ``inputs`` (one batch) on the CPU."""
    model.eval()
    for _ in range(warmup):
        model(inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------- result
@dataclass
class CompressResult:
    """Before / after, per task and for the whole model (the content of ``compress.json``)."""

    tasks: list[Task]
    recipe: dict[str, Any]
    before: dict[str, Metrics]
    after: dict[str, Metrics]
    size_bytes: dict[str, int]
    latency_s: dict[str, float]
    latency_batch: int
    model_path: Path
    report_path: Path
    machine: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None
    """The compressed model that was measured (not written to compress.json)."""

    def change(self, split: str) -> dict[str, dict[str, float]]:
        """Per task: primary metric before, after, difference and relative change in % (signed
        so that negative means worse, whatever the metric's direction)."""
        rows = {}
        for task in self.tasks:
            b = self.before[split][task.name].get(task.primary, math.nan)
            a = self.after[split][task.name].get(task.primary, math.nan)
            sign = 1.0 if task.primary_higher_is_better else -1.0
            rel = 100.0 * sign * (a - b) / abs(b) if b != 0 and math.isfinite(b) else math.nan
            rows[task.name] = {"before": b, "after": a, "diff": a - b, "relative_pct": rel}
        return rows

    def most_hurt(self, split: str = "val") -> str | None:
        """The task whose primary metric worsened most (relative), or None if none worsened."""
        changes = {t: c["relative_pct"] for t, c in self.change(split).items()}
        finite = {t: v for t, v in changes.items() if math.isfinite(v)}
        if not finite:
            return None
        task = min(finite, key=finite.__getitem__)
        return task if finite[task] < 0 else None

    def table(self) -> str:
        """Every task's metric (val and test) before -> after, then size and latency."""
        val, test = self.change("val"), self.change("test")
        hurt = self.most_hurt("val")
        width = max(12, *(len(t.name) for t in self.tasks))
        head = (
            f"{'task':<{width}}  {'metric':<8}  {'val before':>10}  {'val after':>9}  "
            f"{'val Δ%':>7}  {'test before':>11}  {'test after':>10}  {'test Δ%':>7}"
        )
        lines = [head, "-" * len(head)]
        for task in self.tasks:
            v, t = val[task.name], test[task.name]
            mark = "  <- most hurt (val)" if task.name == hurt else ""
            lines.append(
                f"{task.name:<{width}}  {task.primary:<8}  {v['before']:>10.4f}  "
                f"{v['after']:>9.4f}  {v['relative_pct']:>+7.2f}  {t['before']:>11.4f}  "
                f"{t['after']:>10.4f}  "
                f"{t['relative_pct']:>+7.2f}{mark}"
            )
        s, lat = self.size_bytes, self.latency_s
        lines += [
            "",
            f"model size on disk: {s['before']:,} -> {s['after']:,} bytes "
            f"({s['after'] / s['before']:.3f}x)",
            f"CPU latency per batch of {self.latency_batch}: {1e3 * lat['before']:.2f} -> "
            f"{1e3 * lat['after']:.2f} ms ({lat['after'] / lat['before']:.2f}x; load average "
            f"{self.machine.get('load_average', 'n/a')}, {self.machine.get('threads')} threads)",
            "recipe: " + _describe(self.recipe),
            "Δ%: relative change of the primary metric, negative = worse",
        ]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "tasks": [
                {
                    "name": t.name,
                    "primary_metric": t.primary,
                    "higher_is_better": t.primary_higher_is_better,
                }
                for t in self.tasks
            ],
            "before": self.before,
            "after": self.after,
            "primary_change": {"val": self.change("val"), "test": self.change("test")},
            "most_hurt_val": self.most_hurt("val"),
            "size_bytes": self.size_bytes,
            "size_ratio": self.size_bytes["after"] / self.size_bytes["before"],
            "latency_ms_per_batch": {k: 1e3 * v for k, v in self.latency_s.items()},
            "latency_batch": self.latency_batch,
            "machine": self.machine,
            "model_file": self.model_path.name,
        }


def _describe(recipe: Mapping[str, Any]) -> str:
    parts = []
    p = recipe.get("prune")
    if p:
        kind = "L2 structured (output channels)" if p["structured"] else "L1 unstructured"
        parts.append(
            f"pruned {kind} {p['amount']:.0%} of {len(p['layers'])} trunk layer(s), trunk "
            f"sparsity {p['sparsity']:.3f}"
        )
    f = recipe.get("finetune")
    if f:
        parts.append(
            f"fine-tuned {f['epochs']} epoch(s) at lr {f['lr']:g}, epoch {f['best_epoch']} "
            f"selected on {f['selection']}"
        )
    q = recipe.get("quantize")
    if q:
        parts.append(f"int8 by {q['backend']} on {q['linear_layers']} Linear layer(s)")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------- the run
def compress_run(
    run_dir: str | Path,
    *,
    quantize: str | None = "int8",
    prune: float | None = None,
    structured: bool = False,
    finetune_epochs: int = 0,
    finetune_lr: float | None = None,
    quantizer: str = "torchao",
    out: str | Path | None = None,
    splits: Splits | None = None,
    latency_batch: int = 256,
    latency_repeats: int = 20,
    log: Callable[[str], None] = print,
) -> CompressResult:
    """Compress a run's selected model; evaluate before and after; write ``model.pt`` + json.

    Args:
        run_dir: a finished run (``checkpoints/best.pt``).
        quantize: ``"int8"`` or ``None``.
        prune: fraction in (0, 1) of each trunk layer's weights (or output channels) to zero.
        structured: prune output channels (L2 norm) instead of single weights (L1).
        finetune_epochs: epochs of fine-tuning after pruning, on the run's training split with
            its balancer and training settings, the epoch selected on validation (``0``: none).
        finetune_lr: learning rate of the fine-tuning (default: the run's).
        quantizer: ``torchao`` or ``torch`` (see the module docstring).
        out: output folder (default ``<run>/compressed``).
        splits: the run's data when it cannot be reloaded from its config (given from Python).
        latency_batch, latency_repeats: CPU latency is the median over ``latency_repeats``
            forward passes of one batch of ``latency_batch`` validation rows.
    """
    from polytask.lifecycle._run import check_run_dir, load_run_model

    # every argument is checked before any data is read or any model built
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be 'int8' or None, got {quantize!r}")
    amount = None if prune is None else check_prune_amount(prune)
    if quantizer not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {quantizer!r}; choose one of {', '.join(QUANTIZERS)}")
    if finetune_epochs < 0:
        raise ValueError(f"finetune_epochs must be >= 0, got {finetune_epochs}")
    if finetune_epochs and amount is None:
        raise ValueError("finetune_epochs is for recovering from pruning: give prune=... as well")
    if quantize is None and amount is None:
        raise ValueError("nothing to do: give quantize='int8' and/or prune=<fraction in (0, 1)>")
    if finetune_lr is not None and not finetune_lr > 0:
        raise ValueError(f"finetune_lr must be > 0, got {finetune_lr}")
    if latency_batch < 1 or latency_repeats < 1:
        raise ValueError("latency_batch and latency_repeats must be >= 1")
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    sources = None
    if splits is None:
        from polytask.data.registry import UnknownDatasetError
        from polytask.experiment import load_sources
        from polytask.inference import load_run

        run = load_run(run_dir)
        try:
            splits, sources = load_sources(run.config, run.seed)
        except UnknownDatasetError as err:
            raise ValueError(
                f"{run_dir} was trained on data given from Python ({err}); pass its splits: "
                "compress_run(run_dir, splits=...)"
            ) from None
    loaded = load_run_model(run_dir, splits=splits)
    model, tasks = loaded.model, loaded.run.tasks
    out_dir = Path(out) if out is not None else run_dir / "compressed"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MODEL_FILE).unlink(
        missing_ok=True
    )  # never leave an older result beside a new report
    (out_dir / REPORT_FILE).unlink(missing_ok=True)

    batch = splits.val.example(min(latency_batch, len(splits.val)))
    log(f"evaluating the selected model of {run_dir} (before)")
    before = _evaluate(model, tasks, splits)
    size_before = serialized_bytes(model)
    latency_before = cpu_latency(model, batch, latency_repeats)

    recipe: dict[str, Any] = {
        "run": str(run_dir.resolve()),
        "quantize": None,
        "prune": None,
        "finetune": None,
    }
    if amount is not None:
        layers = prune_trunk(model, amount, structured)
        kind = "L2 structured" if structured else "L1 unstructured"
        log(f"pruned {len(layers)} trunk layer(s) by {amount:.0%} ({kind})")
        if finetune_epochs:
            recipe["finetune"] = _finetune(
                model,
                loaded.run,
                splits,
                sources,
                finetune_epochs,
                finetune_lr,
                out_dir / "finetune",
                log,
            )
        make_permanent(model)
        recipe["prune"] = {
            "amount": amount,
            "structured": structured,
            "layers": layers,
            "method": "ln_structured n=2 dim=0" if structured else "l1_unstructured",
            "sparsity": trunk_sparsity(model),
        }
    model = model.cpu().eval()
    if quantize == "int8":
        n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
        backend = quantize_int8(model, quantizer)
        log(f"int8: {backend}")
        recipe["quantize"] = {
            "dtype": "int8",
            "quantizer": quantizer,
            "backend": backend,
            "linear_layers": n_linear,
        }
    model_path = out_dir / MODEL_FILE
    torch.save(model.state_dict(), model_path)
    log("evaluating the compressed model (after)")
    after = _evaluate(model, tasks, splits)
    latency_after = cpu_latency(model, batch, latency_repeats)
    recipe["inputs"] = _input_spec(batch)
    recipe["model_info"] = _model_info(splits.info)
    result = CompressResult(
        tasks=tasks,
        recipe=recipe,
        before=before,
        after=after,
        size_bytes={"before": size_before, "after": model_path.stat().st_size},
        latency_s={"before": latency_before, "after": latency_after},
        latency_batch=batch_len(batch),
        model_path=model_path,
        report_path=out_dir / REPORT_FILE,
        machine=_machine(),
        model=model,
    )
    result.report_path.write_text(json.dumps(json_safe(result.to_json()), indent=2) + "\n")
    return result


def load_compressed(path: str | Path) -> MultiTaskModel:
    """The compressed model written by :func:`compress_run` (its folder, or the run directory).

    The model is rebuilt from the run's config and the input shapes recorded in
    ``compress.json``, given the same int8 conversion (pruning needs none: its zeros are in the
    weights), then loaded from ``model.pt`` with ``weights_only=True``.
    """
    from polytask.experiment import build_model
    from polytask.inference import load_run

    folder = Path(path)
    if not (folder / REPORT_FILE).is_file() and (folder / "compressed" / REPORT_FILE).is_file():
        folder = folder / "compressed"
    for name in (REPORT_FILE, MODEL_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} holds no compressed model: {name} is missing")
    report = json.loads((folder / REPORT_FILE).read_text())
    recipe = report["recipe"]
    run = load_run(recipe["run"])
    example = _zeros(recipe["inputs"])
    with torch.random.fork_rng(devices=[]):
        model = build_model(
            run.config, run.tasks, example, data_info=recipe.get("model_info") or {}
        )
    quantized = recipe.get("quantize")
    if quantized:
        quantize_int8(model, quantized["quantizer"])
    state = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state, assign=True)
    return model.eval()


# ---------------------------------------------------------------------------------------- helpers
def _evaluate(model: nn.Module, tasks: list[Task], splits: Splits) -> dict[str, Metrics]:
    device = torch.device("cpu")
    return {
        split: evaluate(model, tasks, getattr(splits, split), device=device)[0]
        for split in ("val", "test")
    }


def _finetune(
    model: MultiTaskModel,
    run: Any,
    splits: Splits,
    sources: Any,
    epochs: int,
    lr: float | None,
    run_dir: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """A few epochs of the project's own loop, masks in place; selection on validation only."""
    from polytask.balancing import create_balancer
    from polytask.experiment import train_source
    from polytask.training.checkpoint import load_checkpoint
    from polytask.training.loop import fit

    config = run.config
    results_path = run.run_dir / "results.json"
    name = json.loads(results_path.read_text()).get("balancer") if results_path.is_file() else None
    spec = next((b for b in config.balancers if name in (b.name, b.display)), config.balancers[0])
    names = [t.name for t in run.tasks]
    balancer = create_balancer(
        spec.name, names, task_weights={t.name: t.weight for t in run.tasks}, **spec.options
    )
    state = load_checkpoint(run.run_dir / "checkpoints" / "best.pt", task_names=names)
    balancer.load_state_dict(state["balancer"])  # learned task weights carry on
    # Δm selection needs the single-task baselines' validation metrics, which a run does not keep
    selection = config.training.selection
    selection = "mean_primary" if selection in ("auto", "delta_m") else selection
    settings = config.training.settings(run.seed, balancer=spec.name, compress="finetune")
    settings = settings.model_copy(
        update={
            "epochs": epochs,
            "lr": lr or settings.lr,
            "selection": selection,
            "patience": None,
            "progress": False,
            "tensorboard": False,
            "device": "cpu",
            "scheduler": "none",
        }
    )
    log(f"fine-tuning {epochs} epoch(s) with {spec.display}, selection on validation {selection}")
    fitted = fit(
        model, splits, balancer, settings, run_dir, train_source=train_source(config, sources)
    )
    return {
        "epochs": epochs,
        "lr": settings.lr,
        "balancer": spec.display,
        "selection": f"val {selection}",
        "best_epoch": fitted.best_epoch,
        "run_dir": str(run_dir),
    }


def _input_spec(rows: Inputs) -> dict[str, Any]:
    def one(t: Tensor) -> dict[str, Any]:
        return {"shape": list(t.shape[1:]), "dtype": str(t.dtype).removeprefix("torch.")}

    if isinstance(rows, Tensor):
        return {"kind": "tensor", "inputs": {"": one(rows)}}
    return {"kind": "dict", "inputs": {k: one(v) for k, v in rows.items()}}


def _zeros(spec: Mapping[str, Any]) -> Inputs:
    made = {
        k: torch.zeros((2, *s["shape"]), dtype=getattr(torch, s["dtype"]))
        for k, s in spec["inputs"].items()
    }
    return made[""] if spec["kind"] == "tensor" else made


def _model_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """What of the data's ``info`` building the model reads (category counts, input options)."""
    kept = {k: info[k] for k in ("cardinalities", "input_options") if k in info}
    try:
        json.dumps(kept)
    except TypeError as err:
        raise ValueError(f"the data's model options are not JSON ({err}): {sorted(kept)}") from None
    return kept


def _machine() -> dict[str, Any]:
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "load_average": load,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }
