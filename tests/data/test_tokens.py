"""SMILES tokenisation: atom-level tokens, a vocabulary fitted on training strings, counted losses."""

from __future__ import annotations

import json
import pickle
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from polytask.data.batch import MultiTaskCollate
from polytask.data.tokens import PAD_ID, UNK_ID, SmilesTokenizer, smiles_tokens
from polytask.models.transformer import TransformerEncoderTrunk
from polytask.tasks import Task

TRAIN = ["CCO", "CC(=O)O", "c1ccccc1Cl", "C[C@@H](N)C(=O)[O-]", "BrC%12CC%12"]


@pytest.mark.parametrize(
    ("smiles", "tokens"),
    [
        ("CCO", ["C", "C", "O"]),
        ("ClCBr", ["Cl", "C", "Br"]),
        ("C[C@@H](N)[O-]", ["C", "[C@@H]", "(", "N", ")", "[O-]"]),
        ("C%12CC%12", ["C", "%12", "C", "C", "%12"]),
        ("c1cc[nH]c1", ["c", "1", "c", "c", "[nH]", "c", "1"]),
        ("Cc1ccccc1", ["C", "c", "1", "c", "c", "c", "c", "c", "1"]),  # not "Cc"
        ("C/C=C\\C#N", ["C", "/", "C", "=", "C", "\\", "C", "#", "N"]),
        ("[13CH4].[Na+]", ["[13CH4]", ".", "[Na+]"]),
        (" CO \n", ["C", "O"]),
    ],
)
def test_atom_level_tokens(smiles: str, tokens: list[str]) -> None:
    assert smiles_tokens(smiles) == tokens


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="CNOSPFIBrcnos()[]=#@+-/\\%0123456789.*Hl ", min_size=1).map(str.strip))
def test_tokens_always_cover_the_string(smiles: str) -> None:
    assert "".join(smiles_tokens(smiles)) == smiles


def test_vocabulary_is_fitted_on_training_strings_by_frequency() -> None:
    tok = SmilesTokenizer(max_len=16).fit(TRAIN)
    assert tok.itos[:2] == ["<pad>", "<unk>"] and (PAD_ID, UNK_ID) == (0, 1)
    assert tok.itos[2] == "C"  # the most frequent token gets the first id
    assert tok.vocab_size == len(set(t for s in TRAIN for t in smiles_tokens(s))) + 2
    rare = SmilesTokenizer(min_freq=2).fit(TRAIN)
    assert "Br" not in rare.stoi and "C" in rare.stoi


def test_encode_pads_round_trips_and_counts_unknown_tokens() -> None:
    tok = SmilesTokenizer(max_len=12).fit(TRAIN)
    ids = tok.encode(["CCO", "c1ccccc1Cl"])
    assert ids.dtype == torch.long and ids.shape == (2, 12)
    assert (ids[0, 3:] == PAD_ID).all()
    assert [tok.decode(row) for row in ids] == ["CCO", "c1ccccc1Cl"]
    assert tok.last_stats.unknown == 0

    unseen = tok.encode(["CCS", "[Se]C"])  # S and [Se] never occurred in training
    assert unseen[0, 2].item() == UNK_ID and unseen[1, 0].item() == UNK_ID
    assert tok.last_stats.unknown == 2 and tok.last_stats.tokens == 5
    assert tok.unknown_tokens == {"S": 1, "[Se]": 1}
    assert tok.stats.strings == 4 and tok.stats.unknown == 2  # accumulated over both calls
    assert tok.decode(unseen[0]) == "CC<unk>"


def test_truncation_is_counted_and_warned_once() -> None:
    tok = SmilesTokenizer(max_len=4).fit(TRAIN)
    with pytest.warns(UserWarning, match="1 of 2 strings are longer than max_len=4"):
        ids = tok.encode(["CCO", "CC(=O)O"])
    assert tok.decode(ids[1]) == "CC(="
    assert (tok.last_stats.truncated, tok.last_stats.strings) == (1, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning comes once per tokenizer...
        tok.encode(["CC(=O)O"], max_len=2)
        tok.encode(["CC(=O)O"])
    assert tok.stats.truncated == 3  # ...but every truncation is counted
    assert "3/4 strings truncated" in tok.stats.describe()


def test_config_round_trip_keeps_the_ids() -> None:
    tok = SmilesTokenizer(max_len=16, min_freq=1).fit(TRAIN)
    config = json.loads(json.dumps(tok.to_config()))  # what a run saves
    again = SmilesTokenizer.from_config(config)
    assert again.itos == tok.itos and again.max_len == 16
    assert torch.equal(again.encode(TRAIN), tok.encode(TRAIN))
    with pytest.raises(ValueError, match="not a SMILES tokenizer"):
        SmilesTokenizer.from_config({**config, "kind": "bpe"})


def test_misuse_is_refused() -> None:
    with pytest.raises(RuntimeError, match="before fit"):
        SmilesTokenizer().encode(["C"])
    tok = SmilesTokenizer().fit(TRAIN)
    with pytest.raises(TypeError, match="list of SMILES"):
        tok.encode("CCO")
    with pytest.raises(TypeError, match="must be strings"):
        tok.encode([3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="no strings"):
        SmilesTokenizer().fit([])


def test_tokenizer_is_a_picklable_collate_hook_feeding_the_transformer() -> None:
    tok = pickle.loads(pickle.dumps(SmilesTokenizer(max_len=10).fit(TRAIN)))
    tasks = [Task("y", "regression")]
    collate = pickle.loads(pickle.dumps(MultiTaskCollate(tasks, transform_inputs=tok)))
    inputs, targets = collate([("CCO", {"y": 1.0}), ("c1ccccc1Cl", {"y": None})])
    assert isinstance(inputs, torch.Tensor) and inputs.shape == (2, 10)
    assert torch.isnan(targets["y"][1])
    trunk = TransformerEncoderTrunk(tok.vocab_size, width=8, depth=1, heads=2, max_len=10)
    assert trunk(inputs).shape == (2, 11, 8)
