"""A trunk for tables with categorical columns as learned embeddings (recommendation-style MTL).

Why: MMoE, PLE and their kin were designed for recommendation data, where every categorical column
(user segment, occupation, country, ...) is looked up in its own learned embedding table rather
than one-hot encoded; one-hot inputs make the first layer as wide as the total number of
categories and give every category its own independent weights. Load a table with
``categorical_encoding="embedding"`` (:func:`polytask.data.load_table`,
:func:`polytask.data.census.load_census`) and the inputs are ``{"numeric": float [B, F],
"categorical": long [B, C]}``; this trunk embeds each code column, concatenates the embeddings with
the numeric features and runs an MLP.

Embedding width (``embedding_dim=None``): ``min(50, round(1.6 * n ** 0.56))`` for a column with
``n`` codes (the unknown code included). This is fastai's empirical rule (``emb_sz_rule``, fitted
by Howard on many tabular problems): it grows sub-linearly, so a 2-category column gets 3 dims and
a 52-category one 15, about as much as an MLP's first layer can use. The cap of 50 (fastai's is
600) keeps a column of ids from dominating the concatenated input of a small MLP.

Unknown row: code 0 means "no known category" (unseen in training, or a missing cell). Its row is
:class:`CategoryEmbedding`'s, zero at initialisation and after any re-initialisation, and trainable:
training rows with missing cells move it; when there are none it stays zero, a neutral input like
the all-zero block one-hot gives an unseen value.

Stage contract: the lookup and concatenation are the trunk's pre-processing (``embed``), done
before the first stage, so the stages are the MLP's and every architecture works:

* ``hard_sharing``, ``mtan``: one trunk, one set of embedding tables, shared by every task.
* ``cross_stitch``, ``ple`` with several levels: the shared :class:`~polytask.models.mmoe.InputPrep`
  holds the experts' / columns' embedding tables; the per-task columns / experts copy the stages
  alone.
* ``mmoe``, ``cgc`` (``ple`` with one level), ``dselect_k``: each expert is a whole copy of the
  trunk, so each expert has its *own* embedding tables; every one is a shared module
  (task-specific experts' are task modules), so nothing is trained by the wrong tasks, at
  ``num_experts`` times the embedding parameters. Recommendation codebases often share one set of
  tables below the experts instead; here the expert is the unit of copying, as for every other
  trunk.
* The gates of ``mmoe``, ``ple``, ``cgc`` and ``dselect_k`` read named inputs through their own
  feature extractor (``gate_input="auto"`` gives ``"features"``), a copy of the pre-processing
  and first stage: one more, shared, set of tables.

``tests/models/test_tabular.py`` pins down this placement for each architecture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from polytask.data.batch import Inputs
from polytask.models.features import FeatureSpec
from polytask.models.registry import register_trunk
from polytask.models.trunks import MLP, StagedTrunk

__all__ = ["MAX_EMBEDDING_DIM", "CategoryEmbedding", "TabularTrunk", "embedding_width", "tabular"]

MAX_EMBEDDING_DIM = 50
INPUT_KEYS = ("numeric", "categorical")


def embedding_width(cardinality: int, cap: int = MAX_EMBEDDING_DIM) -> int:
    """``min(cap, round(1.6 * cardinality ** 0.56))``, at least 1 (see the module docstring)."""
    if cardinality < 1:
        raise ValueError(f"a categorical column needs at least 1 code, got {cardinality}")
    return max(1, min(cap, round(1.6 * cardinality**0.56)))


class CategoryEmbedding(nn.Embedding):
    """An embedding table whose row 0 (the unknown code) starts at zero, and stays trainable.

    Not ``padding_idx=0``: a padding row never learns, but here missing cells in training are
    coded 0 too and should teach the model what "missing" means.
    """

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            self.weight[0].zero_()


class TabularTrunk(StagedTrunk):
    """Embeddings of the categorical codes, concatenated with the numeric features, then an MLP.

    Args:
        cardinalities: codes per categorical column, the unknown code 0 included (what the
            loaders record in ``info["cardinalities"]``); one embedding table each.
        numeric_features: width of ``inputs["numeric"]`` (may be 0).
        hidden: the MLP's hidden sizes; each layer is one stage.
        embedding_dim: one width for every table; ``None`` applies :func:`embedding_width`.
        dropout: dropout after each hidden layer.
        layer_norm: layer normalisation in each hidden layer.
    """

    def __init__(
        self,
        cardinalities: Sequence[int],
        numeric_features: int,
        hidden: Sequence[int] = (256, 128),
        embedding_dim: int | None = None,
        dropout: float = 0.0,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        cards = [int(c) for c in cardinalities]
        if any(c < 1 for c in cards):
            raise ValueError(f"tabular: every cardinality must be >= 1, got {cards}")
        if numeric_features < 0:
            raise ValueError(f"tabular: numeric_features must be >= 0, got {numeric_features}")
        if embedding_dim is not None and embedding_dim < 1:
            raise ValueError(f"tabular: embedding_dim must be >= 1, got {embedding_dim}")
        self.cardinalities = cards
        self.numeric_features = int(numeric_features)
        self.embedding_widths = [embedding_dim or embedding_width(c) for c in cards]
        self.embeddings = nn.ModuleList(
            CategoryEmbedding(c, w) for c, w in zip(cards, self.embedding_widths, strict=True)
        )
        self.in_features = self.numeric_features + sum(self.embedding_widths)
        if self.in_features < 1:
            raise ValueError("tabular: no numeric feature and no categorical column: nothing to read")
        mlp = MLP(self.in_features, hidden, dropout, layer_norm)
        self.stages = mlp.stages
        self.stage_widths = list(mlp.stage_widths)
        self.out_features = mlp.out_features
        self.feature_spec = FeatureSpec("vector", self.out_features)
        # not persistent: derived from the constructor, so checkpoints hold only the weights
        self.register_buffer("_limits", torch.tensor(cards, dtype=torch.long), persistent=False)

    def _check(self, x: Inputs) -> tuple[Tensor, Tensor]:
        if not isinstance(x, Mapping):
            raise TypeError(
                f"tabular expects named inputs {{'numeric', 'categorical'}}, got one "
                f"{type(x).__name__}; load the table with categorical_encoding='embedding'"
            )
        missing = [k for k in INPUT_KEYS if k not in x]
        if missing:
            raise KeyError(f"tabular: input(s) {missing} missing from the batch; it has {sorted(x)}")
        numeric, codes = x["numeric"], x["categorical"]
        if numeric.ndim != 2 or numeric.shape[1] != self.numeric_features:
            raise ValueError(
                f"tabular: inputs['numeric'] must be [B, {self.numeric_features}], got "
                f"{list(numeric.shape)}"
            )
        if codes.ndim != 2 or codes.shape[1] != len(self.cardinalities):
            raise ValueError(
                f"tabular: inputs['categorical'] must be [B, {len(self.cardinalities)}] codes, got "
                f"{list(codes.shape)}"
            )
        if codes.is_floating_point() or codes.dtype == torch.bool:
            raise TypeError(f"tabular: inputs['categorical'] must be integer codes, got {codes.dtype}")
        if codes.numel():
            bad = (codes < 0) | (codes >= self._limits)
            if bool(bad.any()):
                row, col = (int(i) for i in bad.nonzero()[0])
                raise ValueError(
                    f"tabular: categorical column {col} has code {int(codes[row, col])} at batch "
                    f"row {row}, outside 0..{self.cardinalities[col] - 1} (its cardinality is "
                    f"{self.cardinalities[col]})"
                )
        return numeric, codes

    def embed(self, x: Inputs) -> Tensor:
        """The MLP's input ``[B, numeric_features + Σ widths]``: the pre-processing before stage 0."""
        numeric, codes = self._check(x)
        parts = [numeric.float()]
        parts += [table(codes[:, j]) for j, table in enumerate(self.embeddings)]
        return torch.cat(parts, dim=1)

    def forward_features(self, x: Inputs) -> list[Tensor]:  # type: ignore[override]
        return super().forward_features(self.embed(x))

    def forward(self, x: Inputs) -> Tensor:  # type: ignore[override]
        return super().forward(self.embed(x))


@register_trunk(
    "tabular",
    "embedding per categorical column + numeric features, then an MLP (needs data loaded with "
    "categorical_encoding: embedding)",
)
def tabular(
    cardinalities: Sequence[int] | None = None,
    numeric_features: int | None = None,
    hidden: Sequence[int] = (256, 128),
    embedding_dim: int | None = None,
    dropout: float = 0.0,
    layer_norm: bool = False,
    example_input: Inputs | None = None,
) -> TabularTrunk:
    """Build a :class:`TabularTrunk`; the experiment passes ``cardinalities`` and the example.

    ``cardinalities`` come from the preprocessing (the loader's ``info["cardinalities"]``), never
    from the example batch: a batch's largest code says nothing about categories it lacks.
    ``numeric_features`` is read off ``example_input["numeric"]`` when not given.
    """
    if cardinalities is None:
        raise ValueError(
            "tabular needs the cardinalities of the categorical columns: load the data with "
            "categorical_encoding: embedding (the loader records info['cardinalities']) or give "
            "trunk_options.cardinalities"
        )
    if example_input is not None:
        if not isinstance(example_input, Mapping) or any(k not in example_input for k in INPUT_KEYS):
            got = sorted(example_input) if isinstance(example_input, Mapping) else "one tensor"
            raise ValueError(
                f"tabular reads inputs {{'numeric', 'categorical'}}, the data gives {got}; load "
                "the table with categorical_encoding: embedding"
            )
        width = int(example_input["numeric"].shape[1])
        if numeric_features is not None and numeric_features != width:
            raise ValueError(
                f"tabular: numeric_features={numeric_features} but the data has {width} numeric columns"
            )
        numeric_features = width
        columns = int(example_input["categorical"].shape[1])
        if columns != len(cardinalities):
            raise ValueError(
                f"tabular: {len(cardinalities)} cardinalities for {columns} categorical columns"
            )
    if numeric_features is None:
        raise ValueError("tabular needs numeric_features (or an example_input to read it from)")
    return TabularTrunk(cardinalities, numeric_features, hidden, embedding_dim, dropout, layer_norm)
