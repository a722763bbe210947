"""Export to ONNX / TorchScript / pt2: every architecture, several inputs, feature maps, failures.

Each export is checked twice: by export_model's own verification (reported differences), and
here, independently, by running the written file with its runtime on a batch size the exporter
never saw and comparing with the PyTorch model.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from polytask.cli import app
from polytask.lifecycle import (
    ExportError,
    MissingCheckpointError,
    VerificationError,
    export_model,
    verify_export,
)
from polytask.models import MLP, create_model, create_trunk
from polytask.models.resnet import ResNet
from polytask.tasks import Task

ROOT = Path(__file__).resolve().parents[2]
ARCHS = ["hard_sharing", "mmoe", "cgc", "ple", "dselect_k", "cross_stitch", "mtan"]
TASKS = [
    Task("kind", "multiclass", num_classes=4),
    Task("toxic", "binary"),
    Task("logp", "regression", standardize=False),
]
pytestmark = pytest.mark.usefixtures("single_thread")


def tiny(arch: str) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    x = torch.randn(16, 12)
    options = {"num_experts": 3} if arch in ("mmoe", "dselect_k") else {}
    return create_model(arch, MLP(12, (16, 8)), TASKS, example_input=x, **options), x


def onnx_outputs(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def assert_same(got: dict[str, np.ndarray], model: nn.Module, x: Tensor | dict[str, Tensor]) -> None:
    with torch.no_grad():
        expected = model.eval()(x)
    assert list(got) == list(expected)  # one output per task, named by the task, in task order
    for task, value in expected.items():
        np.testing.assert_allclose(got[task], value.numpy(), atol=1e-4, rtol=0)


@pytest.mark.slow  # torch.onnx translation: 27-102 s per model measured at load average ~12
@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_exports_to_onnx_and_verifies(arch: str, tmp_path: Path) -> None:
    model, x = tiny(arch)
    result = export_model(model, "onnx", tmp_path / "model.onnx", inputs=x)
    assert result.output_names == ["kind", "toxic", "logp"]
    assert result.input_names == ["input"]
    assert set(result.max_abs_diff) == {"kind", "toxic", "logp"}
    assert all(d <= 1e-4 for d in result.max_abs_diff.values())
    assert result.rows == {"given": 16, "single row": 1}
    # a batch size the exporter never saw: the batch dimension is dynamic
    other = torch.randn(7, 12)
    assert_same(onnx_outputs(result.path, {"input": other.numpy()}), model, other)
    report = json.loads((tmp_path / "export.json").read_text())
    assert report["inputs"] == [{"name": "input", "shape": ["batch", 12], "dtype": "float32"}]
    assert [o["name"] for o in report["outputs"]] == ["kind", "toxic", "logp"]
    assert report["outputs"][0]["shape"] == ["batch", 4]
    assert isinstance(report["opset"], int) and report["opset"] >= 17
    assert report["tolerance"] == 1e-4 and set(report["max_abs_diff"]) == {"kind", "toxic", "logp"}


def two_input_model() -> tuple[nn.Module, dict[str, Tensor]]:
    torch.manual_seed(0)
    x = {"fingerprint": torch.rand(10, 20), "descriptors": torch.randn(10, 5)}
    trunk = create_trunk(
        "multi_input",
        encoders={
            "fingerprint": {"trunk": "mlp", "options": {"hidden": [8]}},
            "descriptors": {"trunk": "mlp", "options": {"hidden": [6]}},
        },
        fusion="gated", width=8, example_input=x,
    )  # fmt: skip
    return create_model("mmoe", trunk, TASKS, example_input=x, num_experts=2), x


def test_a_two_input_model_has_named_inputs_in_onnx(tmp_path: Path) -> None:
    model, x = two_input_model()
    result = export_model(model, "onnx", tmp_path / "two.onnx", inputs=x)
    assert result.input_names == ["fingerprint", "descriptors"]
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["fingerprint", "descriptors"]
    other = {"fingerprint": torch.rand(3, 20), "descriptors": torch.randn(3, 5)}
    assert_same(onnx_outputs(result.path, {k: v.numpy() for k, v in other.items()}), model, other)


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_torchscript_and_pt2_verify_with_several_inputs(fmt: str, tmp_path: Path) -> None:
    model, x = two_input_model()
    suffix = ".pt2" if fmt == "pt2" else ".torchscript.pt"
    result = export_model(model, fmt, tmp_path / f"two{suffix}", inputs=x)
    assert all(d <= 1e-4 for d in result.max_abs_diff.values())
    loaded = (
        torch.jit.load(str(result.path)) if fmt == "torchscript"
        else torch.export.load(str(result.path)).module()
    )  # fmt: skip
    other = {"fingerprint": torch.rand(5, 20), "descriptors": torch.randn(5, 5)}
    with torch.no_grad():
        got = loaded(*(other[name] for name in result.input_names))
    assert_same({k: v.numpy() for k, v in got.items()}, model, other)
    assert json.loads((tmp_path / "export.json").read_text())["format"] == fmt


def test_a_dense_feature_map_model_exports_to_onnx(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 1, 16, 16)
    trunk = ResNet(depth=10, width=4, in_channels=1, output="map")
    tasks = [Task("depth", "depth"), Task("digit", "multiclass", num_classes=3)]
    model = create_model("hard_sharing", trunk, tasks, example_input=x)
    result = export_model(model, "onnx", tmp_path / "dense.onnx", inputs=x)
    out = onnx_outputs(result.path, {"input": torch.rand(3, 1, 16, 16).numpy()})
    assert out["depth"].shape[0] == 3 and out["depth"].shape[-2:] == (16, 16)
    assert result.max_abs_diff["depth"] <= 1e-4


def test_a_weight_corrupted_after_export_fails_loudly_naming_the_task(tmp_path: Path) -> None:
    model, x = tiny("hard_sharing")
    result = export_model(model, "onnx", tmp_path / "model.onnx", inputs=x)
    assert (tmp_path / "export.json").is_file()
    with torch.no_grad():
        model.heads["toxic"].weight.add_(0.05)  # the file no longer matches the model
    with pytest.raises(VerificationError) as caught:
        verify_export(result.path, model, x, format="onnx", input_names=result.input_names)
    message = str(caught.value)
    assert "task 'toxic'" in message and "task 'kind'" not in message
    assert caught.value.max_abs_diff["toxic"] > 1e-4 >= caught.value.max_abs_diff["kind"]
    kept = tmp_path / "model.onnx.failed-verification"
    assert kept.is_file() and not result.path.exists()  # kept for inspection, not deployable
    assert not (tmp_path / "export.json").exists()  # the earlier report no longer holds
    details = json.loads((tmp_path / "model.onnx.failed-verification.json").read_text())
    assert details["max_abs_diff"]["toxic"] == pytest.approx(caught.value.max_abs_diff["toxic"])
    assert str(kept) in message


def test_a_frozen_batch_size_is_caught(tmp_path: Path) -> None:
    """A model that bakes the batch size it was traced with into the file fails verification."""

    class Frozen(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.task_names = ["y"]
            self.linear = nn.Linear(3, 1)

        def forward(self, x: Tensor) -> dict[str, Tensor]:
            return {"y": self.linear(x).reshape(int(x.shape[0]), 1)}

    with pytest.raises(ExportError, match=r"cannot run the given rows \(batch of 4\)"):
        export_model(Frozen(), "torchscript", tmp_path / "f.torchscript.pt", inputs=torch.randn(4, 3))
    assert (tmp_path / "f.torchscript.pt.failed-verification").is_file()


def test_export_of_a_run_verifies_on_its_validation_and_test_rows(census_run: Path) -> None:
    result = export_model(census_run, "onnx", rows=64)
    assert result.path == census_run / "export" / "onnx" / "model.onnx"
    assert result.rows == {"val": 64, "test": 64, "single row": 1}
    assert result.output_names == ["income", "marital"]
    assert all(d <= 1e-4 for d in result.max_abs_diff.values())
    report = json.loads((result.path.parent / "export.json").read_text())
    assert report["source"] == str(census_run) and report["rows"]["val"] == 64


def test_a_run_without_best_checkpoint_is_refused(census_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(census_run, run, ignore=shutil.ignore_patterns("export", "compressed"))
    (run / "checkpoints" / "best.pt").unlink()
    with pytest.raises(MissingCheckpointError, match=r"no selected checkpoint .*best\.pt.*last\.pt"):
        export_model(run, "onnx")
    assert not (run / "export").exists()  # refused before anything was written
    cli = CliRunner().invoke(app, ["export", str(run)])
    assert cli.exit_code == 2 and "no selected checkpoint" in cli.output


def test_bad_arguments_are_refused_before_any_work(tmp_path: Path) -> None:
    model, x = tiny("hard_sharing")
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_model(model, "tflite", tmp_path / "m", inputs=x)
    with pytest.raises(ValueError, match="needs inputs"):
        export_model(model, "onnx", tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="at least 2 rows"):
        export_model(model, "onnx", tmp_path / "m.onnx", inputs=x[:1])
    with pytest.raises(ValueError, match=r"must end in \.pt2"):
        export_model(model, "pt2", tmp_path / "m.pt", inputs=x)
    assert list(tmp_path.iterdir()) == []


def docs_snippet() -> str:
    text = (ROOT / "docs" / "export.md").read_text()
    found = re.search(r"<!-- onnxruntime-only -->\s*```python\n(.*?)```", text, re.S)
    assert found, "docs/export.md lost its onnxruntime-only snippet"
    return found.group(1)


BLOCKER = """
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "polytask"):
            raise ImportError(f"{name} is blocked: the snippet must run on onnxruntime alone")
        return None
sys.meta_path.insert(0, Blocker())
"""


def test_the_docs_snippet_runs_with_onnxruntime_alone(census_run: Path, tmp_path: Path) -> None:
    result = export_model(census_run, "onnx", tmp_path / "model.onnx", rows=8)
    check = "\nassert not any(m.split('.')[0] in ('torch', 'polytask') for m in sys.modules)\n"
    run = subprocess.run(
        [sys.executable, "-c", BLOCKER + docs_snippet() + check],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    for task in result.output_names:  # the snippet prints one line per task
        assert re.search(rf"^{task}: shape \(2, 1\)", run.stdout, re.M), run.stdout
