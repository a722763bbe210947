"""The timm trunk, on timm's tiny test models with random weights (runs only where timm imports).

timm needs torchvision, which has no build matching the main venv's CPU torch: these tests run in
the separate venv that scripts/setup-timm.sh builds
(``.venv-timm/bin/python -m pytest tests/models/test_timm.py``) and are skipped elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from polytask.models import HardSharing, create_model, create_trunk
from polytask.models.mmoe import staged_parts
from polytask.models.pretrained import TimmTrunk
from polytask.tasks import Task

timm = pytest.importorskip(
    "timm", reason="timm is not installed here (bash scripts/setup-timm.sh builds .venv-timm)"
)

pytestmark = pytest.mark.usefixtures("single_thread")

# test_resnet's features: channels (32, 32, 48, 192, 96) at strides (2, 4, 8, 16, 32)


def test_feature_map_and_spec_come_from_timm_feature_info() -> None:
    trunk = create_trunk("timm", model_name="test_resnet")
    assert isinstance(trunk, TimmTrunk) and trunk.stage_compatible
    out = trunk(torch.randn(2, 3, 64, 64))
    spec = trunk.feature_spec
    assert (spec.kind, spec.channels, spec.stride) == ("map", 96, 32)
    assert out.shape == (2, 96, 2, 2)
    spec.check(out)


def test_stages_end_at_the_selected_features_and_follow_the_contract() -> None:
    trunk = TimmTrunk("test_resnet", out_indices=(1, 2))
    assert len(trunk.stages) == 2  # stem + layer1, layer2
    assert (trunk.feature_spec.channels, trunk.feature_spec.stride) == (48, 8)
    _, _, feats = staged_parts(trunk, "test", torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 8, 8), (48, 4, 4)]
    model = create_model(
        "cross_stitch",
        trunk,
        [Task("a", "regression"), Task("b", "regression")],
        example_input=torch.randn(2, 3, 32, 32),
    )
    assert set(model(torch.randn(2, 3, 32, 32))) == {"a", "b"}


def test_local_weights_file_is_loaded_with_timm_s_loader(tmp_path: Path) -> None:
    full = timm.create_model("test_resnet", pretrained=False)  # a full model, classifier included
    path = tmp_path / "test_resnet.pth"
    torch.save(full.state_dict(), path)
    trunk = TimmTrunk("test_resnet", pretrained=str(path))
    saved = full.state_dict()
    loaded = trunk.state_dict()  # keys "stages.<i>.<timm's own name>"
    assert len(loaded) == len(saved) - 2  # all but the classifier's weight and bias
    for key, value in loaded.items():
        assert torch.equal(value, saved[key.split(".", 2)[2]]), key
    assert not torch.equal(TimmTrunk("test_resnet").stages[0].conv1[0].weight, full.conv1[0].weight)
    with pytest.raises(FileNotFoundError, match="not found"):
        TimmTrunk("test_resnet", pretrained=str(tmp_path / "missing.pth"))


def test_vector_output_and_freezing() -> None:
    trunk = TimmTrunk("test_resnet", output="vector", freeze=2)
    assert trunk.feature_spec.kind == "vector" and trunk.out_features == 96
    assert len(trunk.stages) == 6  # five feature stages and the pooling
    assert trunk(torch.randn(2, 3, 32, 32)).shape == (2, 96)
    frozen = {id(p) for s in trunk.stages[:2] for p in s.parameters()}
    assert frozen and all(not p.requires_grad for s in trunk.stages[:2] for p in s.parameters())
    model = HardSharing(trunk, [Task("a", "regression"), Task("b", "binary")])
    assert not frozen & {id(p) for p in model.shared_parameters()}
    model.check_ownership()


def test_hook_based_extractors_are_usable_but_not_stage_compatible() -> None:
    trunk = TimmTrunk("test_vit", img_size=32, output="vector")
    assert not trunk.stage_compatible
    assert trunk(torch.randn(2, 3, 32, 32)).shape == (2, trunk.feature_spec.channels)
    with pytest.raises(TypeError, match="not stage-compatible"):
        trunk.forward_features(torch.randn(2, 3, 32, 32))
    with pytest.raises(TypeError, match="exposes its stages"):
        create_model(
            "cross_stitch",
            trunk,
            [Task("a", "regression")],
            example_input=torch.randn(2, 3, 32, 32),
        )
    with pytest.raises(TypeError, match="only the whole trunk"):
        TimmTrunk("test_vit", img_size=32, freeze=1)
    whole = TimmTrunk("test_vit", img_size=32, freeze="all")
    assert not any(p.requires_grad for p in whole.parameters())


def test_a_few_training_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    trunk = TimmTrunk("test_resnet", output="vector")
    head = nn.Linear(trunk.feature_spec.channels, 1)
    x = torch.randn(16, 3, 32, 32)
    y = (x[:, 0].mean(dim=(1, 2)) > x[:, 1].mean(dim=(1, 2))).float().unsqueeze(1)
    opt = torch.optim.Adam([*trunk.parameters(), *head.parameters()], lr=3e-3)
    losses = []
    for _ in range(15):
        loss = nn.functional.binary_cross_entropy_with_logits(head(trunk(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
