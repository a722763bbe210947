"""The dense-sample figure draws every map task, one-channel depth maps included."""

from __future__ import annotations

import numpy as np

from polytask.report import plots


def test_depth_maps_with_a_channel_axis_are_drawn_not_skipped() -> None:
    rng = np.random.default_rng(0)
    tasks = {
        "segmentation": {
            "kind": "segmentation", "num_classes": 3,
            "truth": rng.integers(0, 3, (2, 8, 8)), "pred": rng.integers(0, 3, (2, 8, 8)),
        },
        "depth": {
            "kind": "depth", "truth": rng.random((2, 1, 8, 8)), "pred": rng.random((2, 1, 8, 8)),
        },
    }
    png, skipped = plots.dense_samples(rng.random((2, 8, 8)), tasks, "samples")
    assert skipped == {}
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_map_of_another_layout_is_skipped_with_its_shape() -> None:
    tasks = {"odd": {"kind": "depth", "truth": np.zeros((2, 2, 8, 8)), "pred": np.zeros((2, 2, 8, 8))}}
    _, skipped = plots.dense_samples(None, tasks, "samples")
    assert "[2, 2, 8, 8]" in skipped["odd"]
