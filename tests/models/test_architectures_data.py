"""Every architecture trains on small slices of the real data sets; several data sets and several
architectures are reachable from a config.

Why real slices: the synthetic tests of ``test_architectures.py`` prove the contracts; these prove
that each architecture meets the data the library ships loaders for (28x28 digit images with two
10-class tasks, 2048-bit fingerprints with sparse binary assays, one-hot census rows) through the
real training loop, with equal weights and with a Gramian method (UPGrad). The slices are tiny
(a few dozen rows, one epoch of two steps): this checks wiring, not accuracy.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from polytask.balancing import create_balancer
from polytask.config import ConfigError, load_config, parse_config
from polytask.data import load_census, load_moleculenet, load_multimnist
from polytask.data.base import MultiTaskData, Splits
from polytask.data.sampling import Temperature
from polytask.experiment import (
    load_sources,
    run_experiment,
    single_task_sources,
    train_source,
)
from polytask.inference import load_run
from polytask.models import MLP, SmallCNN, create_model
from polytask.training import TrainSettings, fit

ARCHS = ["hard_sharing", "mmoe", "cgc", "ple", "dselect_k", "cross_stitch", "mtan"]
TOX_TASKS = ["NR-AhR", "SR-ARE", "SR-MMP"]  # three assays with many positives (12-16%)


# Tiny tensors: one intra-op thread is faster, and immune to a busy machine.
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def _no_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """The HTML report (matplotlib) is tested in tests/report; here it would dominate the time."""
    import polytask.report

    monkeypatch.setattr(polytask.report, "write_report", lambda directory: Path(directory))


def _slice(splits: Splits, n_train: int, n_eval: int) -> Splits:
    def head(data: MultiTaskData, n: int) -> MultiTaskData:
        return data.subset(torch.arange(min(n, len(data))))

    return Splits(
        head(splits.train, n_train), head(splits.val, n_eval), head(splits.test, n_eval),
        info=splits.info,
    )


@pytest.fixture(scope="module")
def slices(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Splits]:
    import os

    os.environ.setdefault("POLYTASK_CACHE", str(tmp_path_factory.mktemp("cache")))
    return {
        "multimnist": _slice(load_multimnist(source="idx", n=80, seed=0), 32, 12),
        "tox21": _slice(load_moleculenet("tox21", max_rows=400, tasks=TOX_TASKS), 32, 40),
        "census": _slice(load_census(max_rows=1200, seed=0), 32, 180),
    }


def _trunk(dataset: str, example: torch.Tensor) -> torch.nn.Module:
    if dataset == "multimnist":
        return SmallCNN(channels=(4, 6), out_features=12)
    return MLP(int(example[0].numel()), (16, 8))


@pytest.mark.parametrize("balancer", ["equal", "upgrad"])
@pytest.mark.parametrize("dataset", ["multimnist", "tox21", "census"])
@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_trains_on_real_slice(
    slices: dict[str, Splits], arch: str, dataset: str, balancer: str, tmp_path: Path
) -> None:
    splits = slices[dataset]
    torch.manual_seed(0)
    x = splits.train.inputs[:2]
    options = {"num_experts": 2} if arch in ("mmoe", "dselect_k") else {}
    model = create_model(arch, _trunk(dataset, x), splits.tasks, **options)
    before = [p.detach().clone() for p in model.parameters()]
    names = [t.name for t in splits.tasks]
    settings = TrainSettings(
        epochs=1, batch_size=16, lr=1e-2, seed=0, device="cpu", progress=False,
        tensorboard=False, selection="val_loss",
    )
    result = fit(model, splits, create_balancer(balancer, names), settings, tmp_path)
    assert set(result.test) == set(names)
    for task in splits.tasks:
        assert torch.isfinite(torch.tensor(result.val[task.name]["loss"])), task.name
    changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert changed > 0, f"{arch} on {dataset}: no parameter moved"


# ------------------------------------------------------------------ several data sets by config
def _yaml(tmp_path: Path, raw: dict[str, object], first: str = "") -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(first + yaml.safe_dump(raw))
    return path


TWO_SOURCES = {
    "name": "two",
    "data": {"dataset": "multimnist_two_sources", "options": {"source": "idx", "n": 60}},
    "model": {"trunk": "small_cnn", "trunk_options": {"channels": [4, 6], "out_features": 12}},
    "training": {
        "epochs": 1, "batch_size": 8, "progress": False, "tensorboard": False, "device": "cpu",
        "sampling": {"strategy": "temperature", "temperature": 3.0},
    },
}


def test_sampling_strategy_comes_from_yaml(data_dir: Path, tmp_path: Path) -> None:
    config = load_config(_yaml(tmp_path, TWO_SOURCES))
    splits, sources = load_sources(config, seed=0)
    assert sources is not None and sources.names == ["left", "right"]
    source = train_source(config, sources)
    assert source is not None and isinstance(source.sampler, Temperature)
    assert source.sampler.temperature == 3.0
    # validation / test keep both labels; the stacked training rows carry one label each
    assert splits.val.task_names == ["left", "right"]
    left = splits.tasks[0]
    assert single_task_sources(sources, left).names == ["left"]
    short = parse_config({**TWO_SOURCES, "training": {**TWO_SOURCES["training"], "sampling": "all"}})
    assert short.training.sampling is not None and short.training.sampling.strategy == "all"


@pytest.mark.parametrize(
    ("sampling", "match"),
    [
        ({"strategy": "uniformly"}, r"training\.sampling\.strategy: Input should be 'all'"),
        ({"strategy": "proportional", "temperature": 2}, r"training\.sampling: .*temperature"),
        ({"strategy": "all", "batch_sizes": {"left": 0}}, r"training\.sampling\.batch_sizes"),
    ],
)
def test_bad_sampling_is_rejected_with_its_key_path(
    tmp_path: Path, sampling: dict[str, object], match: str
) -> None:
    raw = {**TWO_SOURCES, "training": {**TWO_SOURCES["training"], "sampling": sampling}}
    with pytest.raises(ConfigError, match=match):
        load_config(_yaml(tmp_path, raw))


def test_sampling_on_one_data_set_and_unknown_source_sizes_are_errors(
    data_dir: Path, tmp_path: Path
) -> None:
    single = parse_config({**TWO_SOURCES, "data": {"dataset": "multimnist", "options": {"n": 60}}})
    with pytest.raises(ConfigError, match=r"training\.sampling: the data is a single data set"):
        train_source(single, load_sources(single, 0)[1])
    sizes = {"strategy": "all", "batch_sizes": {"left": 4, "middle": 4}}
    wrong = parse_config({**TWO_SOURCES, "training": {**TWO_SOURCES["training"], "sampling": sizes}})
    with pytest.raises(ConfigError, match=r"training\.sampling: .*unknown \['middle'\]"):
        train_source(wrong, load_sources(wrong, 0)[1])


@pytest.mark.usefixtures("_no_report")
def test_two_source_experiment_trains_baselines_on_their_sources(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    config = parse_config({**TWO_SOURCES, "balancers": [{"name": "equal"}]})
    result = run_experiment(config, tmp_path / "out", log=lambda _: None)
    assert [r.label for r in result.runs] == ["stl:left", "stl:right", "equal"]
    _, sources = load_sources(config, 0)
    assert sources is not None
    for r, name in zip(result.runs[:2], ["left", "right"], strict=True):
        steps = (r.run_dir / "metrics.csv").read_text()
        assert "train,left" in steps if name == "left" else "train,right" in steps
    # the baseline of 'left' saw only the left source's rows: one step per 8 of its rows
    weights = (result.runs[0].run_dir / "weights.csv").read_text().strip().splitlines()[1:]
    assert len(weights) == -(-sources.sizes[0] // 8)


def test_data_sources_stack_registered_data_sets(data_dir: Path) -> None:
    config = parse_config(
        {
            "data": {
                "sources": [
                    {"dataset": "census", "name": "a", "tasks": ["income"],
                     "options": {"max_rows": 300}},
                    {"dataset": "census", "name": "b", "tasks": ["marital"],
                     "options": {"max_rows": 300}},
                ]
            },
            "training": {"sampling": {"strategy": "round_robin", "batch_sizes": {"a": 4, "b": 8}}},
        }
    )  # fmt: skip
    splits, sources = load_sources(config, 0)
    assert sources is not None and sources.names == ["a", "b"]
    assert sources.labelled_tasks("a") == ["income"] and sources.labelled_tasks("b") == ["marital"]
    assert len(splits.val) == 2 * 45  # each source's validation rows, each with its own label
    source = train_source(config, sources)
    assert source is not None and source.batch_size == {"a": 4, "b": 8}
    census = {"dataset": "census", "options": {"max_rows": 300}}
    bad = {"data": {"sources": [{**census, "tasks": ["wealth"]}]}}
    with pytest.raises(ConfigError, match=r"data\.sources\.0\.tasks: unknown task"):
        load_sources(parse_config(bad), 0)
    with pytest.raises(ConfigError, match=r"source names must be unique"):
        parse_config({"data": {"sources": [{"dataset": "census"}, {"dataset": "census"}]}})


# ------------------------------------------------------------------ several architectures
CENSUS_MODELS = {
    "name": "archs",
    "data": {"dataset": "census", "options": {"max_rows": 300}},
    "models": [
        {"label": "shared", "architecture": "hard_sharing", "trunk_options": {"hidden": [8]}},
        {"architecture": "mmoe", "trunk_options": {"hidden": [8]}, "options": {"num_experts": 2}},
    ],
    "baselines": {"model": "shared"},
    "training": {"epochs": 1, "batch_size": 64, "progress": False, "tensorboard": False,
                 "device": "cpu"},
}  # fmt: skip


@pytest.mark.usefixtures("_no_report")
def test_models_compare_architectures(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    config = parse_config(CENSUS_MODELS)
    assert [m.display for m in config.model_list] == ["shared", "mmoe"]
    assert config.baseline_model.architecture == "hard_sharing"
    result = run_experiment(config, tmp_path / "out", log=lambda _: None)
    assert [r.label for r in result.runs] == ["stl:income", "stl:marital", "shared", "mmoe"]
    loaded = load_run(result.runs[-1].run_dir)  # each run's config holds its own model
    assert loaded.config.model is not None and loaded.config.model.architecture == "mmoe"
    assert set(loaded.evaluate()["test"]) == {"income", "marital"}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"model": {"architecture": "mmoe"}}, "either 'model' or 'models'"),
        ({"baselines": {"model": "ple"}}, r"baselines.model 'ple' is not one of"),
        ({"models": [{"architecture": "mmoe"}, {"architecture": "mmoe"}]}, "labels must be unique"),
        ({"models": [{"architecture": "mmoe", "layers": 2}]}, r"models\.0\.layers: unknown key"),
    ],
)
def test_bad_model_lists_are_rejected(change: dict[str, object], match: str) -> None:
    raw = {**CENSUS_MODELS, **change}
    if "models" in change:
        raw["baselines"] = {}
    with pytest.raises(ConfigError, match=match):
        parse_config(raw)
