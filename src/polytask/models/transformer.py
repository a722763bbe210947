"""A small Transformer encoder trunk for token ids (SMILES, text) with a CLS summary token.

Input: token ids ``[B, L]`` (integer dtype, pad id 0, padding anywhere but normally at the end, as
:class:`~polytask.data.tokens.SmilesTokenizer` writes it). Output: ``[B, L + 1, D]``: position 0 is
a learned CLS token prepended to every sequence, positions ``1..L`` the tokens; padded positions are
exactly zero. The feature spec is ``sequence`` with pooling ``"cls"`` and one summary position: a
sequence-level head reads position 0, which attends to every real token, and a token-level head
(:class:`~polytask.models.heads.TokenHead`) skips it, so token tasks see exactly the ``L`` token
positions and their labels are ``[B, L]``, one per token id.

Why a CLS token: it is a summary the encoder learns to fill, and it also guarantees every sequence
has at least one position to attend to, so an all-padding input (an empty string) still gives finite
outputs instead of a softmax over nothing.

Layers: pre-norm (``norm_first=True``) ``nn.TransformerEncoderLayer`` blocks, batch first, with a
final LayerNorm (pre-norm blocks leave their residual stream un-normalised). They are what
``nn.TransformerEncoder`` stacks; each is held as its own stage instead, so that stage-wise
architectures can run them one at a time.

Stages (the contract of :class:`~polytask.models.StagedTrunk`): stage 0 embeds (token + learned
position embedding, CLS prepended, dropout); stage ``i >= 1`` is encoder layer ``i``, the last one
followed by the final LayerNorm. Every stage maps a tensor to a tensor ``[B, L + 1, D]`` with the
padded positions set to zero, and **the padding mask travels as those zero rows**: an encoder stage
recomputes it as the positions whose features are all zero. That is the feature-spec convention for
sequences (no mask travels beside the features), and it keeps each stage a plain ``Tensor ->
Tensor`` module that Cross-stitch (linear mixing keeps zeros zero) and PLE can copy and run. A real
token's features are never all zero in practice (the embedding stage adds a learned position
vector; every encoder stage ends in LayerNorm or a residual sum), so the mask is recovered exactly.
A module inserted between stages must keep the padded rows zero (a multiplicative attention mask or
a linear mix does; adding a bias does not).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from polytask.models.features import FeatureSpec
from polytask.models.freeze import StageSelection, freeze_stages
from polytask.models.registry import register_trunk
from polytask.models.trunks import StagedTrunk

__all__ = ["PAD_ID", "EncoderStage", "TokenEmbedding", "TransformerEncoderTrunk", "padding_mask"]

PAD_ID = 0


def padding_mask(h: Tensor) -> Tensor:
    """``[B, L]``, True at padded positions: those whose features are all exactly zero."""
    return (h == 0).all(dim=-1)


class TokenEmbedding(nn.Module):
    """Stage 0: ids ``[B, L]`` -> ``[B, L + 1, D]`` (CLS, token + position, dropout, pads zeroed).

    The embeddings are raw parameters with their own ``reset_parameters`` (std 0.02, the BERT
    initialisation), so that re-initialising a copy (MMoE experts, Cross-stitch columns) draws them
    the same way instead of an ``nn.Embedding``'s unit-variance default.
    """

    def __init__(self, vocab_size: int, width: int, max_len: int, dropout: float) -> None:
        super().__init__()
        self.vocab_size, self.max_len = vocab_size, max_len
        self.token = nn.Parameter(torch.empty(vocab_size, width))
        self.position = nn.Parameter(torch.empty(max_len + 1, width))
        self.cls = nn.Parameter(torch.empty(width))
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.token, self.position, self.cls):
            nn.init.normal_(p, std=0.02)
        with torch.no_grad():
            self.token[PAD_ID].zero_()

    def forward(self, ids: Tensor) -> Tensor:
        b, length = ids.shape
        tok = F.embedding(ids, self.token, padding_idx=PAD_ID)
        h = torch.cat([self.cls.expand(b, 1, -1), tok], dim=1) + self.position[: length + 1]
        h = self.dropout(h)
        pad = torch.cat([ids.new_zeros(b, 1, dtype=torch.bool), ids == PAD_ID], dim=1)
        return h.masked_fill(pad.unsqueeze(-1), 0.0)


class EncoderStage(nn.Module):
    """One encoder layer (and, for the last, the final LayerNorm), mask read off the zero rows."""

    def __init__(self, layer: nn.TransformerEncoderLayer, final_norm: nn.LayerNorm | None) -> None:
        super().__init__()
        self.layer = layer
        self.final_norm = final_norm

    def forward(self, h: Tensor) -> Tensor:
        pad = padding_mask(h)
        out = self.layer(h, src_key_padding_mask=pad)
        if self.final_norm is not None:
            out = self.final_norm(out)
        return out.masked_fill(pad.unsqueeze(-1), 0.0)


class TransformerEncoderTrunk(StagedTrunk):
    """Pre-norm Transformer encoder over token ids; see the module docstring for the contract.

    Args:
        vocab_size: number of token ids, the pad id 0 (and any unk id) included; take it from the
            tokenizer (``SmilesTokenizer.vocab_size``).
        width: model width ``D`` (default 128).
        depth: number of encoder layers (default 2).
        heads: attention heads; must divide ``width`` (default 4).
        max_len: the longest token sequence accepted, CLS not counted (default 128).
        dropout: dropout in the embedding stage and inside every layer (default 0.1).
        ff_mult: feed-forward width as a multiple of ``width`` (default 4).
        freeze: stages to freeze after construction (an int: the first n; a list of indices; or
            ``"all"``); stage 0 is the embedding.
    """

    def __init__(
        self,
        vocab_size: int,
        width: int = 128,
        depth: int = 2,
        heads: int = 4,
        max_len: int = 128,
        dropout: float = 0.1,
        ff_mult: int = 4,
        freeze: StageSelection | None = None,
    ) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(
                f"vocab_size must be >= 2 (pad id 0 and at least one token), got {vocab_size}"
            )
        if width < 1 or depth < 1 or heads < 1 or max_len < 1 or ff_mult < 1:
            raise ValueError(
                "TransformerEncoderTrunk needs width, depth, heads, max_len and ff_mult >= 1, got "
                f"{width}, {depth}, {heads}, {max_len}, {ff_mult}"
            )
        if width % heads:
            raise ValueError(f"heads ({heads}) must divide width ({width})")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.vocab_size, self.width, self.depth, self.heads = vocab_size, width, depth, heads
        self.max_len = max_len
        stages: list[nn.Module] = [TokenEmbedding(vocab_size, width, max_len, dropout)]
        for i in range(depth):
            layer = nn.TransformerEncoderLayer(
                width,
                heads,
                dim_feedforward=ff_mult * width,
                dropout=dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            stages.append(EncoderStage(layer, nn.LayerNorm(width) if i == depth - 1 else None))
        self.stages = nn.ModuleList(stages)
        self.stage_widths = [width] * (depth + 1)
        self.feature_spec = FeatureSpec("sequence", width, pooling="cls", summary_positions=1)
        if freeze is not None:
            freeze_stages(self, freeze)

    def _check(self, ids: Tensor) -> None:
        if not isinstance(ids, Tensor) or ids.ndim != 2:
            got = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
            raise ValueError(f"TransformerEncoderTrunk expects token ids [B, L], got {got}")
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise ValueError(f"token ids must be integers (torch.long), got {ids.dtype}")
        if ids.shape[1] > self.max_len:
            raise ValueError(
                f"token sequences of length {ids.shape[1]} exceed max_len={self.max_len}; tokenize "
                "with a max_len at most the trunk's (truncation) or build the trunk with a larger one"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}); got [{int(ids.min())}, "
                f"{int(ids.max())}] (is vocab_size the tokenizer's?)"
            )

    def forward(self, ids: Tensor) -> Tensor:
        self._check(ids)
        return super().forward(ids)

    def forward_features(self, ids: Tensor) -> list[Tensor]:
        self._check(ids)
        return super().forward_features(ids)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, max_len={self.max_len}"


register_trunk(
    "transformer",
    "Transformer encoder over token ids [B, L] (pad 0) with a CLS token; sequence [B, L+1, D] "
    "(CLS first: pooled by sequence tasks, skipped by token tasks, whose labels are [B, L]) "
    "(options: vocab_size, width, depth, heads, max_len, dropout, ff_mult, freeze)",
)(TransformerEncoderTrunk)
