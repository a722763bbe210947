"""HardSharing head kinds: per-task linear heads, or a shared map with per-task offset/scale; the
token head's reading of a sequence trunk's summary (CLS) position."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from polytask.models import MLP, HardSharing, create_model
from polytask.models.base import TaskOffset
from polytask.models.features import FeatureSpec
from polytask.models.heads import make_task_head
from polytask.tasks import Task


def _tasks(n: int = 5) -> list[Task]:
    return [Task(f"t{i}", "regression") for i in range(n)]


@pytest.mark.parametrize(("head", "per_task"), [("shared_offset", 1), ("shared_affine", 2)])
def test_shared_heads_learn_one_or_two_numbers_per_task(head: str, per_task: int) -> None:
    torch.manual_seed(0)
    tasks = _tasks()
    # as YAML would give it: model.options: {head: ...}
    model = create_model("hard_sharing", MLP(4, hidden=[8]), tasks, **{"head": head})
    assert isinstance(model, HardSharing)
    for t in tasks:
        assert sum(p.numel() for p in model.task_parameters(t.name)) == per_task
    shared = {id(p) for p in model.shared_parameters()}
    assert model.shared_head is not None
    assert all(id(p) in shared for p in model.shared_head.parameters())
    x = torch.randn(6, 4)
    rep = model.encode(x)
    assert rep.shape == (6, 1)  # the representation is the shared prediction
    with torch.no_grad():
        for i, offset in enumerate(model.heads.values()):
            assert isinstance(offset, TaskOffset)
            offset.bias.fill_(float(i))
    out = model(x)
    assert set(out) == {t.name for t in tasks}
    # at initialisation (scale 1) tasks differ by their offset only
    assert torch.allclose(out["t3"] - out["t1"], torch.full((6, 1), 2.0))
    sum(o.square().sum() for o in out.values()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_default_head_is_a_linear_layer_per_task() -> None:
    model = HardSharing(MLP(4, hidden=[8]), _tasks(2))
    assert model.shared_head is None
    assert all(isinstance(h, nn.Linear) for h in model.heads.values())
    assert model.encode(torch.randn(3, 4)).shape == (3, 8)


def test_shared_heads_are_refused_where_they_cannot_apply() -> None:
    with pytest.raises(ValueError, match="unknown head"):
        HardSharing(MLP(4, hidden=[8]), _tasks(2), head="tiny")
    mixed = [Task("r", "regression"), Task("m", "multiclass", num_classes=3)]
    with pytest.raises(ValueError, match="one output width"):
        HardSharing(MLP(4, hidden=[8]), mixed, head="shared_offset")
    own = [Task("a", "regression"), Task("b", "regression", head=lambda d: nn.Linear(d, 1))]
    with pytest.raises(ValueError, match="bring their own"):
        HardSharing(MLP(4, hidden=[8]), own, head="shared_affine")


def test_token_head_skips_the_summary_positions_a_trunk_declares() -> None:
    tags = Task("tags", "token_classification", num_classes=3)
    features = torch.randn(2, 6, 8)
    plain = make_task_head(tags, FeatureSpec("sequence", 8))
    assert plain(features).shape == (2, 6, 3)  # no summary position: every position a token
    spec = FeatureSpec("sequence", 8, pooling="cls", summary_positions=1)
    skipping = make_task_head(tags, spec)
    skipping.load_state_dict(plain.state_dict())
    assert torch.equal(skipping(features), plain(features)[:, 1:])  # position 0 is the CLS
    # a sequence-level task on the same features reads the CLS position itself
    topic = make_task_head(Task("topic", "text_classification", num_classes=4), spec)
    assert torch.equal(topic(features), topic.linear(features[:, 0]))


def test_summary_positions_belong_to_sequences_and_are_counted_from_zero() -> None:
    with pytest.raises(ValueError, match="summary_positions"):
        FeatureSpec("map", 8, summary_positions=1)
    with pytest.raises(ValueError, match="summary_positions"):
        FeatureSpec("sequence", 8, summary_positions=-1)
