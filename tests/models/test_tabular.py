"""The ``tabular`` trunk: embedding tables per categorical column, under every architecture.

Why: the embedding lookup happens before the trunk's first stage, and the stage-wise
architectures copy a trunk's pre-processing (``InputPrep``) apart from its stages. These tests pin
down where the embedding tables end up in each architecture (one shared set, or one set per
expert), that every table is owned by exactly the modules the balancers think (shared or one
task's), that all of them learn, and that the trunk trains through the real loop on Census codes
with its cardinalities threaded from the loader's preprocessing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from polytask.config import parse_config
from polytask.data import load_census
from polytask.experiment import build_model, run_experiment
from polytask.inference import load_run
from polytask.models import create_model, create_trunk
from polytask.models.mmoe import reinitialize, staged_parts
from polytask.models.tabular import CategoryEmbedding, TabularTrunk, embedding_width
from polytask.tasks import Task

pytestmark = pytest.mark.usefixtures("single_thread")

CARDS = [3, 5, 53]
TASKS = [Task("a", "binary"), Task("b", "regression")]


def _inputs(n: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    codes = torch.stack([torch.randint(0, c, (n,), generator=g) for c in CARDS], dim=1)
    return {"numeric": torch.randn(n, 4, generator=g), "categorical": codes}


def _trunk(**options: object) -> TabularTrunk:
    trunk = create_trunk("tabular", cardinalities=CARDS, example_input=_inputs(), hidden=[16, 8], **options)
    assert isinstance(trunk, TabularTrunk)
    return trunk


def _tables(module: nn.Module) -> list[CategoryEmbedding]:
    return [m for m in module.modules() if isinstance(m, CategoryEmbedding)]


def test_width_rule_and_shapes() -> None:
    assert [embedding_width(n) for n in (2, 3, 5, 53, 10**6)] == [2, 3, 4, 15, 50]
    trunk = _trunk()
    assert trunk.numeric_features == 4  # read off the example
    assert trunk.embedding_widths == [3, 4, 15] and trunk.in_features == 4 + 22
    out = trunk(_inputs())
    assert out.shape == (6, 8) and trunk.feature_spec.channels == 8
    feats = trunk.forward_features(_inputs())
    assert [f.shape[1] for f in feats] == [16, 8] and torch.equal(feats[-1], out)
    fixed = _trunk(embedding_dim=6)
    assert fixed.embedding_widths == [6, 6, 6]


def test_unknown_row_is_zero_after_any_initialisation_and_learns() -> None:
    trunk = _trunk()
    for table in _tables(trunk):
        assert torch.equal(table.weight[0], torch.zeros_like(table.weight[0]))
        assert table.weight[1:].abs().sum() > 0
    with torch.no_grad():
        for table in _tables(trunk):
            table.weight.add_(1.0)
    reinitialize(trunk)  # what the mixture architectures do to experts 1..E-1
    assert all(float(t.weight.detach()[0].abs().sum()) == 0.0 for t in _tables(trunk))
    x = _inputs()
    x["categorical"][:, 0] = 0  # missing cells in training: the unknown row must get a gradient
    trunk(x).sum().backward()
    assert float(_tables(trunk)[0].weight.grad[0].abs().sum()) > 0  # type: ignore[union-attr]


def test_bad_inputs_are_named() -> None:
    trunk = _trunk()
    with pytest.raises(TypeError, match="categorical_encoding='embedding'"):
        trunk(torch.zeros(2, 26))
    with pytest.raises(KeyError, match="'categorical'"):
        trunk({"numeric": torch.zeros(2, 4)})
    bad = _inputs(2)
    bad["categorical"][1, 2] = 53
    with pytest.raises(ValueError, match=r"column 2 has code 53 at batch row 1, outside 0\.\.52"):
        trunk(bad)
    with pytest.raises(ValueError, match="needs the cardinalities"):
        create_trunk("tabular", example_input=_inputs())
    with pytest.raises(ValueError, match="categorical_encoding: embedding"):
        create_trunk("tabular", cardinalities=CARDS, example_input=torch.zeros(2, 26))
    with pytest.raises(ValueError, match="3 cardinalities for 2 categorical columns"):
        create_trunk("tabular", cardinalities=CARDS, example_input={**_inputs(), "categorical": torch.zeros(6, 2, dtype=torch.long)})


def test_stage_contract_puts_the_tables_in_the_input_prep() -> None:
    trunk = _trunk()
    prep, stages, feats = staged_parts(trunk, "test", _inputs())
    assert len(_tables(prep)) == len(CARDS) and not _tables(stages)
    assert prep(_inputs()).shape == (6, trunk.in_features)
    assert len(feats) == 2


@pytest.mark.parametrize(
    ("arch", "options", "where"),
    [
        # one trunk: one set of tables, shared
        ("hard_sharing", {}, {"trunk": 1}),
        ("mtan", {}, {"trunk": 1}),
        # stage-wise: the shared InputPrep holds the only set; per-task columns copy stages alone
        ("cross_stitch", {}, {"prep": 1, "columns": 0}),
        # the gate feature extractor (gate_input auto -> features for named inputs) has its own set
        ("ple", {"num_levels": 2}, {"prep": 1, "shared_experts": 0, "task_experts": 0, "gate_features": 1}),
        # whole-trunk experts: one set per expert, plus the gates' extractor
        ("mmoe", {"num_experts": 3}, {"experts": 3, "gate_features": 1}),
        ("cgc", {"num_shared_experts": 2, "num_task_experts": 1}, {"shared_experts": 2, "task_experts": 2, "gate_features": 1}),
    ],
)
def test_where_the_embedding_tables_live(arch: str, options: dict[str, object], where: dict[str, int]) -> None:
    trunk = _trunk()
    x = _inputs()
    model = create_model(arch, trunk, TASKS, example_input=x, **options)  # checks ownership
    per_set = len(CARDS)
    for name, sets in where.items():
        assert len(_tables(getattr(model, name))) == sets * per_set, name
    assert len(_tables(model)) == sum(where.values()) * per_set  # nowhere else
    shared = {id(p) for m in model.shared_modules() for p in m.parameters()}
    for table in _tables(model):
        owner = "shared" if id(table.weight) in shared else [
            t.name for t in TASKS if any(table.weight is p for m in model.task_modules(t.name) for p in m.parameters())
        ]
        assert owner == "shared" or len(owner) == 1
    out = model(x)
    sum(o.sum() for o in out.values()).backward()
    for table in _tables(model):  # every table is used by the forward pass and learns
        assert table.weight.grad is not None and float(table.weight.grad[1:].abs().sum()) > 0
    in_model = {id(t) for t in _tables(model)}  # hard sharing trains the trunk it is given
    assert all(t.weight.grad is None for t in _tables(trunk) if id(t) not in in_model)


def test_experts_have_distinct_tables() -> None:
    model = create_model("mmoe", _trunk(), TASKS, example_input=_inputs(), num_experts=2)
    first, second = (_tables(e)[2].weight for e in model.experts)  # type: ignore[attr-defined]
    assert first is not second and not torch.equal(first, second)  # expert 1 re-initialised


def test_cardinalities_come_from_the_data_info() -> None:
    config = parse_config(
        {"data": {"dataset": "census"}, "model": {"trunk": "tabular", "trunk_options": {"hidden": [8]}}}
    )
    model = build_model(config, TASKS, _inputs(), data_info={"cardinalities": CARDS})
    assert [t.num_embeddings for t in _tables(model)] == CARDS
    with pytest.raises(ValueError, match="needs the cardinalities"):
        build_model(config, TASKS, _inputs())


CENSUS = {
    "name": "census-embedding",
    "data": {"dataset": "census", "options": {"max_rows": 600, "categorical_encoding": "embedding"}},
    "models": [
        {"architecture": "hard_sharing", "trunk": "tabular", "trunk_options": {"hidden": [8]}},
        {"architecture": "mmoe", "trunk": "tabular", "trunk_options": {"hidden": [8]}, "options": {"num_experts": 2}},
        {"architecture": "ple", "trunk": "tabular", "trunk_options": {"hidden": [8, 8]}, "options": {"num_levels": 2}},
    ],
    "training": {"epochs": 1, "batch_size": 64, "progress": False, "tensorboard": False, "device": "cpu"},
    "baselines": {"stl": False},
}  # fmt: skip


def test_census_trains_under_hard_sharing_mmoe_and_ple(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    splits = load_census(max_rows=600, categorical_encoding="embedding")
    result = run_experiment(parse_config(CENSUS), tmp_path / "out", log=lambda _: None, report=False)
    assert [r.label for r in result.runs] == ["hard_sharing", "mmoe", "ple"]
    for run in result.runs:
        for task in ("income", "marital"):
            assert 0.0 <= run.test[task]["auroc"] <= 1.0
    loaded = load_run(result.runs[1].run_dir)  # rebuilt with the data's cardinalities
    metrics = loaded.evaluate(splits)
    assert metrics["test"]["marital"]["auroc"] == pytest.approx(result.runs[1].test["marital"]["auroc"])
    assert loaded.model is not None
    cards = splits.info["cardinalities"]
    assert [t.num_embeddings for t in _tables(loaded.model.experts[0])] == cards  # type: ignore[union-attr]
