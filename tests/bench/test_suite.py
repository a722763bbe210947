"""The benchmark suite end to end on ``benchmarks/quick.yaml``: run, resume, report; validation.

The quick suite is run as shipped (not a copy), so a change that breaks the file a user is told
to run first breaks this test too. The single-task baseline cache is redirected into tmp_path so
the run trains everything and measures it, whatever an earlier run left in the user's cache.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from polytask_bench.suite import (
    CELLS_DIR,
    SuiteError,
    expected_cells,
    load_suite,
    parse_only,
    parse_suite,
    run_suite,
)
from typer.testing import CliRunner

from polytask.cli import app

ROOT = Path(__file__).resolve().parents[2]
QUICK = ROOT / "benchmarks" / "quick.yaml"
PNG = b"\x89PNG\r\n\x1a\n"

REQUIRED = (
    "test", "val", "delta_m", "val_delta_m", "time_per_epoch_s", "peak_memory_mb",
    "memory_measure", "num_parameters", "selection", "seed", "config", "command",
    "config_hash", "environment",
)


def _counts(output: str) -> tuple[int, int, int]:
    match = re.search(r"(\d+) cells run, (\d+) already finished, (\d+) failed", output)
    assert match, output
    ran, skipped, failed = (int(g) for g in match.groups())
    return ran, skipped, failed


def test_quick_suite_runs_resumes_and_reports(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "results"
    runner = CliRunner()

    first = runner.invoke(app, ["bench", "run", str(QUICK), "--out", str(out)])
    assert first.exit_code == 0, first.output
    expected = expected_cells(load_suite(QUICK))
    ran, skipped, failed = _counts(first.output)
    assert (ran, skipped, failed) == (len(expected), 0, 0)
    cells = {p.stem: json.loads(p.read_text()) for p in (out / CELLS_DIR).glob("*.json")}
    assert set(cells) == set(expected)
    assert not list((out / CELLS_DIR).glob(".*tmp")), "a temporary file was left behind"
    for stem, cell in cells.items():
        missing = [k for k in REQUIRED if k not in cell]
        assert not missing, f"{stem} lacks {missing}"
        assert cell["status"] == "finished"
        assert set(cell["test"]) == {"left", "right"}
        assert cell["num_parameters"] > 0 and cell["time_per_epoch_s"] > 0
        assert cell["peak_memory_mb"] is not None  # fresh cache: everything trained here
        assert "bench run" in cell["command"]
    mtl = cells["multimnist__hard_sharing__upgrad__seed1"]
    assert mtl["kind"] == "mtl" and mtl["seed"] == 1
    assert mtl["config"]["balancers"] == [{"name": "upgrad", "options": {}, "label": None}]
    assert mtl["selection"].startswith("val delta_m")
    stl = cells["multimnist__hard_sharing__stl__seed0"]
    assert stl["delta_m"] == 0.0 and stl["num_parameters"] > mtl["num_parameters"]
    tuned = cells["multimnist__hard_sharing__equal_tuned__seed0"]
    assert tuned["tuning"]["lr"] in (0.002, 0.006) and "test split is not used" in tuned["tuning"]["chosen_by"]
    # on the grid seed the tuned baseline is the chosen grid run itself, not a second training
    assert tuned["same_run_as"].startswith("multimnist__hard_sharing__equal_grid-lr")
    # and so is `equal`: the grid point at the suite's own lr (0.002) and weight decay (0) is the
    # same training, recorded once; the log says beforehand what the suite trains and why
    grid = cells["multimnist__hard_sharing__equal_grid-lr0.002-wd0__seed0"]
    equal0 = cells["multimnist__hard_sharing__equal__seed0"]
    assert equal0["same_run_as"] == grid["cell"] and equal0["kind"] == "mtl"
    assert "multimnist__hard_sharing__equal__seed0: the same training as" in first.output
    assert ("up to 8 multi-task trainings where `polytask train` of this configuration does 4"
            in first.output), first.output
    trained = [c for c in cells.values() if c["kind"] != "stl" and "same_run_as" not in c]
    assert len(trained) in (7, 8)  # 8 when tuning chose lr 0.006 (equal_tuned seed 1 trains)

    # LibMTL's cell trains the same network on the same batches: with equal weights (a plain sum
    # of the losses in both libraries) the selected checkpoint's metrics agree to float rounding.
    lib = cells["multimnist__hard_sharing__libmtl-equal__seed0"]
    assert lib["kind"] == "libmtl" and lib["libmtl"]["weighting"] == "EW"
    ours = cells["multimnist__hard_sharing__equal__seed0"]
    assert lib["best_epoch"] == ours["best_epoch"] and lib["num_parameters"] == ours["num_parameters"]
    for split in ("val", "test"):
        for task in ("left", "right"):
            assert lib[split][task]["loss"] == pytest.approx(ours[split][task]["loss"], rel=1e-5)
            assert lib[split][task]["accuracy"] == ours[split][task]["accuracy"]

    # Resume: finished cells are skipped; a removed cell (an interrupted run) is redone alone.
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / CELLS_DIR).glob("*.json")}
    (out / CELLS_DIR / "multimnist__hard_sharing__equal__seed1.json").unlink()
    second = runner.invoke(app, ["bench", "run", str(QUICK), "--out", str(out)])
    assert second.exit_code == 0, second.output
    assert _counts(second.output) == (1, len(expected) - 1, 0)
    for path in (out / CELLS_DIR).glob("*.json"):
        if path.name != "multimnist__hard_sharing__equal__seed1.json":
            assert path.stat().st_mtime_ns == stamps[path.name], f"{path.name} was rewritten"
    only = runner.invoke(
        app, ["bench", "run", str(QUICK), "--out", str(out), "--only", "seed=0", "--only",
              "balancer=stl,equal"],
    )
    assert only.exit_code == 0, only.output
    assert _counts(only.output) == (0, 2, 0)

    # Report: Markdown with mean ± std over the two seeds, the commands, and the PNGs beside it.
    md = tmp_path / "docs" / "results.md"
    rep = runner.invoke(app, ["bench", "report", str(out), "--out", str(md)])
    assert rep.exit_code == 0, rep.output
    text = md.read_text()
    assert "## multimnist — hard_sharing" in text
    assert "| method | n | left accuracy ↑ | right accuracy ↑ | Δm% ↓" in text
    rows = [line for line in text.splitlines() if line.startswith("| upgrad |")]
    assert len(rows) == 1 and rows[0].count(" ± ") >= 4, rows
    assert "| 2 |" in rows[0]
    assert f"polytask bench run {QUICK} --out {out}" in text
    assert "polytask bench report" in text
    assert f"Status: {len(expected)} of {len(expected)} cells finished" in text
    assert "Side by side with LibMTL 1.1.5" in text
    side = [line for line in text.splitlines() if line.startswith("| equal | +")]
    assert len(side) == 1 and "| yes |" in side[0], side  # same result within one std
    pngs = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert {Path(p).name.rsplit("-", 1)[-1] for p in pngs} >= {"tasks.png", "pareto.png", "time.png"}
    for name in pngs:
        assert (md.parent / name).read_bytes().startswith(PNG)


def _quick_raw() -> dict:
    raw = yaml.safe_load(QUICK.read_text())
    assert isinstance(raw, dict)
    return raw


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda r: r["datasets"][0].setdefault("training", {}).update(lr="fast"),
         "datasets.0.training.lr: Input should be a valid number"),
        (lambda r: r["base"]["training"].update(epochs=0),
         "base.training.epochs: Input should be greater than or equal to 1"),
        (lambda r: r["datasets"][0]["data"].update(datset="x"), "datasets.0.data.datset: unknown key"),
        (lambda r: r["datasets"][0]["data"].update(dataset="mnist"),
         "datasets.0.data: Value error, unknown data set 'mnist'"),
        (lambda r: r["balancers"].append({"name": "pcgradd"}),
         "balancers.2.name: Value error, unknown balancer 'pcgradd'"),
        (lambda r: r["architectures"].append({"name": "moe"}),
         "architectures.1.name: Value error, unknown architecture 'moe'"),
        (lambda r: r["tuned_equal"].update(weight_decay=[-1.0]),
         "tuned_equal.weight_decay: Value error, grid values must be finite and >= 0"),
        (lambda r: r.update(sedes=[0]), "sedes: unknown key"),
        (lambda r: r["balancers"].append({"name": "equal", "label": "stl"}),
         "labels ['stl'] are reserved"),
        (lambda r: r["datasets"][0]["model"].update(trunk_options=3),
         "datasets.0.model.trunk_options: Input should be a valid dictionary"),
        (lambda r: r["libmtl"].update(methods=["nash_mtl"]),
         "libmtl.methods: Value error, no LibMTL counterpart for ['nash_mtl']"),
        (lambda r: r["libmtl"].update(methods=["pcgrad"]),
         "libmtl.methods ['pcgrad'] are not among the balancers"),
        (lambda r: r.update(architectures=[{"name": "mmoe"}]),
         "libmtl needs a hard_sharing architecture"),
    ],
)
def test_suite_validation_names_the_key_path(edit, expected: str) -> None:  # type: ignore[no-untyped-def]
    raw = _quick_raw()
    edit(raw)
    with pytest.raises(SuiteError) as err:
        parse_suite(raw, "quick.yaml")
    assert expected in str(err.value), str(err.value)
    assert str(err.value).startswith("invalid benchmark suite quick.yaml")


def test_suite_file_and_only_errors(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="does not exist"):
        load_suite(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SuiteError, match="not valid YAML"):
        load_suite(bad)
    assert parse_only(["seed=0,1", "balancer=stl"]) == {"seed": {"0", "1"}, "balancer": {"stl"}}
    with pytest.raises(SuiteError, match="KEY=V1,V2"):
        parse_only(["method=equal"])
    result = CliRunner().invoke(app, ["bench", "run", str(bad)])
    assert result.exit_code == 2 and "not valid YAML" in result.output


def test_the_script_runs_without_the_polytask_command(tmp_path: Path) -> None:
    """``python benchmarks/suite.py`` as a user runs it (a fresh process, from the repository
    root): it imports polytask_bench from its own folder and refuses a bad suite before training,
    exit status 2, naming the file; a report of a directory without cells says so, status 2."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    script = [sys.executable, "benchmarks/suite.py"]
    run = subprocess.run([*script, "run", str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert f"benchmark suite {bad}" in run.stderr and "not valid YAML" in run.stderr
    report = subprocess.run(
        [*script, "report", str(tmp_path / "none"), "--out", str(tmp_path / "r.md")],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert report.returncode == 2 and str(tmp_path / "none") in report.stderr, report.stderr


def test_every_shipped_suite_validates() -> None:
    """Each suite opens with the command that runs it and names only registered things."""
    suites = sorted((ROOT / "benchmarks").glob("*.yaml"))
    names = {p.stem for p in suites}
    assert {"quick", "multimnist", "tox21", "census", "school", "qm8", "gpu"} <= names
    for path in suites:
        first = path.read_text().splitlines()[0]
        # the command may set the environment first (where a large data set lives)
        command = rf"# (?:[A-Z_][A-Z0-9_]*=\S+ )*polytask bench run benchmarks/{path.stem}\.yaml\b"
        assert re.match(command, first), (path, first)
        suite = load_suite(path)
        assert expected_cells(suite)



def test_several_datasets_cell_matches_polytask_train(
    tmp_path: Path, data_dir: Path, single_thread: None
) -> None:
    """A suite cell of several data sets trains as `polytask train` does: through the sampler.

    (Suites used to stack the sources and batch them as one data set, silently ignoring
    ``training.sampling``.) Also: whole-model ``summary_metrics`` are recorded and reported.
    """
    from polytask.config import ExperimentConfig
    from polytask.experiment import run_experiment

    raw = {
        "name": "tiny",
        "base": {"training": {"epochs": 2, "batch_size": 32, "lr": 0.003, "device": "cpu"}},
        "datasets": [
            {"label": "mm2",
             "data": {"dataset": "multimnist_two_sources", "options": {"source": "idx", "n": 240}},
             "model": {"trunk": "small_cnn",
                       "trunk_options": {"channels": [4, 8], "out_features": 16}},
             "training": {"sampling": {"strategy": "round_robin"}}},
            {"label": "school", "data": {"dataset": "school"},
             "model": {"trunk": "mlp", "trunk_options": {"hidden": [8]}},
             "training": {"epochs": 1, "batch_size": 256},
             "summary_metrics": ["pooled_explained_variance"]},
        ],
        "balancers": [{"name": "equal"}],
        "seeds": [0],
        "stl": False,
        "tuned_equal": {"enabled": False},
    }
    suite_file = tmp_path / "tiny.yaml"
    suite_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "results"
    result = CliRunner().invoke(app, ["bench", "run", str(suite_file), "--out", str(out)])
    assert result.exit_code == 0, result.output

    cell = json.loads((out / CELLS_DIR / "mm2__hard_sharing__equal__seed0.json").read_text())
    config = ExperimentConfig.model_validate({**cell["config"], "output_dir": str(tmp_path / "runs")})
    assert config.training.sampling is not None and config.training.sampling.strategy == "round_robin"
    (run,) = run_experiment(config, tmp_path / "train", log=lambda _: None).runs
    for task in ("left", "right"):
        assert cell["test"][task]["loss"] == pytest.approx(run.test[task]["loss"], rel=1e-6), task

    school = json.loads((out / CELLS_DIR / "school__hard_sharing__equal__seed0.json").read_text())
    ev = school["summary"]["test"]["pooled_explained_variance"]
    config = ExperimentConfig.model_validate({**school["config"], "output_dir": str(tmp_path / "r")})
    (run,) = run_experiment(config, tmp_path / "train_school", log=lambda _: None).runs
    assert ev == pytest.approx(run.summary["test"]["pooled_explained_variance"], rel=1e-6)
    assert school["summary"]["val"]["pooled_explained_variance"] < 100

    md = tmp_path / "tiny.md"
    assert CliRunner().invoke(app, ["bench", "report", str(out), "--out", str(md)]).exit_code == 0
    assert "test pooled_explained_variance ↑" in md.read_text()


def test_data_is_loaded_once_per_data_section_and_split(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The pairs of one data set share its load; with ``split_seed`` fixed, so do the seeds.

    (Each pair used to load its data again for every seed: with the quick suite's fixed split,
    two architectures and two seeds, four loads of one data set.) A split that follows the seed
    is still loaded per seed, and only the last data set is held.
    """
    from polytask_bench.suite import SuiteRunSummary, _Context, _Pair

    import polytask.experiment as experiment

    calls: list[int] = []
    real = experiment.load_sources

    def counting(config, seed):  # type: ignore[no-untyped-def]
        calls.append(seed)
        return real(config, seed)

    monkeypatch.setattr(experiment, "load_sources", counting)
    raw = _quick_raw()
    raw["architectures"].append({"name": "mmoe", "options": {"num_experts": 2}})
    suite = parse_suite(raw)
    ctx = _Context(suite, tmp_path, "", None, None, lambda _: None, SuiteRunSummary(tmp_path))
    pairs = [_Pair(ctx, suite.datasets[0], arch) for arch in suite.architectures]
    seen = [pair.splits(seed) for pair in pairs for seed in (0, 1)]
    assert calls == [0] and all(s is seen[0] for s in seen)

    del raw["datasets"][0]["data"]["split_seed"]  # the split now follows the run seed
    suite = parse_suite(raw)
    ctx = _Context(suite, tmp_path, "", None, None, lambda _: None, SuiteRunSummary(tmp_path))
    calls.clear()
    pairs = [_Pair(ctx, suite.datasets[0], arch) for arch in suite.architectures]
    first, second = pairs[0].splits(0), pairs[1].splits(0)
    assert first is second and calls == [0]
    assert pairs[1].splits(1) is not first and calls == [0, 1] and len(ctx.data) == 1

    # run_suite goes seed by seed over the architectures: one load per (data set, seed)
    raw.update(stl=False, tuned_equal={"enabled": False}, libmtl=None,
               balancers=[{"name": "equal"}])
    calls.clear()
    summary = run_suite(parse_suite(raw), tmp_path / "run", log=lambda _: None)
    assert len(summary.ran) == 4 and not summary.failed
    assert calls == [0, 1]


def test_expected_cells_follow_only() -> None:
    suite = load_suite(QUICK)
    full = expected_cells(suite)
    part = expected_cells(suite, parse_only(["balancer=libmtl-equal", "seed=1"]))
    # the LibMTL cell brings its seed's single-task baselines, not the other methods or the grid
    assert part == ["multimnist__hard_sharing__stl__seed1",
                    "multimnist__hard_sharing__libmtl-equal__seed1"]
    assert set(part) < set(full) and "multimnist__hard_sharing__libmtl-equal__seed0" in full
    tuned = expected_cells(suite, parse_only(["balancer=equal_tuned", "seed=0"]))
    assert sum("equal_grid" in c for c in tuned) == 2 and "multimnist__hard_sharing__upgrad__seed0" not in tuned
