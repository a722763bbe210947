"""`polytask train --resume` after a real kill -9 ends bit-identical to an uninterrupted run.

Why a subprocess and SIGKILL rather than ``fit(stop_after_epoch=...)``: a kill gives the process
no chance to flush or clean up, which is what a user's crash or a pre-empted job does; only
checkpoints written atomically before it survive. The run directory of the killed command must
then be refused without ``--resume`` (so that nothing is silently started over) and continued
with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from polytask.cli import app
from polytask.config import load_config
from polytask.experiment import run_experiment

EPOCHS = 6
RUN = "uncertainty-seed0"


def _command(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "polytask"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-c", "from polytask.cli import main; main()", *args]


@pytest.fixture
def experiment(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A synthetic two-task table and a config whose epochs take a fraction of a second each."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 8))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(8)])
    frame["y_reg"] = 2 * x[:, 0] + x[:, 1] ** 2 + rng.normal(scale=0.3, size=len(x))
    frame["y_bin"] = (x[:, 2] + x[:, 3] > 0).astype(int)
    frame.to_csv(tmp_path / "table.csv", index=False)
    config = {
        "name": "resume",
        "data": {"table": str(tmp_path / "table.csv"), "targets": ["y_reg", "y_bin"]},
        "model": {"trunk": "mlp", "trunk_options": {"hidden": [128, 128]}},
        "balancers": [{"name": "uncertainty"}],  # learnable weights: their state must resume too
        "training": {
            "epochs": EPOCHS, "batch_size": 16, "lr": 1e-3, "progress": False,
            "tensorboard": False,
        },
        "baselines": {"stl": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
        "POLYTASK_CACHE": str(tmp_path / "cache"),
    }
    return path, env


def _checkpoint_epoch(path: Path) -> int:
    """Epoch of ``last.pt``, or -1 while there is none (it is replaced atomically, never torn)."""
    if not path.exists():
        return -1
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def _kill_after_epoch(proc: subprocess.Popen[bytes], last: Path, epoch: int) -> None:
    """SIGKILL ``proc`` once ``last`` holds ``epoch`` or later."""
    deadline = time.monotonic() + 120
    try:
        while _checkpoint_epoch(last) < epoch:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"training ended (code {proc.returncode}) before the kill:\n{err}")
            if time.monotonic() > deadline:
                pytest.fail(f"no checkpoint of epoch {epoch} after 120 s")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def test_train_resumes_after_kill_9_bit_identically(
    experiment: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    config, env = experiment
    full, killed = tmp_path / "full", tmp_path / "killed"
    last = killed / RUN / "checkpoints" / "last.pt"
    # The uninterrupted reference and the run to kill train side by side (one thread each).
    reference = subprocess.Popen(_command("train", str(config), "--out", str(full)), env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    victim = subprocess.Popen(_command("train", str(config), "--out", str(killed)), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _kill_after_epoch(victim, last, epoch=1)
    stopped_at = _checkpoint_epoch(last)
    assert 1 <= stopped_at < EPOCHS - 1, stopped_at
    assert not (killed / RUN / "results.json").exists()

    # Without --resume the run directory is refused, by name, and left as it is.
    refused = CliRunner().invoke(app, ["train", str(config), "--out", str(killed)])
    assert refused.exit_code == 2
    assert str(killed / RUN) in refused.output and "--resume" in refused.output
    assert _checkpoint_epoch(last) == stopped_at

    resumed = subprocess.run(_command("train", str(config), "--out", str(killed), "--resume"),
                             env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {RUN.removesuffix('-seed0')}" in resumed.stderr
    _, reference_err = reference.communicate(timeout=120)
    assert reference.returncode == 0, reference_err.decode()

    a = json.loads((full / RUN / "results.json").read_text())
    b = json.loads((killed / RUN / "results.json").read_text())
    for key in ("val", "test", "best_epoch", "epochs", "delta_m"):
        assert a[key] == b[key], key
    for name in ("last.pt", "best.pt"):
        state_a = torch.load(full / RUN / "checkpoints" / name, weights_only=True)["model"]
        state_b = torch.load(killed / RUN / "checkpoints" / name, weights_only=True)["model"]
        assert state_a.keys() == state_b.keys()
        for key, tensor in state_a.items():
            assert torch.equal(tensor, state_b[key]), (name, key)

    # A finished run is read back, not trained again.
    before = (killed / RUN / "results.json").read_text()
    messages: list[str] = []
    result = run_experiment(load_config(config), killed, log=messages.append, resume=True,
                            report=False)
    assert any("already finished" in m for m in messages), messages
    assert not any(m.startswith(("training", "resuming")) for m in messages), messages
    assert result.runs[0].test == a["test"]
    assert (killed / RUN / "results.json").read_text() == before


def test_fit_refuses_existing_runs_and_resumes(
    experiment: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``polytask fit`` shares the guard: refused without a flag, read back with --resume."""
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    table, out = tmp_path / "table.csv", tmp_path / "fit"
    args = ["fit", str(table), "-t", "y_reg", "-t", "y_bin", "--epochs", "1", "--no-stl",
            "--hidden", "8", "--out", str(out)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and str(out / "equal-seed0") in refused.output
    both = CliRunner().invoke(app, [*args, "--resume", "--overwrite"])
    assert both.exit_code == 2 and "exclude each other" in both.output
    resumed = CliRunner().invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0 and "already finished" in resumed.output
    again = CliRunner().invoke(app, [*args, "--overwrite"])
    assert again.exit_code == 0 and "overwriting the run in" in again.output
