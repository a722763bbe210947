"""Atom-level SMILES tokenisation for sequence trunks (:class:`~polytask.models.transformer.TransformerEncoderTrunk`).

Why atom-level and not characters: ``Cl`` is one chlorine atom, not a carbon and an ``l``;
``[C@@H]`` is one chiral atom with its hydrogen count; ``%12`` is one ring-closure label. Splitting
them into characters makes the encoder spend capacity reassembling atoms. The tokens are:

* bracket atoms ``[...]`` whole (isotope, chirality, charge, hydrogens, atom class inside);
* the two-letter organic-subset atoms ``Cl`` and ``Br`` (the only ones written without brackets);
* the one-letter organic-subset atoms ``B C N O P S F I`` and aromatic ``b c n o p s``;
* ring-closure labels ``%nn`` and single digits;
* bonds ``- = # $ : / \\``, branches ``( )``, the dot ``.``, the wildcard ``*`` and the reaction
  arrow ``>``;
* any other single character, so that tokenising never fails and the concatenated tokens are
  always the input string: an odd character becomes its own (probably unknown) token and is counted.

The vocabulary is fitted on the training strings only (:meth:`SmilesTokenizer.fit`), so validation
and test molecules cannot leak tokens into it; a token seen first at evaluation maps to the unknown
id and is counted. Ids: ``0`` pad, ``1`` unknown, then the fitted tokens by decreasing training
frequency (ties alphabetical, so the same strings always give the same ids).

Every encoded batch has the fixed length ``max_len``: batches of one run can then be concatenated
(evaluation gathers them) and the trunk's position table is sized once. Longer strings are truncated
(their first ``max_len`` tokens kept) and counted.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["PAD_ID", "SMILES_PATTERN", "UNK_ID", "EncodeStats", "SmilesTokenizer", "smiles_tokens"]

PAD_ID = 0
UNK_ID = 1
_SPECIALS = ("<pad>", "<unk>")

SMILES_PATTERN = re.compile(
    r"""
    \[[^\[\]]*\]            # bracket atom, whole
    | Cl | Br               # two-letter organic subset
    | [BCNOPSFI]            # one-letter organic subset
    | [bcnops]              # aromatic organic subset
    | %\d{2}                # two-digit ring closure
    | \d                    # one-digit ring closure
    | [-=\#$:/\\().*>]      # bonds, branches, dot, wildcard, reaction arrow
    | .                     # anything else: its own token (counted as unknown if unseen)
    """,
    re.VERBOSE | re.DOTALL,
)


def smiles_tokens(smiles: str) -> list[str]:
    """The atom-level tokens of one SMILES string (surrounding whitespace dropped)."""
    return SMILES_PATTERN.findall(smiles.strip())


@dataclass
class EncodeStats:
    """What encoding did to the strings: how many, truncated, tokens, unknown tokens."""

    strings: int = 0
    truncated: int = 0
    tokens: int = 0
    unknown: int = 0

    def add(self, other: EncodeStats) -> None:
        self.strings += other.strings
        self.truncated += other.truncated
        self.tokens += other.tokens
        self.unknown += other.unknown

    def describe(self) -> str:
        return (
            f"{self.truncated}/{self.strings} strings truncated, "
            f"{self.unknown}/{self.tokens} tokens unknown"
        )


class SmilesTokenizer:
    """SMILES -> padded token ids ``[N, max_len]`` (pad 0, unknown 1); see the module docstring.

    Args:
        max_len: the length of every encoded row (tokens past it are truncated and counted).
        min_freq: a training token seen fewer times is left out of the vocabulary (it becomes
            unknown), so one-off tokens do not get embeddings that are trained on one molecule.

    Counting: :attr:`last_stats` describes the latest :meth:`encode` call and :attr:`stats`
    accumulates over every call of this object. Inside DataLoader workers each worker has its own
    copy, so counts made there stay there: encode the split once in the main process when you need
    the totals (``tokenizer.encode(strings); tokenizer.last_stats``).

    Picklable and callable on a list of strings, so it can be the collate's ``transform_inputs``.
    """

    def __init__(self, max_len: int = 128, min_freq: int = 1) -> None:
        if max_len < 1 or min_freq < 1:
            raise ValueError(f"max_len and min_freq must be >= 1, got {max_len}, {min_freq}")
        self.max_len = max_len
        self.min_freq = min_freq
        self.itos: list[str] = list(_SPECIALS)
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}
        self.fitted = False
        self.stats = EncodeStats()
        self.last_stats = EncodeStats()
        self.unknown_tokens: Counter[str] = Counter()
        self._warned = False

    # ------------------------------------------------------------------ vocabulary
    def fit(self, strings: Iterable[str]) -> SmilesTokenizer:
        """Build the vocabulary from the *training* strings (replacing any earlier one)."""
        counts: Counter[str] = Counter()
        n = 0
        for s in strings:
            counts.update(smiles_tokens(_as_str(s)))
            n += 1
        if n == 0:
            raise ValueError("cannot fit a tokenizer on no strings")
        kept = sorted(
            (t for t, c in counts.items() if c >= self.min_freq), key=lambda t: (-counts[t], t)
        )
        self._set_vocab(kept)
        return self

    def _set_vocab(self, tokens: Sequence[str]) -> None:
        clash = [t for t in tokens if t in _SPECIALS]
        if clash or len(set(tokens)) != len(tokens):
            raise ValueError(
                f"vocabulary tokens must be unique and not special, got {clash or tokens}"
            )
        self.itos = [*_SPECIALS, *tokens]
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        self.fitted = True

    @property
    def vocab_size(self) -> int:
        """Number of ids, pad and unknown included: the trunk's ``vocab_size``."""
        return len(self.itos)

    # ------------------------------------------------------------------ encoding
    def encode(self, strings: Sequence[str], max_len: int | None = None) -> Tensor:
        """Token ids ``[N, max_len]`` (long), right-padded with 0; unknown tokens are 1.

        Truncated strings and unknown tokens are counted in :attr:`last_stats` and :attr:`stats`,
        and the first truncation warns once, since it silently drops part of a molecule.
        """
        if not self.fitted:
            raise RuntimeError("SmilesTokenizer.encode before fit: fit it on the training strings")
        if isinstance(strings, str):
            raise TypeError("encode takes a list of SMILES strings, not one string")
        length = self.max_len if max_len is None else max_len
        if length < 1:
            raise ValueError(f"max_len must be >= 1, got {length}")
        out = torch.zeros(len(strings), length, dtype=torch.long)
        stats = EncodeStats(strings=len(strings))
        for row, s in enumerate(strings):
            toks = smiles_tokens(_as_str(s))
            if len(toks) > length:
                stats.truncated += 1
                toks = toks[:length]
            ids = []
            for t in toks:
                i = self.stoi.get(t, UNK_ID)
                if i == UNK_ID:
                    self.unknown_tokens[t] += 1
                ids.append(i)
            stats.tokens += len(ids)
            stats.unknown += sum(i == UNK_ID for i in ids)
            if ids:
                out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        self.last_stats = stats
        self.stats.add(stats)
        if stats.truncated and not self._warned:
            self._warned = True
            warnings.warn(
                f"SmilesTokenizer: {stats.truncated} of {stats.strings} strings are longer than "
                f"max_len={length} tokens and were truncated (counted in .stats)",
                stacklevel=2,
            )
        return out

    def __call__(self, strings: Sequence[str]) -> Tensor:
        """``encode(strings)`` at the tokenizer's ``max_len``: the collate-time hook."""
        return self.encode(list(strings))

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """The SMILES string of one row of ids (pads dropped; unknown ids shown as ``<unk>``)."""
        values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return "".join(self.itos[i] for i in values if i != PAD_ID)

    # ------------------------------------------------------------------ saving with a run
    def to_config(self) -> dict[str, Any]:
        """A JSON/YAML-safe description (vocabulary in id order) that :meth:`from_config` reads."""
        return {
            "kind": "smiles",
            "max_len": self.max_len,
            "min_freq": self.min_freq,
            "vocab": self.itos[len(_SPECIALS) :],
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SmilesTokenizer:
        """The tokenizer :meth:`to_config` described: same ids for the same tokens."""
        if config.get("kind", "smiles") != "smiles":
            raise ValueError(f"not a SMILES tokenizer config: kind={config.get('kind')!r}")
        tok = cls(max_len=int(config["max_len"]), min_freq=int(config.get("min_freq", 1)))
        tok._set_vocab([str(t) for t in config["vocab"]])
        return tok

    def __repr__(self) -> str:
        return (
            f"SmilesTokenizer(vocab_size={self.vocab_size}, max_len={self.max_len}, "
            f"stats={asdict(self.stats)})"
        )


def _as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"SMILES must be strings, got {type(value).__name__}: {value!r}")
    return value
