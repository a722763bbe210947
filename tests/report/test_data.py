"""Reading run directories: optional files (relations, analysis, grouping), and single-task runs.

The single-task case is reproduced with a real training: a single-task baseline directory is a
cached copy with ``stl_key.json`` (its configuration) and no ``config.yaml``, and a run trained by
``polytask.training.fit`` directly has no configuration file at all. The report used to flag both
with a warning box ("Missing from ...: config.yaml").
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from polytask.report import render_report
from polytask.report.data import DENSE_SAMPLES_FILE, STL_KEY_FILE, load_run


def notes(text: str) -> list[str]:
    return [html.unescape(n) for n in re.findall(r'<p class="note">(.*?)</p>', text, re.S)]


def test_dense_samples_file_name_matches_its_writer() -> None:
    from polytask.evaluation import dense_samples

    assert DENSE_SAMPLES_FILE == dense_samples.DENSE_SAMPLES_FILE


def test_relations_average_each_measure_over_epochs(tmp_path: Path, files: SimpleNamespace) -> None:
    run = files.write_run(tmp_path / "run", [files.LEFT, files.DEPTH], experts=False)
    payload = files.relations_payload(["left", "depth"], lookahead_affinity=True)
    # an epoch in which the measure was not recorded (null) does not count towards the mean
    payload["measures"]["grad_cosine"]["per_epoch"].append([[None, None], [None, None]])
    (run / "relations.json").write_text(json.dumps(payload))
    relations = load_run(run).relations
    assert relations is not None and relations.error is None
    found = relations.value
    expected = np.mean(payload["measures"]["grad_cosine"]["per_epoch"][:3], axis=0)
    assert np.allclose(found.matrices["grad_cosine"], expected)
    assert found.epochs["grad_cosine"] == 3
    assert set(found.matrices) == {"grad_cosine", "conflict_frequency"}
    assert found.absent == ["lookahead_affinity", "lookahead_affinity_first_order"]

    text = render_report(run)
    section = text.split('id="relations"', 1)[1]
    assert "Gradient cosine similarity, mean over 3 epoch(s)" in section
    assert "Not recorded: lookahead_affinity, lookahead_affinity_first_order." in section
    assert "Loss ratio" in section
    assert not notes(section)


def test_malformed_relations_is_a_note_naming_file_and_key(
    tmp_path: Path, files: SimpleNamespace
) -> None:
    run = files.write_run(tmp_path / "run", [files.LEFT, files.DEPTH], experts=False)
    payload = files.relations_payload(["left", "depth"])
    payload["measures"]["grad_cosine"]["per_epoch"] = [[[1.0, 0.5, 0.1], [0.5, 1.0, 0.2]]]
    (run / "relations.json").write_text(json.dumps(payload))
    text = render_report(run)
    (note,) = notes(text)
    assert "relations.json" in note and "measures.grad_cosine.per_epoch" in note
    assert "Losses" in text  # the rest of the report is still there


def test_analysis_clusters_and_order_the_heatmaps(
    tmp_path: Path, files: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = ["a", "b", "c"]
    for t in tasks:
        monkeypatch.setitem(files.TASK_METRICS, t, ("mae", "mse"))
    task_defs = [{**files.DEPTH, "name": t} for t in tasks]
    run = files.write_run(tmp_path / "run", task_defs, experts=False)
    (run / "relations.json").write_text(json.dumps(files.relations_payload(tasks)))
    analysis = {
        "version": 1,
        "tasks": tasks,
        "measures": {
            "grad_cosine": {
                "clustering": {
                    "order": ["c", "a", "b"],
                    "clusters": [["c"], ["a", "b"]],
                    "threshold": 0.0,
                }
            },
            "lookahead_affinity": {"clustering": {"error": "fewer than 2 recorded epochs"}},
        },
        "warnings": ["pair (a, c) has no evidence"],
    }
    (run / "analysis.json").write_text(json.dumps(analysis))
    text = render_report(run, static=False)
    section = text.split('id="relations"', 1)[1].split('id="warnings"', 1)[0]
    assert "{c}  {a, b}" in section
    assert "no clustering: fewer than 2 recorded epochs" in section
    assert "pair (a, c) has no evidence" in section
    cosine = re.search(r'"title":\{"text":"Gradient cosine similarity[^"]*".*?\}', section)
    assert cosine is not None
    data = json.loads(
        re.findall(r'class="plot-data" data-target="[^"]+">(.*?)</script>', section, re.S)[0]
    )
    assert data["data"][0]["y"] == ["c", "a", "b"]  # rows in the clustering's order
    assert data["data"][0]["zmid"] == 0  # cosine: diverging around 0


def test_grouping_table_marks_the_chosen_candidate(tmp_path: Path, files: SimpleNamespace) -> None:
    experiment = files.write_experiment(tmp_path / "demo")
    grouping = {
        "tasks": ["left", "depth"],
        "candidates": [
            {
                "groups": [["left", "depth"]],
                "score": 0.4,
                "val_delta_m": 1.25,
                "val_delta_m_std": 0.5,
                "time_per_epoch_s": 2.0,
            },
            {
                "groups": [["left"], ["depth"]],
                "score": 0.1,
                "val_delta_m": None,
                "val_delta_m_std": None,
                "time_per_epoch_s": None,
            },
        ],
        "chosen": 0,
    }
    (experiment / "grouping.json").write_text(json.dumps(grouping))
    text = render_report(experiment, static=False)
    section = text.split('id="grouping"', 1)[1].split("</table>", 1)[0].split("<tbody>")[1]
    rows = re.findall(r"<tr( class=\"marked\")?>(.*?)</tr>", section, re.S)
    assert [bool(marked) for marked, _ in rows] == [True, False]
    assert "{left, depth}" in rows[0][1] and "+1.25% ± 0.50" in rows[0][1]
    assert "{left} | {depth}" in rows[1][1]

    grouping["chosen"] = 5
    (experiment / "grouping.json").write_text(json.dumps(grouping))
    (note,) = [n for n in notes(render_report(experiment)) if "grouping" in n]
    assert "grouping.json" in note and "'chosen'" in note


def test_single_task_runs_report_without_a_warning(tmp_path: Path) -> None:
    """A real one-target fit: the run and its single-task baseline, each reported cleanly."""
    from polytask import MultiTaskLearner

    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 4)).astype("float32")
    y = {"spend": 2 * x[:, 0] + x[:, 1]}
    learner = MultiTaskLearner(epochs=1, batch_size=32, out_dir=tmp_path / "fit").fit(x, y)
    experiment = learner.out_dir_
    assert experiment is not None
    baseline = next(experiment.glob("stl-*"))
    assert (baseline / STL_KEY_FILE).is_file() and not (baseline / "config.yaml").exists()
    for directory in (experiment, baseline, *experiment.glob("equal-*")):
        text = render_report(directory)
        assert notes(text) == [], (directory, notes(text))
    baseline_text = render_report(baseline)
    assert f"{STL_KEY_FILE} (the single-task baseline" in baseline_text
    assert ".partial-" not in baseline_text.split("</h1>", 1)[0]  # named after its directory
