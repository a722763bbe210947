"""Export a trained multi-task model to ONNX, TorchScript or pt2, and prove the file is right.

Why verification is part of export, not an option: an exporter can succeed and still write a
wrong file (a batch size frozen into the graph, an operator translated with another meaning, a
weight that did not make it). The only evidence that matters is the file, reloaded by its own
runtime, agreeing with PyTorch on rows the model was not trained on. So every export reloads the
file (onnxruntime for ONNX, ``torch.jit.load`` for TorchScript, ``torch.export.load`` for pt2),
runs it on held-out rows (the run's validation and test rows when the run's data can be reloaded,
else the rows given) and on a single row (a batch of one is where frozen shapes show), and
compares every task's output with the PyTorch model's. A difference above the tolerance is an
error naming each task and its largest difference; the file is kept for inspection under
``<name>.failed-verification`` (never under the name a deployment would pick up).

The file's interface: one input per named input of the model (``input`` for a single tensor),
each with a dynamic batch dimension; one output per task, named by the task, in the model's task
order (raw outputs: logits for classification, standardized values for standardized regression,
exactly what ``model(x)[task]`` returns). ``export.json`` beside the file records names, shapes,
dtypes, opset, tolerance and the measured differences.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from polytask.data.base import Splits
from polytask.data.batch import Inputs, batch_len, slice_inputs

__all__ = [
    "DEFAULT_TOLERANCE",
    "FORMATS",
    "ExportError",
    "ExportResult",
    "VerificationError",
    "export_model",
    "verify_export",
]

ExportFormat = Literal["onnx", "torchscript", "pt2"]
FORMATS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "pt2": ".pt2"}
"""Format -> file suffix of the default output name (``model<suffix>``)."""

DEFAULT_TOLERANCE = 1e-4
"""Largest absolute difference per task allowed between the file and PyTorch (float32 outputs)."""

FAILED_SUFFIX = ".failed-verification"
SINGLE_INPUT = "input"
"""The input's name in the file when the model reads one tensor (not a dict of named inputs)."""


class ExportError(RuntimeError):
    """The model could not be exported, or the exported file could not be run."""


class VerificationError(ExportError):
    """The exported file disagrees with PyTorch by more than the tolerance on some task."""

    def __init__(self, message: str, max_abs_diff: dict[str, float], kept: Path) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff
        self.kept = kept


@dataclass
class ExportResult:
    """What was written and how well it agrees with PyTorch (the content of ``export.json``)."""

    format: str
    path: Path
    input_names: list[str]
    output_names: list[str]
    max_abs_diff: dict[str, float]
    tolerance: float
    rows: dict[str, int]
    opset: int | None
    runtime: str
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""
    report_path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("path")
        data.pop("report_path")
        data["file"] = self.path.name
        data["bytes"] = self.path.stat().st_size if self.path.exists() else None
        data["torch"] = torch.__version__
        return data

    def summary(self) -> str:
        worst = max(self.max_abs_diff.values()) if self.max_abs_diff else float("nan")
        lines = [
            f"wrote {self.path} ({self.format}, {self.path.stat().st_size:,} bytes)",
            f"inputs: {', '.join(self.input_names)} (dynamic batch); outputs: "
            f"{', '.join(self.output_names)}",
            f"verified with {self.runtime} on {sum(self.rows.values())} rows "
            f"({', '.join(f'{k}: {v}' for k, v in self.rows.items())}): max |diff| per task "
            f"<= {worst:.2e} (tolerance {self.tolerance:g})",
        ]
        lines += [f"  {task}: {diff:.2e}" for task, diff in self.max_abs_diff.items()]
        if self.report_path is not None:
            lines.append(f"report: {self.report_path}")
        return "\n".join(lines)


class _PositionalModel(nn.Module):
    """The model behind positional tensors (one per input name), returning ``{task: output}``.

    Why: exporters name the inputs of ``forward`` positionally; a model that reads a dict of named
    inputs gets its dict rebuilt here, in the recorded order, so the file's inputs carry the names.
    """

    def __init__(self, model: nn.Module, input_names: list[str] | None, tasks: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.tasks = tasks

    def forward(self, *tensors: Tensor) -> dict[str, Tensor]:
        if self.input_names is None:
            x: Inputs = tensors[0]
        else:
            x = dict(zip(self.input_names, tensors, strict=True))
        out = self.model(x)
        return {name: out[name] for name in self.tasks}


def export_model(
    source: str | Path | nn.Module,
    format: str = "onnx",
    out: str | Path | None = None,
    *,
    inputs: Inputs | None = None,
    splits: Splits | None = None,
    rows: int = 256,
    tolerance: float = DEFAULT_TOLERANCE,
    opset: int | None = None,
) -> ExportResult:
    """Export a run's selected model (or a model) to ``format`` and verify the written file.

    Args:
        source: a run directory (its ``checkpoints/best.pt`` model is exported) or a model whose
            ``forward`` takes a tensor or a dict of named tensors and returns ``{task: tensor}``.
        format: ``onnx`` (torch's dynamo exporter), ``torchscript`` (``torch.jit.trace``) or
            ``pt2`` (``torch.export``).
        out: the file to write; default ``<run>/export/<format>/model<suffix>`` for a run
            (a model needs it). ``export.json`` is written in the same folder.
        inputs: rows to export with and verify on: needed for a model, and for a run whose data
            cannot be reloaded (trained from Python); otherwise the run's own validation and
            test rows are used.
        splits: the run's data, when it was given from Python (instead of ``inputs``).
        rows: how many validation rows and how many test rows to verify on.
        tolerance: the largest absolute difference per task that passes.
        opset: ONNX opset (default: the exporter's).

    Raises:
        VerificationError: the file disagrees with PyTorch on some task (it is kept as
            ``<out>.failed-verification``, with the differences in ``<that>.json``).
        ExportError: the exporter or the file's runtime failed.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if not (isinstance(tolerance, int | float) and tolerance > 0 and math.isfinite(tolerance)):
        raise ValueError(f"tolerance must be a positive number, got {tolerance!r}")
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    if format == "pt2" and out is not None and not str(out).endswith(".pt2"):
        raise ValueError(f"a pt2 file must end in .pt2 (torch.export.load reads only those): {out}")
    if isinstance(source, nn.Module):
        if out is None:
            raise ValueError("exporting a model (not a run directory) needs out=PATH")
        if inputs is None:
            raise ValueError(
                "exporting a model (not a run directory) needs inputs=rows to verify on"
            )
        model, label = source, type(source).__name__
        checks = [("given", _check_inputs(inputs))]
    else:
        from polytask.lifecycle._run import check_run_dir, load_run_model

        run_dir = Path(source)
        check_run_dir(run_dir)  # a missing best.pt is refused before any data is read
        given = None if inputs is None else _check_inputs(inputs)
        loaded = load_run_model(run_dir, splits=splits, example=given)
        model, label = loaded.model, str(run_dir)
        if loaded.splits is not None and given is None:
            checks = _held_out(loaded.splits, rows)
        else:
            assert given is not None
            checks = [("given", given)]
        out = out if out is not None else run_dir / "export" / format / f"model{FORMATS[format]}"
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _on_cpu(model)
    was_training = model.training
    model.eval()
    try:
        first = checks[0][1]
        checks.append(("single row", slice_inputs(first, slice(0, 1))))
        input_names = [SINGLE_INPUT] if isinstance(first, Tensor) else list(first)
        with torch.no_grad():
            reference = model(slice_inputs(first, slice(0, 1)))
        tasks = _task_names(model, reference)
        wrapper = _PositionalModel(model, None if isinstance(first, Tensor) else input_names, tasks)
        example = _example(first)
        _write(format, wrapper, example, input_names, tasks, path, opset)
        diffs = verify_export(
            path, model, checks, format=format, input_names=input_names, tolerance=tolerance
        )
        result = ExportResult(
            format=format,
            path=path,
            input_names=input_names,
            output_names=tasks,
            max_abs_diff=diffs,
            tolerance=float(tolerance),
            rows={name: batch_len(x) for name, x in checks},
            opset=_opset(path, format),
            runtime=_runtime(format),
            inputs=_describe_inputs(first, input_names),
            outputs=_describe_outputs(model, first, tasks),
            source=label,
        )
        result.report_path = path.parent / "export.json"
        result.report_path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        return result
    finally:
        model.train(was_training)


def verify_export(
    path: str | Path,
    model: nn.Module,
    inputs: Inputs | Sequence[tuple[str, Inputs]],
    *,
    format: str,
    input_names: list[str],
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, float]:
    """Largest absolute difference per task between the file at ``path`` and ``model``.

    ``inputs``: rows, or labelled groups of rows ``[(label, rows), ...]`` run as separate
    batches. The file is reloaded by its own runtime. Above ``tolerance`` on any task (or if the
    file cannot run a batch), the file is renamed ``<path>.failed-verification``, the differences
    are written beside it as ``<that>.json`` and :class:`VerificationError` names every task
    over the tolerance with its difference.
    """
    path = Path(path)
    groups = [("given", inputs)] if isinstance(inputs, Tensor | dict) else list(inputs)
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise ExportError(f"no exported file at {path}")
    try:
        run = _runner(format, path, input_names)
    except ImportError:
        raise
    except Exception as err:  # a file its own runtime cannot load is a failed export
        tasks = list(getattr(model, "task_names", []))
        _fail(
            path,
            f"the exported {format} file cannot be loaded by its runtime: "
            f"{type(err).__name__}: {_first_line(err)}",
            dict.fromkeys(tasks, math.inf),
            tolerance,
        )
    diffs: dict[str, float] = {}
    was_training = model.training
    model.eval()
    try:
        for label, rows in groups:
            with torch.no_grad():
                expected = {k: v.detach().float().cpu() for k, v in model(rows).items()}
            try:
                got = run(rows)
            except Exception as err:  # every runtime has its own error types
                _fail(
                    path,
                    f"the exported {format} file cannot run the {label} rows (batch of "
                    f"{batch_len(rows)}): {type(err).__name__}: {_first_line(err)}",
                    {t: math.inf for t in expected},
                    tolerance,
                )
            missing = [t for t in expected if t not in got]
            if missing:
                _fail(
                    path,
                    f"the exported file has no output for task(s) {missing}",
                    {t: math.inf for t in expected},
                    tolerance,
                )
            for task, ref in expected.items():
                diffs[task] = max(diffs.get(task, 0.0), _max_abs_diff(got[task], ref))
    finally:
        model.train(was_training)
    bad = {t: d for t, d in diffs.items() if not d <= tolerance}
    if bad:
        detail = ", ".join(f"task {t!r}: max |diff| {d:.3g}" for t, d in bad.items())
        _fail(
            path,
            f"the exported {format} file disagrees with the PyTorch model beyond the tolerance "
            f"{tolerance:g} on {len(bad)} of {len(diffs)} task(s): {detail}",
            diffs,
            tolerance,
        )
    return diffs


# ---------------------------------------------------------------------------------------- writers
def _write(
    format: str,
    wrapper: _PositionalModel,
    example: tuple[Tensor, ...],
    input_names: list[str],
    tasks: list[str],
    path: Path,
    opset: int | None,
) -> None:
    path.unlink(missing_ok=True)
    try:
        if format == "onnx":
            _write_onnx(wrapper, example, input_names, tasks, path, opset)
        elif format == "torchscript":
            with torch.no_grad(), warnings.catch_warnings():
                # torch marks jit as deprecated; the format is what was asked for
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated")
                traced = torch.jit.trace(wrapper, example, strict=False, check_trace=False)
            torch.jit.save(traced, str(path))
        else:
            program = _torch_export(wrapper, example)
            torch.export.save(program, str(path))
    except ExportError:
        raise
    except Exception as err:
        raise ExportError(
            f"{format} export failed ({type(err).__name__}): {_first_line(err)}"
        ) from err


def _batch_dims(example: tuple[Tensor, ...]) -> tuple[tuple[dict[int, Any], ...]]:
    """The dynamic shapes of ``forward(*tensors)``: dimension 0 of every input is one batch."""
    batch = torch.export.Dim("batch", min=1)
    return (tuple({0: batch} for _ in example),)


def _torch_export(wrapper: nn.Module, example: tuple[Tensor, ...]) -> Any:
    with warnings.catch_warnings():
        # mixture models keep their last gate weights for logging: harmless in an export
        warnings.filterwarnings("ignore", message=r".*were assigned during export.*")
        return torch.export.export(wrapper, example, dynamic_shapes=_batch_dims(example))


def _write_onnx(
    wrapper: nn.Module,
    example: tuple[Tensor, ...],
    input_names: list[str],
    tasks: list[str],
    path: Path,
    opset: int | None,
) -> None:
    _require("onnx", "onnxscript")
    program = _torch_export(wrapper, example)
    torch.onnx.export(
        program,
        f=str(path),
        dynamo=True,
        input_names=input_names,
        output_names=tasks,
        opset_version=opset,
        external_data=False,
        verbose=False,
    )
    if not path.is_file():
        raise ExportError(f"torch.onnx.export returned without writing {path}")


# ---------------------------------------------------------------------------------------- runners
def _runner(format: str, path: Path, input_names: list[str]) -> Any:
    """A function ``rows -> {task: tensor}`` running the file with its own runtime."""
    if format == "onnx":
        _require("onnxruntime")
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]

        def run_onnx(rows: Inputs) -> dict[str, Tensor]:
            feed = {
                n: t.cpu().numpy()
                for n, t in zip(input_names, _ordered(rows, input_names), strict=True)
            }
            return {
                n: torch.from_numpy(a) for n, a in zip(names, session.run(names, feed), strict=True)
            }

        return run_onnx
    if format == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu")
    else:
        module = torch.export.load(str(path)).module()

    def run_torch(rows: Inputs) -> dict[str, Tensor]:
        with torch.no_grad():
            return dict(module(*_ordered(rows, input_names)))

    return run_torch


# ---------------------------------------------------------------------------------------- helpers
def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: pip install 'polytask[onnx]'")


def _check_inputs(inputs: Any) -> Inputs:
    if isinstance(inputs, Tensor):
        named = {SINGLE_INPUT: inputs}
    elif isinstance(inputs, dict) and inputs:
        named = inputs
    else:
        raise TypeError(
            "inputs must be a tensor or a non-empty dict of named tensors, got "
            f"{type(inputs).__name__}"
        )
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"input {name!r} is a {type(t).__name__}, not a tensor")
        if t.ndim < 1 or t.shape[0] < 2:
            raise ValueError(
                f"input {name!r} has shape {tuple(t.shape)}: give at least 2 rows (a batch of one "
                "cannot show the exporter which dimension is the batch)"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"input {name!r} holds NaN or inf: verification needs finite rows")
    return (
        inputs.detach().cpu()
        if isinstance(inputs, Tensor)
        else {k: v.detach().cpu() for k, v in inputs.items()}
    )


def _held_out(splits: Splits, rows: int) -> list[tuple[str, Inputs]]:
    groups = []
    for name in ("val", "test"):
        data = getattr(splits, name)
        n = min(rows, len(data))
        if n >= 2:
            groups.append((name, data.example(n)))
    if not groups:
        raise ValueError(
            "the run's validation and test splits have fewer than 2 rows each: nothing held out to "
            "verify on; pass rows to verify on, export_model(run_dir, inputs=rows)"
        )
    return groups


def _on_cpu(model: nn.Module) -> nn.Module:
    devices = {p.device.type for p in model.parameters()} | {b.device.type for b in model.buffers()}
    return model if devices <= {"cpu"} else copy.deepcopy(model).cpu()


def _task_names(model: nn.Module, outputs: Any) -> list[str]:
    if not isinstance(outputs, dict) or not all(isinstance(v, Tensor) for v in outputs.values()):
        raise ExportError(
            f"{type(model).__name__} returns {type(outputs).__name__}; export needs a model that "
            "returns {task name: tensor}"
        )
    names = list(getattr(model, "task_names", list(outputs)))
    if sorted(names) != sorted(outputs):
        raise ExportError(f"the model's tasks {names} differ from its outputs {list(outputs)}")
    return names


def _example(rows: Inputs) -> tuple[Tensor, ...]:
    """Two rows, as positional tensors: the shapes the exporter traces (batch dimension dynamic)."""
    two = slice_inputs(rows, slice(0, 2))
    return (two,) if isinstance(two, Tensor) else tuple(two.values())


def _ordered(rows: Inputs, input_names: list[str]) -> list[Tensor]:
    if isinstance(rows, Tensor):
        return [rows]
    missing = [n for n in input_names if n not in rows]
    if missing:
        raise ValueError(f"rows lack the input(s) {missing} of the exported file")
    return [rows[n] for n in input_names]


def _max_abs_diff(got: Tensor, expected: Tensor) -> float:
    """Largest |got - expected|; a shape mismatch or a NaN on either side counts as infinite."""
    got = got.detach().float().cpu()
    if got.shape != expected.shape:
        return math.inf
    diff = (got - expected).abs()
    if not bool(torch.isfinite(diff).all()):
        return math.inf
    return float(diff.max()) if diff.numel() else 0.0


def _fail(path: Path, message: str, diffs: dict[str, float], tolerance: float) -> None:
    kept = path.with_name(path.name + FAILED_SUFFIX)
    kept.unlink(missing_ok=True)
    if path.exists():
        path.replace(kept)
    report = path.parent / "export.json"
    if report.is_file():  # a report of an earlier export of this file would now be a lie
        try:
            stale = json.loads(report.read_text()).get("file") == path.name
        except (json.JSONDecodeError, AttributeError):
            stale = False
        if stale:
            report.unlink()
    details = {
        "file": kept.name,
        "error": message,
        "tolerance": tolerance,
        "max_abs_diff": {t: (d if math.isfinite(d) else "inf") for t, d in diffs.items()},
    }
    kept.with_name(kept.name + ".json").write_text(json.dumps(details, indent=2) + "\n")
    raise VerificationError(f"{message}. The file is kept for inspection as {kept}", diffs, kept)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _opset(path: Path, format: str) -> int | None:
    if format != "onnx":
        return None
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _runtime(format: str) -> str:
    if format == "onnx":
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__} (CPUExecutionProvider)"
    loader = "torch.jit.load" if format == "torchscript" else "torch.export.load"
    return f"{loader} (torch {torch.__version__})"


def _describe_inputs(rows: Inputs, names: list[str]) -> list[dict[str, Any]]:
    return [
        {"name": n, "shape": ["batch", *t.shape[1:]], "dtype": str(t.dtype).removeprefix("torch.")}
        for n, t in zip(names, _ordered(rows, names), strict=True)
    ]


def _describe_outputs(model: nn.Module, rows: Inputs, tasks: list[str]) -> list[dict[str, Any]]:
    with torch.no_grad():
        out = model(slice_inputs(rows, slice(0, 2)))
    return [
        {
            "name": t,
            "shape": ["batch", *out[t].shape[1:]],
            "dtype": str(out[t].dtype).removeprefix("torch."),
        }
        for t in tasks
    ]
