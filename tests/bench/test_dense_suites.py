"""The GPU suites benchmarks/nyuv2.yaml and cityscapes.yaml are valid and fit their data sets.

They need a GPU and gigabytes of files, so they are not run here; what can be checked without
them is checked: the suite parses, every component name and option of every (data set,
architecture) pair is known (the check `polytask train` runs before training), and the pair's model,
built as the suite builds it, reads a tiny copy of the data set's layout and gives outputs of the
targets' shapes (on the CPU, with the suite's trunk and architecture).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from polytask_bench.suite import expected_cells, load_suite

from polytask.experiment import build_model, load_sources
from polytask.validation import validate_components

ROOT = Path(__file__).resolve().parents[2]
SIZE = (16, 32)
LAYOUT = {
    "nyuv2": {"label": 13, "depth": 1, "normal": 3},
    "cityscapes": {"label_7": 7, "depth": 1},
}


def _write(root: Path, folders: dict[str, int]) -> None:
    """A few random arrays per split in MTAN's layout (``label*``: classes; others: channels)."""
    rng = np.random.default_rng(0)
    h, w = SIZE
    for split, n in (("train", 6), ("val", 2)):
        for folder in ("image", *folders):
            (root / split / folder).mkdir(parents=True)
        for i in range(n):
            np.save(root / split / "image" / f"{i}.npy", rng.random((h, w, 3)).astype(np.float32))
            for folder, k in folders.items():
                if folder.startswith("label"):
                    a = rng.integers(-1, k, (h, w)).astype(np.float32)
                else:
                    a = rng.normal(size=(h, w, k)).astype(np.float32)
                    a = np.abs(a) if k == 1 else a / np.linalg.norm(a, axis=-1, keepdims=True)
                np.save(root / split / folder / f"{i}.npy", a)


@pytest.mark.parametrize("name", sorted(LAYOUT))
def test_gpu_suite_is_valid_and_its_models_read_the_layout(name: str, tmp_path: Path) -> None:
    suite = load_suite(ROOT / "benchmarks" / f"{name}.yaml")
    assert suite.base.training.device == "cuda" and suite.base.training.epochs == 200
    assert suite.seeds == [0, 1, 2]
    cells = set(expected_cells(suite))
    for arch in ("hard_sharing", "mtan"):
        for method in ("stl", "equal", "equal_tuned", "upgrad", "nash_mtl", "famo"):
            for seed in (0, 1, 2):
                assert f"{name}__{arch}__{method}__seed{seed}" in cells
    root = tmp_path / name
    _write(root, LAYOUT[name])
    for ds in suite.datasets:
        assert "path" not in ds.data.options  # the data path comes from the environment
        for arch in suite.architectures:
            config = suite.experiment(ds, arch)
            validate_components(config)
            local = config.model_copy(deep=True)
            local.data.options.update(path=str(root), size=list(SIZE), num_workers=0,
                                      pin_memory=False)
            splits, _ = load_sources(local, seed=0)
            torch.manual_seed(0)
            model = build_model(local, splits.tasks, splits.train.example())
            x, y = next(splits.train.batches(2))
            with torch.no_grad():
                out = model(x)
            for task in splits.tasks:
                assert out[task.name].shape[-2:] == y[task.name].shape[-2:], (arch.name, task.name)
                per, count = task.sample_losses(out[task.name], y[task.name])
                assert count > 0 and torch.isfinite(per).all()
