"""The native ResNet trunk: shapes and feature specs, stages, norms, freezing, and training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from polytask.models import HardSharing, create_trunk
from polytask.models.freeze import freeze_stages, unfreeze_stages
from polytask.models.mmoe import staged_parts
from polytask.models.resnet import LAYOUTS, ResNet, group_count
from polytask.tasks import Task

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize(
    ("small_input", "output", "size", "shape", "stride"),
    [
        (True, "vector", 16, (3, 64), 1),
        (True, "map", 32, (3, 64, 4, 4), 8),
        (False, "map", 64, (3, 64, 2, 2), 32),
        (False, "vector", 64, (3, 64), 1),
    ],
)
def test_shapes_match_the_declared_feature_spec(
    small_input: bool, output: str, size: int, shape: tuple[int, ...], stride: int
) -> None:
    trunk = ResNet(depth=10, width=8, small_input=small_input, output=output)  # type: ignore[arg-type]
    out = trunk(torch.randn(3, 3, size, size))
    assert out.shape == shape
    assert trunk.feature_spec.kind == output
    assert trunk.feature_spec.channels == 64
    assert trunk.feature_spec.stride == stride
    trunk.feature_spec.check(out)


def test_stages_follow_the_stage_contract() -> None:
    vec = create_trunk("resnet", depth=10, width=4, in_channels=1, output="vector")
    x = torch.randn(2, 1, 16, 16)
    _, stages, feats = staged_parts(vec, "test", x)
    assert len(stages) == 5  # stem+layer1, layer2, layer3, layer4, pool
    assert [f.shape[1] for f in feats] == [4, 8, 16, 32, 32]
    assert [tuple(f.shape[2:]) for f in feats[:4]] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    fmap = ResNet(depth=10, width=4, in_channels=1, output="map")
    assert len(fmap.stages) == 4
    assert not hasattr(fmap, "out_features")  # a map's flattened width depends on the image size


@pytest.mark.parametrize("depth", [18, 34])
def test_depths_use_the_paper_layouts(depth: int) -> None:
    trunk = ResNet(depth=depth, width=2)
    blocks = [len(trunk.stages[0][-1]), *(len(s) for s in trunk.stages[1:4])]
    assert tuple(blocks) == LAYOUTS[depth]


def test_norm_options() -> None:
    kinds = {
        norm: {type(m) for m in ResNet(depth=10, width=8, norm=norm).modules()}  # type: ignore[arg-type]
        for norm in ("group", "batch", "none")
    }
    assert nn.GroupNorm in kinds["group"] and nn.BatchNorm2d not in kinds["group"]
    assert nn.BatchNorm2d in kinds["batch"] and nn.GroupNorm not in kinds["batch"]
    assert not kinds["none"] & {nn.GroupNorm, nn.BatchNorm2d}
    convs = [
        m for m in ResNet(depth=10, width=8, norm="none").modules() if isinstance(m, nn.Conv2d)
    ]
    assert all(c.bias is not None for c in convs)  # no norm after them: the convolutions need bias
    assert group_count(64) == 32 and group_count(8) == 4 and group_count(3) == 1
    with pytest.raises(ValueError, match="norm must be"):
        ResNet(norm="layer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="depth must be one of"):
        ResNet(depth=50)


def test_group_norm_keeps_samples_independent_and_batch_norm_does_not() -> None:
    """Why GroupNorm is the default: a sample's features must not depend on its batch mates."""
    x = torch.randn(4, 3, 16, 16)
    for norm, independent in (("group", True), ("batch", False)):
        trunk = ResNet(depth=10, width=8, norm=norm).train()  # type: ignore[arg-type]
        alone = trunk(x[:1])
        together = trunk(x)[:1]
        assert torch.allclose(alone, together, atol=1e-5) is independent


def test_wrong_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match=r"expects images \[B, 3, H, W\]"):
        ResNet(depth=10, width=4)(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="expects images"):
        ResNet(depth=10, width=4)(torch.randn(2, 3, 16))


def test_frozen_stages_drop_out_of_the_shared_parameters_and_do_not_move() -> None:
    trunk = ResNet(depth=10, width=4, freeze=2)
    frozen = {id(p) for s in trunk.stages[:2] for p in s.parameters()}
    assert frozen and all(not p.requires_grad for s in trunk.stages[:2] for p in s.parameters())
    assert all(p.requires_grad for s in trunk.stages[2:] for p in s.parameters())
    model = HardSharing(trunk, [Task("a", "regression"), Task("b", "regression")])
    shared = model.shared_parameters()
    assert shared and not frozen & {id(p) for p in shared}
    model.check_ownership()  # frozen parameters are nobody's, and that is fine

    before = {n: p.detach().clone() for n, p in trunk.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(4, 3, 8, 8), torch.randn(4, 1)
    for _ in range(2):
        out = model(x)
        loss = sum(torch.nn.functional.mse_loss(o, y) for o in out.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, p in trunk.named_parameters():
        moved = not torch.equal(before[name], p)
        assert moved is p.requires_grad, name

    assert len(unfreeze_stages(trunk)) == len(list(trunk.parameters()))
    assert all(p.requires_grad for p in trunk.parameters())


def test_freeze_selections() -> None:
    trunk = ResNet(depth=10, width=4)
    last = freeze_stages(trunk, [-2])
    assert {id(p) for p in last} == {id(p) for p in trunk.stages[3].parameters()}
    freeze_stages(trunk, "all")
    assert not any(p.requires_grad for p in trunk.parameters())
    assert freeze_stages(ResNet(depth=10, width=4), 0) == []
    with pytest.raises(ValueError, match="has 5 stages"):
        freeze_stages(trunk, 6)
    with pytest.raises(ValueError, match="not a stage index"):
        freeze_stages(trunk, [5])
    with pytest.raises(TypeError, match="only the whole trunk"):
        freeze_stages(nn.Linear(2, 2), 1)
    lin = nn.Linear(2, 2)
    freeze_stages(lin, "all")
    assert not lin.weight.requires_grad


def test_a_few_training_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    trunk = ResNet(depth=10, width=8, in_channels=1)
    head = nn.Linear(trunk.feature_spec.channels, 1)
    # target: which half of the image is brighter
    x = torch.randn(32, 1, 12, 12)
    y = (x[..., :6].mean(dim=(1, 2, 3)) > x[..., 6:].mean(dim=(1, 2, 3))).float().unsqueeze(1)
    params = [*trunk.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(15):
        loss = nn.functional.binary_cross_entropy_with_logits(head(trunk(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
