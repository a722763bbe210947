"""Several named inputs through one encoder each, fused; every engine mode and mixture models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from polytask.balancing import create_balancer
from polytask.balancing.engine import GradientEngine
from polytask.config import parse_config
from polytask.data.base import MultiTaskData, random_split
from polytask.experiment import build_model
from polytask.models import FeatureSpec, MultiInputTrunk, create_model, create_trunk
from polytask.models.heads import HeadError, PooledHead, make_task_head
from polytask.tasks import Task
from polytask.training import TrainSettings, fit


def _data(n: int = 128) -> MultiTaskData:
    g = torch.Generator().manual_seed(0)
    table = torch.randn(n, 5, generator=g)
    image = torch.randn(n, 1, 8, 8, generator=g)
    y_a = ((table[:, 0] + image.mean(dim=(1, 2, 3)) * 4) > 0).float()
    y_b = table[:, 1] - image[:, 0, 0, 0]
    inputs = {"table": table, "image": image}
    return MultiTaskData(inputs, {"a": y_a, "b": y_b}, [Task("a", "binary"), Task("b", "regression")])


class TinyConv(nn.Module):
    """A conv encoder that returns a feature map (pooled by the fusion)."""

    feature_spec = FeatureSpec("map", 4)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


def _trunk(fusion: str, example: dict[str, torch.Tensor]) -> MultiInputTrunk:
    encoders = {"table": create_trunk("mlp", in_features=5, hidden=[8]), "image": TinyConv()}
    return MultiInputTrunk(encoders, fusion=fusion, width=8, example_input=example, heads=2)


@pytest.mark.parametrize("fusion", ["concat", "sum", "gated", "attention"])
def test_every_fusion_trains(fusion: str, tmp_path) -> None:
    data = _data()
    splits = random_split(data, seed=0)
    torch.manual_seed(0)
    model = create_model("hard_sharing", _trunk(fusion, data.example()), data.tasks)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = TrainSettings(epochs=2, batch_size=32, progress=False, tensorboard=False)
    result = fit(model, splits, create_balancer("equal", ["a", "b"]), settings, tmp_path)
    assert result.test["a"]["labelled"] == len(splits.test)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("trunk.encoders.image") for k in changed)
    assert any(k.startswith("trunk.encoders.table") for k in changed)


@pytest.mark.parametrize(
    ("balancer", "mode"),
    [("upgrad", "jacobian"), ("upgrad", "gramian"), ("mgda", "representation"), ("dwa", "jacobian")],
)
def test_engine_modes_take_named_inputs(balancer: str, mode: str) -> None:
    data = _data(32)
    torch.manual_seed(0)
    model = create_model("hard_sharing", _trunk("gated", data.example()), data.tasks)
    engine = GradientEngine(model, data.tasks, create_balancer(balancer, ["a", "b"]), mode=mode)
    x, y = next(data.batches(16))
    out = engine.backward(x, y, step=0, epoch=0)
    assert out is not None and bool(out.present.all())
    grads = [p.grad for p in model.trunk.encoders["image"].parameters()]
    assert all(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_mmoe_with_named_inputs_reads_pooled_features() -> None:
    data = _data(32)
    model = create_model("mmoe", _trunk("concat", data.example()), data.tasks,
                         example_input=data.example(), num_experts=2)
    out = model(data.example(4))
    assert out["a"].shape == (4, 1)
    with pytest.raises(ValueError, match="gate_input='input' reads one flat input tensor"):
        create_model("mmoe", _trunk("concat", data.example()), data.tasks,
                     example_input=data.example(), gate_input="input")


def test_missing_input_is_named() -> None:
    data = _data(8)
    trunk = _trunk("sum", data.example())
    with pytest.raises(KeyError, match=r"input\(s\) \['image'\] missing"):
        trunk({"table": data.inputs["table"]})
    with pytest.raises(ValueError, match="encoder 'text' has no input of that name"):
        MultiInputTrunk({"text": TinyConv()}, example_input=data.example())


def test_built_from_a_config() -> None:
    data = _data(16)
    config = parse_config({
        "name": "two-inputs",
        "data": {"dataset": "census"},
        "model": {
            "trunk": "multi_input",
            "trunk_options": {
                "encoders": {
                    "table": {"trunk": "mlp", "options": {"hidden": [8]}},
                    "image": {"trunk": "mlp", "options": {"hidden": [6]}},
                },
                "fusion": "attention", "width": 8, "heads": 2,
            },
        },
    })
    model = build_model(config, data.tasks, data.example())
    assert model(data.example(3))["b"].shape == (3, 1)
    assert model.trunk.encoders["image"].in_features == 64


def test_heads_follow_the_feature_spec() -> None:
    task = Task("t", "multiclass", num_classes=3)
    assert isinstance(make_task_head(task, FeatureSpec("vector", 5)), nn.Linear)
    head = make_task_head(task, FeatureSpec("sequence", 5, pooling="mean"))
    assert isinstance(head, PooledHead)
    seq = torch.randn(2, 4, 5)
    seq[:, 2:] = 0  # padded positions
    expected = head.linear(seq[:, :2].mean(dim=1))
    torch.testing.assert_close(head(seq), expected)
    dense = Task("d", "depth")
    assert dense.layout == "dense"
    with pytest.raises(HeadError, match=r"task 'd' \(dense targets\) needs a feature map"):
        make_task_head(dense, FeatureSpec("vector", 5))


def test_a_conv_trunk_of_maps_gets_pooled_heads(tmp_path) -> None:
    data = _data(64)
    image_only = MultiTaskData(data.inputs["image"], data.targets, data.tasks)
    splits = random_split(image_only, seed=0)
    model = create_model("hard_sharing", TinyConv(), data.tasks, example_input=image_only.example())
    assert model.feature_spec.kind == "map"
    settings = TrainSettings(epochs=1, batch_size=16, progress=False, tensorboard=False,
                             engine="representation")
    fit(model, splits, create_balancer("mgda", ["a", "b"]), settings, tmp_path)
