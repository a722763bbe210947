"""Wrappers of other libraries' models: lazy imports, no downloads, and a tiny BERT as a trunk.

The Hugging Face tests build everything locally (a BERT from a config, a word-level tokenizer from
a word list); the timm trunk's own tests live in test_timm.py, which runs where timm is installed.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from polytask.data.batch import MultiTaskCollate
from polytask.models import HardSharing, available_trunks, create_model, create_trunk
from polytask.models.features import pool_to_vector
from polytask.models.pretrained import HFTextTrunk, HFTokenize, TimmTrunk
from polytask.tasks import Task

transformers = pytest.importorskip(
    "transformers", reason="the hf extra: pip install 'polytask[hf]'"
)

pytestmark = pytest.mark.usefixtures("single_thread")

BERT = {
    "model_type": "bert",
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 32,
}
WORDS = [
    *("[PAD]", "[UNK]", "[CLS]", "[SEP]"),
    *("the", "a", "cat", "dog", "sat", "on", "mat", "red", "blue", "ran"),
]


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[2, 10, 11, 12, 3, 0, 0], [2, 40, 3, 0, 0, 0, 0], [2, 5, 6, 7, 8, 9, 3]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A word-level fast tokenizer with [CLS] ... [SEP], saved as a local directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    path = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(str(path))
    return path


def test_both_wrappers_are_registered_without_importing_their_libraries() -> None:
    trunks = available_trunks()
    assert "timm" in trunks and "hf" in trunks
    source = Path(sys.modules["polytask.models.pretrained"].__file__ or "").read_text()
    assert "\nimport timm" not in source and "\nimport transformers" not in source


def test_a_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'polytask\[timm\]'"):
        create_trunk("timm", model_name="resnet18")
    with pytest.raises(ImportError, match=r"pip install 'polytask\[hf\]'"):
        HFTextTrunk(BERT)
    with pytest.raises(ImportError, match=r"polytask\[hf\]"):
        HFTokenize("/nowhere")(["text"])


def test_nothing_is_downloaded() -> None:
    with pytest.raises(ValueError, match="nothing is downloaded"):
        TimmTrunk("resnet18", pretrained=True)
    with pytest.raises(ValueError, match="nothing is downloaded"):
        TimmTrunk("hf-hub:timm/resnet18.a1_in1k")
    with pytest.raises(ValueError, match="not a local model directory"):
        HFTextTrunk("bert-base-uncased")
    with pytest.raises(ValueError, match="not a local tokenizer directory"):
        HFTokenize("bert-base-uncased")(["text"])


def test_tiny_bert_from_a_config_is_a_sequence_trunk() -> None:
    trunk = create_trunk("hf", path_or_config=BERT)
    assert isinstance(trunk, HFTextTrunk)
    spec = trunk.feature_spec
    assert (spec.kind, spec.channels, spec.pooling) == ("sequence", 32, "cls")
    assert getattr(trunk.model, "pooler", None) is None  # unused: removed
    batch = _batch()
    out = trunk(batch)
    spec.check(out)
    assert out.shape == (3, 7, 32)
    assert torch.equal((out == 0).all(dim=-1), batch["attention_mask"] == 0)
    # bare ids: the mask is read off the pad id
    trunk.eval()
    assert torch.allclose(trunk(batch["input_ids"]), trunk(batch), atol=1e-6)


def test_vector_output_pools_and_config_objects_work() -> None:
    config = transformers.BertConfig(**{k: v for k, v in BERT.items() if k != "model_type"})
    cls = HFTextTrunk(config, output="vector").eval()
    mean = HFTextTrunk(config, output="vector", pooling="mean").eval()
    mean.load_state_dict(cls.state_dict())
    batch = _batch()
    seq = HFTextTrunk(config).eval()
    seq.load_state_dict(cls.state_dict())
    with torch.no_grad():
        h = seq(batch)
        assert torch.allclose(cls(batch), h[:, 0], atol=1e-6)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        assert torch.allclose(mean(batch), (h * mask).sum(1) / mask.sum(1), atol=1e-5)
    assert cls.feature_spec.kind == "vector" and cls.out_features == 32
    gpt2 = HFTextTrunk(
        {"model_type": "gpt2", "n_embd": 16, "n_layer": 1, "n_head": 2, "vocab_size": 50}
    )
    assert gpt2.feature_spec.pooling == "mean"  # no summary token in front


def test_local_directory_round_trip(tmp_path: Path) -> None:
    trunk = HFTextTrunk(BERT).eval()
    trunk.model.save_pretrained(str(tmp_path))
    again = HFTextTrunk(tmp_path).eval()
    batch = _batch()
    with torch.no_grad():
        assert torch.allclose(trunk(batch), again(batch), atol=1e-6)


def test_stages_are_for_freezing_only() -> None:
    trunk = HFTextTrunk(BERT, freeze=2)  # embeddings and the first layer
    stages = trunk.stages
    assert stages is not None and len(stages) == 3
    assert not any(p.requires_grad for s in stages[:2] for p in s.parameters())
    assert all(p.requires_grad for p in stages[2].parameters())
    with pytest.raises(TypeError, match="not stage-compatible"):
        trunk.forward_features(_batch())
    with pytest.raises(TypeError, match="exposes its stages"):
        create_model("cross_stitch", trunk, [Task("a", "regression")], example_input=_batch())


def test_frozen_bert_parameters_are_not_shared_parameters() -> None:
    trunk = HFTextTrunk(BERT, output="vector", freeze=1)
    model = HardSharing(trunk, [Task("a", "regression"), Task("b", "binary")])
    shared = {id(p) for p in model.shared_parameters()}
    frozen = {id(p) for p in trunk.model.embeddings.parameters()}
    assert shared and not shared & frozen
    assert len(shared) == sum(1 for p in trunk.parameters() if p.requires_grad)
    model.check_ownership()


def test_hf_tokenize_is_a_picklable_collate_hook(tokenizer_dir: Path) -> None:
    tokenize = HFTokenize(tokenizer_dir, max_length=8)
    out = tokenize(["the cat sat", "a dog ran on the red mat xyz"])
    assert set(out) == {"input_ids", "attention_mask"}
    assert out["input_ids"].dtype == torch.long and out["input_ids"].shape == (2, 8)
    assert out["input_ids"][0, :5].tolist() == [2, 4, 6, 8, 3]  # [CLS] the cat sat [SEP]
    assert out["attention_mask"][0].tolist() == [1] * 5 + [0] * 3
    assert tokenize._tokenizer is not None
    copy = pickle.loads(pickle.dumps(tokenize))
    assert copy._tokenizer is None  # reloaded from the path in each worker
    assert torch.equal(copy(["the cat sat"])["input_ids"], out["input_ids"][:1])
    longest = HFTokenize(tokenizer_dir, max_length=8, padding="longest")(["the cat", "a"])
    assert longest["input_ids"].shape == (2, 4)

    collate = MultiTaskCollate([Task("y", "binary")], transform_inputs=tokenize)
    inputs, targets = collate([("the cat sat", {"y": 1.0}), ("a dog", {"y": 0.0})])
    assert isinstance(inputs, dict) and inputs["input_ids"].shape == (2, 8)
    assert targets["y"].shape == (2,)


def test_tiny_bert_trains_a_few_steps(tokenizer_dir: Path) -> None:
    torch.manual_seed(0)
    config = {**BERT, "vocab_size": len(WORDS), "hidden_dropout_prob": 0.0}
    trunk = HFTextTrunk(config)
    head = nn.Linear(32, 1)
    texts = [
        "the cat sat on the mat",
        "a dog ran",
        "the red dog sat",
        "a blue cat ran on a mat",
    ] * 4
    inputs = HFTokenize(tokenizer_dir, max_length=10)(texts)
    y = torch.tensor([[float("cat" in t)] for t in texts])
    opt = torch.optim.Adam([*trunk.parameters(), *head.parameters()], lr=3e-3)
    losses = []
    for _ in range(12):
        logits = head(pool_to_vector(trunk(inputs), trunk.feature_spec))
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
