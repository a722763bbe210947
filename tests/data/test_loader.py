"""The Dataset path: any torch Dataset / IterableDataset / Hugging Face data set feeds training."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.utils.data import Dataset, IterableDataset

from polytask.balancing import create_balancer
from polytask.data.base import DataError, MultiTaskData, Splits, random_split
from polytask.data.batch import BatchError, MultiTaskCollate
from polytask.data.loader import DatasetData
from polytask.models import create_model, create_trunk
from polytask.tasks import Task
from polytask.training import TrainSettings, fit


def _arrays(n: int = 200) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    a = (x[:, 0] > 0).float()
    a[::5] = math.nan
    c = (x[:, 1] > 0).long() + (x[:, 2] > 0).long()
    c[::7] = -1
    r = 3 * x[:, 3] + 1
    return x, {"a": a, "c": c, "r": r}


def _tasks() -> list[Task]:
    return [Task("a", "binary"), Task("c", "multiclass", num_classes=3), Task("r", "regression")]


class PairDataset(Dataset):
    """Items as (inputs, {task: target}); missing labels are absent keys."""

    def __init__(self, x: torch.Tensor, y: dict[str, torch.Tensor]) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, object]]:
        targets: dict[str, object] = {"r": float(self.y["r"][i])}
        if not math.isnan(float(self.y["a"][i])):
            targets["a"] = float(self.y["a"][i])
        if int(self.y["c"][i]) >= 0:
            targets["c"] = int(self.y["c"][i])
        return self.x[i], targets


def test_collate_fills_missing_labels_with_each_tasks_marker() -> None:
    x, y = _arrays(10)
    ds = PairDataset(x, y)
    batch_x, batch_y = MultiTaskCollate(_tasks())([ds[i] for i in range(10)])
    assert torch.equal(batch_x, x)
    assert torch.equal(batch_y["c"], y["c"])
    assert torch.equal(torch.isnan(batch_y["a"]), torch.isnan(y["a"]))
    assert batch_y["c"].dtype == torch.long and batch_y["a"].dtype == torch.float32


def test_dataloader_batches_equal_the_in_memory_batches() -> None:
    x, y = _arrays()
    tasks = _tasks()
    mem = MultiTaskData(x, y, tasks)
    data = DatasetData(PairDataset(x, y), tasks)
    for world_size, rank in ((1, 0), (2, 1)):
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        a = list(mem.batches(32, shuffle=True, generator=g1, rank=rank, world_size=world_size))
        b = list(data.batches(32, shuffle=True, generator=g2, rank=rank, world_size=world_size))
        assert len(a) == len(b) > 0
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb)
            for k in ya:
                assert torch.equal(ya[k].nan_to_num(-9), yb[k].nan_to_num(-9))


def _train(splits: Splits, tasks: list[Task], init: dict, tmp: str) -> dict[str, torch.Tensor]:
    model = create_model("hard_sharing", create_trunk("mlp", in_features=6, hidden=[16]), tasks)
    model.load_state_dict(init)
    settings = TrainSettings(epochs=2, batch_size=32, progress=False, tensorboard=False)
    fit(model, splits, create_balancer("uncertainty", [t.name for t in tasks]), settings, tmp)
    return model.state_dict()


def test_training_through_a_dataset_matches_in_memory_training_exactly(tmp_path) -> None:
    x, y = _arrays()
    tasks = _tasks()
    model = create_model("hard_sharing", create_trunk("mlp", in_features=6, hidden=[16]), tasks)
    init = copy.deepcopy(model.state_dict())
    mem = random_split(MultiTaskData(x, y, tasks), seed=1)
    lazy = random_split(DatasetData(PairDataset(x, y), tasks, num_workers=0), seed=1)
    a = _train(mem, tasks, init, str(tmp_path / "mem"))
    b = _train(lazy, tasks, init, str(tmp_path / "lazy"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_two_workers_give_the_same_batches_as_none() -> None:
    x, y = _arrays(64)
    tasks = _tasks()
    batches = []
    for workers in (0, 2):
        data = DatasetData(PairDataset(x, y), tasks, num_workers=workers)
        g = torch.Generator().manual_seed(5)
        batches.append([b[0] for b in data.batches(16, shuffle=True, generator=g)])
    for a, b in zip(*batches, strict=True):
        assert torch.equal(a, b)


class NamedInputs(Dataset):
    def __init__(self, x: torch.Tensor, y: dict[str, torch.Tensor], drop: int | None = None):
        self.x, self.y, self.drop = x, y, drop

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        inputs = {"left": self.x[i, :3], "right": self.x[i, 3:]}
        if i == self.drop:
            del inputs["right"]
        return inputs, {"r": self.y["r"][i]}


def test_named_inputs_collate_to_a_dict_and_a_missing_key_is_named() -> None:
    x, y = _arrays(8)
    tasks = [Task("r", "regression")]
    data = DatasetData(NamedInputs(x, y), tasks)
    xb, _ = next(iter(data.batches(4)))
    assert set(xb) == {"left", "right"} and xb["right"].shape == (4, 3)
    bad = DatasetData(NamedInputs(x, y, drop=2), tasks)
    with pytest.raises(DataError, match=r"item 2: inputs \['left'\] differ"):
        list(bad.batches(4))


def test_unknown_task_key_and_shape_mismatch_name_the_item() -> None:
    tasks = [Task("r", "regression")]
    collate = MultiTaskCollate(tasks)
    with pytest.raises(BatchError, match=r"item 1: key 'rr' is no task"):
        collate([(torch.zeros(2), {"r": 1.0}), (torch.zeros(2), {"rr": 1.0})])
    with pytest.raises(BatchError, match=r"item 1: inputs has shape \[3\]"):
        collate([(torch.zeros(2), {"r": 1.0}), (torch.zeros(3), {"r": 1.0})])
    with pytest.raises(BatchError, match=r"item 0: expected \(inputs, \{task: target\}\)"):
        collate([torch.zeros(2)])


def test_validate_names_a_bad_label_before_training() -> None:
    x, y = _arrays(20)
    y["c"][4] = 7
    data = DatasetData(PairDataset(x, y), _tasks(), name="mine")
    with pytest.raises(DataError, match=r"task 'c' \(mine/train\): label 7 at row 4"):
        data.validate("train")


def test_a_dataloader_is_refused_with_what_to_pass_instead() -> None:
    x, y = _arrays(8)
    loader = torch.utils.data.DataLoader(PairDataset(x, y))
    with pytest.raises(TypeError, match="takes the Dataset, not a DataLoader"):
        DatasetData(loader, _tasks())


class Stream(IterableDataset):
    def __init__(self, x: torch.Tensor, y: dict[str, torch.Tensor]) -> None:
        self.inner = PairDataset(x, y)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        for i in range(len(self.inner)):
            yield self.inner[i]


def test_iterable_dataset_trains_and_shards_in_step(tmp_path) -> None:
    x, y = _arrays(96)
    tasks = _tasks()
    stream = DatasetData(Stream(x, y), tasks)
    ranks = [list(stream.batches(8, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 6
    assert torch.equal(ranks[1][0][0], x[8:16])
    splits = Splits(stream, DatasetData(PairDataset(x, y), tasks), DatasetData(PairDataset(x, y), tasks))
    model = create_model("hard_sharing", create_trunk("mlp", in_features=6, hidden=[8]), tasks)
    settings = TrainSettings(epochs=1, batch_size=16, progress=False, tensorboard=False)
    result = fit(model, splits.fit_target_scalers(), create_balancer("equal", ["a", "c", "r"]),
                 settings, tmp_path / "run")
    assert result.test["r"]["labelled"] == 96


def test_hugging_face_dataset_rows_with_input_keys(tmp_path) -> None:
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets is not installed")
    x, y = _arrays(60)
    table = datasets.Dataset.from_dict(
        {"features": x.tolist(), "a": y["a"].tolist(), "r": y["r"].tolist()}
    ).with_format("torch")
    tasks = [Task("a", "binary"), Task("r", "regression")]
    data = DatasetData(table, tasks, input_keys=["features"])
    assert torch.equal(torch.isnan(data.targets["a"]), torch.isnan(y["a"]))
    splits = random_split(data, seed=0)
    model = create_model("hard_sharing", create_trunk("mlp", in_features=6, hidden=[8]), tasks)
    settings = TrainSettings(epochs=1, batch_size=16, progress=False, tensorboard=False)
    result = fit(model, splits, create_balancer("equal", ["a", "r"]), settings, tmp_path / "hf")
    assert result.test["r"]["labelled"] == len(splits.test)
