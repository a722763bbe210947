"""The Transformer encoder trunk: CLS + zeroed padding, stages that carry the mask, training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from polytask.models import create_model, create_trunk
from polytask.models.features import pool_to_vector
from polytask.models.mmoe import staged_parts
from polytask.models.transformer import TransformerEncoderTrunk, padding_mask
from polytask.tasks import Task

pytestmark = pytest.mark.usefixtures("single_thread")

IDS = torch.tensor([[3, 4, 5, 6, 0, 0], [7, 2, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])


def _trunk(**kw: object) -> TransformerEncoderTrunk:
    opts: dict[str, object] = {"width": 16, "depth": 2, "heads": 2, "max_len": 12, "dropout": 0.0}
    opts.update(kw)
    return TransformerEncoderTrunk(10, **opts)  # type: ignore[arg-type]


def test_output_is_cls_plus_tokens_with_padding_exactly_zero() -> None:
    trunk = _trunk()
    out = trunk(IDS)
    assert out.shape == (3, 7, 16)
    spec = trunk.feature_spec
    assert (spec.kind, spec.channels, spec.pooling, spec.summary_positions) == (
        "sequence", 16, "cls", 1
    )
    spec.check(out)
    expected_pad = torch.cat([torch.zeros(3, 1, dtype=torch.bool), IDS == 0], dim=1)
    assert torch.equal(padding_mask(out), expected_pad)
    assert torch.isfinite(out).all()  # the all-padding row still has its CLS position
    assert pool_to_vector(out, spec).shape == (3, 16)


def test_more_padding_does_not_change_the_real_positions() -> None:
    trunk = _trunk().eval()
    longer = torch.cat([IDS, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    with torch.no_grad():
        a, b = trunk(IDS), trunk(longer)
    assert torch.allclose(a, b[:, : a.shape[1]], atol=1e-5)
    assert (b[:, a.shape[1] :] == 0).all()


def test_stages_are_tensor_modules_that_keep_padding_zero() -> None:
    trunk = create_trunk("transformer", vocab_size=10, width=16, depth=3, heads=4, max_len=12)
    _, stages, feats = staged_parts(trunk.eval(), "test", IDS)
    assert len(stages) == len(feats) == 4  # embedding + 3 layers
    pad = torch.cat([torch.zeros(3, 1, dtype=torch.bool), IDS == 0], dim=1)
    for f in feats:
        assert f.shape == (3, 7, 16)
        assert torch.equal(padding_mask(f), pad)


def test_cross_stitch_runs_on_the_transformer_stages() -> None:
    tasks = [Task("a", "regression"), Task("b", "binary")]
    model = create_model("cross_stitch", _trunk(), tasks, example_input=IDS)
    out = model(IDS)
    assert set(out) == {"a", "b"} and all(o.shape[0] == 3 for o in out.values())
    sum(o.sum() for o in out.values()).backward()


def test_freezing_the_embedding_stage() -> None:
    trunk = _trunk(freeze=1)
    assert not any(p.requires_grad for p in trunk.stages[0].parameters())
    assert all(p.requires_grad for s in trunk.stages[1:] for p in s.parameters())


def test_reinitialised_copies_draw_embeddings_like_the_original() -> None:
    from polytask.models.mmoe import reinitialize

    trunk = _trunk()
    reinitialize(trunk)
    emb = trunk.stages[0]
    assert float(emb.token.detach().std()) < 0.05  # not nn.Embedding's unit variance
    assert torch.equal(emb.token[0], torch.zeros(16))


def test_bad_inputs_and_options_are_refused() -> None:
    trunk = _trunk()
    with pytest.raises(ValueError, match="must be integers"):
        trunk(IDS.float())
    with pytest.raises(ValueError, match="exceed max_len=12"):
        trunk(torch.ones(2, 13, dtype=torch.long))
    with pytest.raises(ValueError, match=r"lie in \[0, 10\)"):
        trunk(torch.full((1, 3), 10))
    with pytest.raises(ValueError, match=r"token ids \[B, L\]"):
        trunk(torch.ones(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="must divide width"):
        TransformerEncoderTrunk(10, width=10, heads=3)


def test_a_few_training_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    trunk = _trunk(width=32, heads=4, depth=1)
    head = nn.Linear(32, 1)
    # does token 3 occur in the sequence? (CLS must gather it from any position)
    ids = torch.randint(1, 10, (48, 8))
    ids[torch.rand(48, 8) < 0.25] = 0
    y = (ids == 3).any(dim=1).float().unsqueeze(1)
    opt = torch.optim.Adam([*trunk.parameters(), *head.parameters()], lr=3e-3)
    losses = []
    for _ in range(25):
        logits = head(pool_to_vector(trunk(ids), trunk.feature_spec))
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
