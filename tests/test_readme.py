"""The README's Python examples run as written, and the README opens with the set-up commands."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_opens_with_demo_and_test_commands() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README.read_text(), re.S)
    assert first_block is not None
    lines = [ln for ln in first_block.group(1).splitlines() if ln.strip()]
    assert lines[0].startswith("bash scripts/demo.sh") and lines[1].startswith("bash scripts/test.sh")
    ci = (README.parent / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci


def test_readme_python_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Python block of the README, in order: the MultiTaskLearner path, then the pieces."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    learner = namespace["learner"]
    assert set(learner.results_["test"]) == {"clicked", "spend"}  # type: ignore[attr-defined]
    assert learner.delta_m_ is not None  # type: ignore[attr-defined]
    assert (tmp_path / "my-model" / "learner.json").exists()
    result = namespace["result"]
    assert 0.0 <= result.test["left"]["accuracy"] <= 1.0  # type: ignore[attr-defined]
    assert (tmp_path / "runs" / "readme-example" / "results.json").exists()
    assert os.listdir(tmp_path / "runs" / "readme-example" / "checkpoints")
