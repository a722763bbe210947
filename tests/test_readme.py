"""The README's Python example runs as written, and the README opens with the set-up commands."""

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


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(block.group(1), str(README), "exec"), namespace)
    result = namespace["result"]
    assert 0.0 <= result.test["left"]["accuracy"] <= 1.0  # type: ignore[attr-defined]
    assert (tmp_path / "runs" / "readme-example" / "results.json").exists()
    assert os.listdir(tmp_path / "runs" / "readme-example" / "checkpoints")
