"""The overhead benchmark on tiny configurations: the report's structure, not its numbers.

The benchmark is ``benchmarks/polytask_bench/overhead.py`` (run as ``python
benchmarks/overhead.py``); its ``main`` is called here with the script's arguments. The CUDA path
is tested on the CPU for everything but the device (its meter with stand-in CUDA functions); a
real CUDA run is skipped without a GPU. How ``polytask bench`` finds the benchmarks, and what it
says outside a checkout, is tested at the end.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from polytask_bench import overhead
from polytask_bench.libmtl_side import libmtl_version
from polytask_bench.overhead import main as main_overhead
from typer.testing import CliRunner

import polytask.bench as locator
from polytask.bench import BenchmarksNotFoundError, import_benchmarks
from polytask.cli import app

RATIO = re.compile(r"^(?:[A-Za-z]+: )?(\d+\.\d+) \((\d+\.\d+)\)(?: †)?$")
TINY = ["--tasks", "2", "--repeats", "1", "--warmup", "1", "--batch-size", "8", "--width", "16"]
NO_LIBMTL = pytest.mark.skipif(
    libmtl_version() is None, reason="LibMTL is not installed (pip install --no-deps libmtl==1.1.5)"
)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return overhead


def _rows(text: str, section: str) -> dict[str, list[str]]:
    """Table rows (method -> cells) of the first ``#### T = ...`` section of that name."""
    body = text.split(f"#### {section}\n", 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in body.splitlines():
        if line.startswith("| ") and not line.startswith("| method"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def _ratios(cell: str) -> tuple[float, float]:
    match = RATIO.match(cell)
    assert match, f"not a 'time (memory)' ratio cell: {cell!r}"
    return float(match.group(1)), float(match.group(2))


def test_tiny_run_writes_a_table_with_finite_ratios(tmp_path: Path) -> None:
    out = tmp_path / "overhead.md"
    argv = [*TINY, "--methods", "equal,mgda", "--modes", "jacobian,representation"]
    assert main_overhead([*argv, "--no-libmtl", "--out", str(out)]) == 0
    text = out.read_text()
    assert "python benchmarks/overhead.py" in text and "### Targets (mlp)" in text
    rows = _rows(text, "T = 2")
    assert set(rows) == {"equal", "mgda"}
    # columns: method, family, jacobian, representation (no LibMTL columns)
    assert len(rows["mgda"]) == 4
    assert _ratios(rows["equal"][2]) == (1.0, 1.0)
    assert rows["equal"][3].startswith("n/a (refused:")
    for cell in rows["mgda"][2:]:
        time_ratio, mem_ratio = _ratios(cell)
        assert math.isfinite(time_ratio) and time_ratio > 0
        assert math.isfinite(mem_ratio) and mem_ratio > 0


@pytest.mark.parametrize(
    "trunk, sizes",
    [
        ("resnet18", ["--width", "8", "--image-size", "16", "--batch-size", "2"]),
        ("transformer", ["--width", "16", "--seq-len", "6", "--batch-size", "2"]),
    ],
)
def test_deep_trunks_run_every_mode(trunk: str, sizes: list[str], tmp_path: Path) -> None:
    """ResNet-18 and the transformer: every mode, per-method rounds, the Gramian check."""
    out = tmp_path / f"{trunk}.md"
    argv = ["--trunk", trunk, "--tasks", "3", "--repeats", "1", "--warmup", "1", *sizes]
    argv += ["--methods", "equal,mgda,famo", "--no-libmtl", "--out", str(out)]
    assert main_overhead(argv) == 0
    text = out.read_text()
    assert f"## {trunk}, mgda, famo; jacobian / gramian / representation modes; T = 3" in text
    assert "one method at a time" in text
    rows = _rows(text, "T = 3")
    assert rows["famo"][3] == "same as jacobian"  # a loss-based method's gramian cell
    for cell in rows["mgda"][2:]:
        time_ratio, mem_ratio = _ratios(cell)
        assert math.isfinite(time_ratio) and math.isfinite(mem_ratio)
    gram = _rows(text, "Gramian mode at T = 3: memory, and its weights against the Jacobian mode's")
    assert float(gram["mgda"][4]) < 1e-4  # same weights in both modes, to float32 precision


@NO_LIBMTL
def test_tiny_libmtl_row(tmp_path: Path) -> None:
    out = tmp_path / "overhead.md"
    argv = [*TINY, "--methods", "equal,mgda", "--modes", "jacobian,representation"]
    assert main_overhead([*argv, "--no-memory", "--out", str(out)]) == 0
    text = out.read_text()
    rows = _rows(text, "T = 2")
    # columns: method, family, jacobian, representation, LibMTL rep_grad=False / True
    mgda = rows["mgda"]
    assert len(mgda) == 6
    for cell in mgda[4:]:
        assert cell.startswith("MGDA: ")
        time_ratio = float(cell.removeprefix("MGDA: ").split()[0])
        assert math.isfinite(time_ratio) and time_ratio > 0
    assert rows["equal"][5].endswith("†")  # LibMTL's EW with rep_grad never trains the trunk
    assert "Speed-up over LibMTL" in text


@NO_LIBMTL
def test_floor_table_compares_batched_and_per_task_losses(tmp_path: Path) -> None:
    out = tmp_path / "floor.md"
    argv = [*TINY, "--methods", "equal", "--modes", "jacobian", "--losses", "both"]
    assert main_overhead([*argv, "--no-memory", "--out", str(out)]) == 0
    text = out.read_text()
    floor = text.split("### Equal weighting: polytask against LibMTL\n", 1)[1]
    header, _, row = floor.strip().splitlines()[:3]
    assert "EW, per-task losses" in header and "EW, batched losses" in header
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 8  # T, 3 polytask EW variants, LibMTL EW, 3 ratios
    assert cells[0] == "2" and all(math.isfinite(float(c)) for c in cells[1:])


@pytest.mark.parametrize("trunk", ["mlp", "resnet18"])
def test_forced_loss_variants_compute_the_same_losses(bench: ModuleType, trunk: str) -> None:
    """The floor table's per-task and batched EW configurations compute the same losses."""
    work = bench.make_workload(trunk, 5, 4, 8, 0, image_size=16)
    outputs = work.model()(work.x)
    before = bench.per_task_losses(work.tasks, outputs, work.targets)
    after = bench.batched_losses(work.tasks, outputs, work.targets)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_combine_writes_one_report_from_several_runs(tmp_path: Path) -> None:
    runs = []
    for trunk, sizes in [("mlp", ["--width", "8"]), ("resnet18", ["--width", "8", "--image-size", "16"])]:
        raw = tmp_path / f"{trunk}.json"
        argv = ["--trunk", trunk, "--tasks", "2", "--repeats", "1", "--warmup", "0", *sizes]
        argv += ["--batch-size", "2", "--methods", "equal", "--modes", "jacobian", "--no-libmtl"]
        assert main_overhead([*argv, "--no-memory", "--out", str(tmp_path / "x.md"),
                              "--json", str(raw)]) == 0
        assert json.loads(raw.read_text())["config"]["trunk"] == trunk
        runs.append(str(raw))
    out = tmp_path / "combined.md"
    notes = tmp_path / "notes.md"
    notes.write_text("## Reading\n\nHand-written verdicts.\n")
    assert main_overhead(["--combine", *runs, "--notes", str(notes), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.count("# Balancer overhead") == 1
    assert text.index("Hand-written verdicts.") < text.index("## mlp, equal weighting")
    assert "## mlp, equal weighting; jacobian mode; T = 2" in text
    assert "## resnet18, equal weighting" in text


def test_bad_options_are_errors_not_crashes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_overhead(["--tasks", "1"]) == 2
    assert main_overhead(["--methods", "nope"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main_overhead(["--trunk", "vgg"]) == 2
    assert main_overhead(["--device", "tpu"]) == 2
    assert main_overhead(["--combine", "a.json"]) == 2  # no --out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_device_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_overhead(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_cuda_meter_synchronises_and_measures_above_the_start(bench: ModuleType) -> None:
    """The CUDA meter's logic with stand-ins for the device functions (runs on any machine)."""
    calls: list[str] = []
    state = {"allocated": 1000, "peak": 1000}

    def step() -> None:
        calls.append("step")
        state["peak"] = max(state["peak"], state["allocated"] + 640)  # its working memory
        state["allocated"] += 8  # what it leaves behind (new optimizer state, say)

    def reset(_: torch.device) -> None:
        calls.append("reset")
        state["peak"] = state["allocated"]

    meter = bench.CudaMeter(
        torch.device("cuda"),
        synchronize=lambda _: calls.append("sync"),
        reset_peak=reset,
        allocated=lambda _: state["allocated"],
        max_allocated=lambda _: state["peak"],
    )
    elapsed, wall = meter.time(step)
    assert calls == ["sync", "step", "sync"] and elapsed == wall >= 0
    calls.clear()
    assert meter.peak(step) == 640
    assert calls == ["sync", "reset", "step", "sync"]
    assert isinstance(bench.make_meter(torch.device("cpu")), bench.CpuMeter)


def test_cpu_meter_counts_a_step_allocation(bench: ModuleType) -> None:
    keep: list[torch.Tensor] = []

    def step() -> None:
        tmp = torch.ones(1 << 20)  # 4 MiB, freed at once
        keep.append(tmp.sum().reshape(1))

    peak = bench.CpuMeter().peak(step)
    assert 4 << 20 <= peak < 5 << 20


def test_cpu_meter_sees_the_release_of_the_previous_steps_tensors(bench: ModuleType) -> None:
    """Primed, the CPU figure is CUDA's: what the step frees of the previous step counts."""
    held = [torch.ones(1 << 20)]

    def step() -> None:  # replaces the previous step's 4 MiB tensor by a new one
        held.clear()
        held.append(torch.ones(1 << 20))

    meter = bench.CpuMeter()
    assert meter.peak(step) >= 4 << 20  # the old tensor's release is unseen: +4 MiB
    meter.prime(step)
    assert meter.peak(step) < 1 << 20  # -4 MiB, then +4 MiB: nothing above the start


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
def test_tiny_cuda_run(tmp_path: Path) -> None:
    out = tmp_path / "cuda.md"
    argv = [*TINY, "--methods", "equal,mgda", "--device", "cuda", "--no-libmtl", "--out", str(out)]
    assert main_overhead(argv) == 0
    text = out.read_text()
    assert "torch.cuda.max_memory_allocated" in text
    for cell in _rows(text, "T = 2")["mgda"][2:]:
        assert math.isfinite(_ratios(cell)[0])


def test_outside_a_checkout_bench_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the repository, ``polytask bench`` exits 2 naming where it looked and what to run."""
    monkeypatch.setattr(locator, "benchmark_dirs", lambda: [tmp_path / "benchmarks"])
    monkeypatch.delitem(sys.modules, "polytask_bench", raising=False)  # as in a fresh process
    with pytest.raises(BenchmarksNotFoundError, match="part of the polytask source repository"):
        import_benchmarks("suite")
    result = CliRunner().invoke(app, ["bench", "run", "benchmarks/quick.yaml"])
    assert result.exit_code == 2
    assert str(tmp_path / "benchmarks") in result.output
    assert "python benchmarks/suite.py run SUITE" in result.output
    assert "POLYTASK_BENCHMARKS" in result.output


def test_benchmark_dirs_honour_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLYTASK_BENCHMARKS", str(tmp_path))
    dirs = locator.benchmark_dirs()
    assert dirs[0] == tmp_path
    assert Path(__file__).resolve().parents[2] / "benchmarks" in dirs  # this checkout's


def test_bench_overhead_is_no_longer_a_cli_command() -> None:
    """Its options have one home, the benchmark's own parser (python benchmarks/overhead.py)."""
    result = CliRunner().invoke(app, ["bench", "overhead", "--tasks", "2"])
    assert result.exit_code == 2 and "No such command 'overhead'" in result.output
