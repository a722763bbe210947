"""Trunks from other libraries: timm image backbones and Hugging Face text encoders.

Both libraries are optional extras, imported only when such a trunk is built, so ``import polytask``
and the trunk registry work without them; building one without its library raises an ImportError
naming the extra (``pip install 'polytask[timm]'``, ``pip install 'polytask[hf]'``).

Nothing downloads at run time. Runs must be reproducible offline (CI and the training machines have
no model hub), and a download hidden inside a trunk's construction would make a run's result depend
on what a hub served that day. Pretrained weights are therefore a *local path*: fetch them once,
where there is network, save them beside the data, and name the file (timm) or directory (Hugging
Face) in the config. ``pretrained=True`` and hub names are refused with that explanation.

:class:`TimmTrunk`
    ``timm.create_model(name, features_only=True)``, whose output is the last selected feature map
    (``output="map"``, spec ``map`` with timm's channels and reduction as stride) or its global
    average (``output="vector"``). When timm's feature extractor is a plain sequence of modules
    (``FeatureDictNet``/``FeatureListNet``: ResNets, ConvNeXts, EfficientNets...) those modules are
    regrouped into ``stages``, one ending at each selected feature, so the trunk follows the stage
    contract of :class:`~polytask.models.StagedTrunk` (plus a pooling stage for vectors). Extractors
    built from hooks or ``forward_intermediates`` (vision transformers) have no such sequence: the
    trunk then has no ``stages``, stage-wise architectures refuse it, and only ``freeze="all"`` works.

:class:`HFTextTrunk`
    A ``transformers.AutoModel`` from a local directory (``local_files_only=True``) or built from a
    config (random initialisation). Inputs are the dict a Hugging Face tokenizer returns
    (``input_ids``, ``attention_mask``; :class:`HFTokenize` makes it in the collate), or bare
    ``input_ids`` (the mask is then ``ids != pad_token_id``). Output: ``last_hidden_state`` with
    padded positions zeroed (spec ``sequence``), or its pooled vector. Not stage-compatible: every
    layer needs the attention mask and layer signatures differ between model families, so
    Cross-stitch, MTAN and PLE refuse it; ``stages`` lists the embedding and each layer for freezing
    only (a plain tuple, not an ``nn.ModuleList``).
"""

from __future__ import annotations

import importlib
import inspect
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from polytask.models.features import FeatureSpec
from polytask.models.freeze import StageSelection, freeze_stages
from polytask.models.registry import register_trunk

__all__ = ["CLS_MODEL_TYPES", "HFTextTrunk", "HFTokenize", "TimmTrunk", "timm_trunk"]

# Model families whose tokenizer puts a summary token ([CLS], <s>) first and whose pretraining
# trains it as a sentence summary: sequence heads read position 0 for them, the mean otherwise.
CLS_MODEL_TYPES = frozenset(
    {
        "albert",
        "bert",
        "camembert",
        "deberta",
        "deberta-v2",
        "distilbert",
        "electra",
        "ernie",
        "esm",
        "megatron-bert",
        "modernbert",
        "mpnet",
        "roberta",
        "xlm-roberta",
    }
)


def _require(module: str, extra: str, what: str) -> Any:
    """Import ``module`` or raise an ImportError that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        hint = " (it needs torchvision: scripts/setup-timm.sh builds a venv with both)"
        raise ImportError(
            f"{what} needs the `{module}` package: pip install 'polytask[{extra}]'"
            f"{hint if extra == 'timm' else ''} ({err})"
        ) from err


def _refuse_download(what: str) -> ValueError:
    return ValueError(
        f"{what}: nothing is downloaded at run time (runs must be reproducible offline); give the "
        "path of a local copy of the weights instead (download them once where there is network "
        "and save them beside the data)"
    )


# ---------------------------------------------------------------------------------------- timm
class TimmTrunk(nn.Module):
    """A timm backbone as a trunk (``features_only``); see the module docstring.

    Args:
        name: a timm model name (``timm.list_models()``), e.g. ``"resnet18"``, ``"convnext_atto"``.
        pretrained: ``False`` (random init) or the path of a local weights file of that model
            (``.pth``/``.bin``/``.safetensors``, a full model's state dict: timm's own loader maps
            it onto the feature extractor, dropping the classifier and adapting ``in_chans``).
            ``True`` is refused: it would download.
        out_indices: which of timm's feature levels to extract (timm's default: all); the last one
            is the output, the others end the stages.
        output: ``"map"`` (default) or ``"vector"`` (global average of the map).
        in_chans: input channels.
        freeze: stages to freeze (an int: the first n, a list of indices, or ``"all"``).
        **model_kwargs: passed on to ``timm.create_model`` (``img_size`` for vision
            transformers, ``drop_path_rate``...).
    """

    def __init__(
        self,
        name: str,
        pretrained: str | Path | bool = False,
        out_indices: Sequence[int] | None = None,
        output: Literal["map", "vector"] = "map",
        in_chans: int = 3,
        freeze: StageSelection | None = None,
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        if output not in ("map", "vector"):
            raise ValueError(f"TimmTrunk output must be 'map' or 'vector', got {output!r}")
        if name.startswith(("hf-hub:", "hf_hub:")):
            raise _refuse_download(f"TimmTrunk({name!r}) names a hub model")
        if pretrained is True:
            raise _refuse_download("TimmTrunk(pretrained=True)")
        timm = _require("timm", "timm", "TimmTrunk")
        kwargs: dict[str, Any] = {**model_kwargs, "features_only": True, "in_chans": in_chans}
        if out_indices is not None:
            kwargs["out_indices"] = tuple(int(i) for i in out_indices)
        if pretrained:
            path = Path(pretrained).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"TimmTrunk: pretrained weights file not found: {path}")
            # timm's loader with a local file as the weight source: it filters the checkpoint
            # (classifier dropped, first convolution adapted to in_chans) as for its own weights.
            model = timm.create_model(
                name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
            )
        else:
            model = timm.create_model(name, pretrained=False, **kwargs)
        self.name, self.output, self.in_chans = name, output, in_chans
        self.feature_info = model.feature_info
        channels = int(self.feature_info.channels()[-1])
        stride = int(self.feature_info.reduction()[-1])
        fmt = getattr(model, "output_fmt", "NCHW")
        fmt = getattr(fmt, "value", fmt)
        if fmt != "NCHW":
            raise ValueError(
                f"TimmTrunk({name!r}): features in {fmt} layout; only NCHW is supported"
            )

        self.body: nn.Module | None = None
        groups = _timm_stage_groups(model)
        pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        if groups is not None:
            stages: list[nn.Module] = [nn.Sequential(OrderedDict(g)) for g in groups]
            if output == "vector":
                stages.append(pool)
            self.stages = nn.ModuleList(stages)
        else:
            self.body = model
            self.pool = pool if output == "vector" else None
        if output == "vector":
            self.out_features = channels
            self.feature_spec = FeatureSpec("vector", channels)
        else:
            self.feature_spec = FeatureSpec("map", channels, stride=stride)
        if freeze is not None:
            freeze_stages(self, freeze)

    @property
    def stage_compatible(self) -> bool:
        """Whether the trunk follows the stage contract (Cross-stitch, MTAN, PLE can use it)."""
        return self.body is None

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != self.in_chans:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"TimmTrunk expects images [B, {self.in_chans}, H, W], got {got}")

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Every stage's output (the stage contract); refused when timm exposes no stages."""
        if self.body is not None:
            raise TypeError(
                f"TimmTrunk({self.name!r}) is not stage-compatible: timm builds its feature "
                "extractor from hooks, not a sequence of modules; use it with hard sharing or "
                "a mixture architecture"
            )
        self._check(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward(self, x: Tensor) -> Tensor:
        if self.body is None:
            return self.forward_features(x)[-1]
        self._check(x)
        out = self.body(x)[-1]
        return out if self.pool is None else self.pool(out)


def _timm_stage_groups(model: nn.Module) -> list[dict[str, nn.Module]] | None:
    """timm's feature extractor cut after each returned layer, or None when it is not sequential.

    ``FeatureDictNet`` (and ``FeatureListNet``) run their child modules in order and return the
    outputs of ``return_layers``; cutting the children after each returned one gives stages whose
    chained outputs are exactly timm's features.
    """
    try:
        features = importlib.import_module("timm.models._features")
    except ImportError:
        return None
    dict_net = getattr(features, "FeatureDictNet", None)
    if dict_net is None or not isinstance(model, dict_net):
        return None
    returned = set(getattr(model, "return_layers", {}))
    groups: list[dict[str, nn.Module]] = []
    current: dict[str, nn.Module] = {}
    for name, module in model.items():
        current[name] = module
        if name in returned:
            groups.append(current)
            current = {}
    if not groups or current or len(groups) != len(returned):
        return None
    return groups


# ---------------------------------------------------------------------------- Hugging Face
class HFTextTrunk(nn.Module):
    """A Hugging Face encoder as a trunk; see the module docstring.

    Args:
        path_or_config: a local model directory (``save_pretrained`` output; loaded with
            ``local_files_only=True``), a ``transformers.PretrainedConfig``, or a dict with a
            ``model_type`` key and that config's fields (random initialisation).
        output: ``"sequence"`` (default, ``[B, L, D]`` with padded positions zero) or ``"vector"``
            (``[B, D]``, pooled with ``pooling``).
        pooling: ``"cls"`` or ``"mean"``; by default ``"cls"`` for the BERT-like families in
            :data:`CLS_MODEL_TYPES`, ``"mean"`` otherwise. Declared in the sequence feature spec.
        freeze: stages to freeze (stage 0 the embeddings, stage ``i`` layer ``i``; an int: the
            first n, a list of indices, or ``"all"``).

    A pooler on top of the encoder (BERT's) is removed: its output is not used, and parameters
    that never receive a gradient would be counted as shared parameters all the same.
    """

    def __init__(
        self,
        path_or_config: str | Path | Mapping[str, Any] | Any,
        output: Literal["sequence", "vector"] = "sequence",
        pooling: Literal["cls", "mean"] | None = None,
        freeze: StageSelection | None = None,
    ) -> None:
        super().__init__()
        if output not in ("sequence", "vector"):
            raise ValueError(f"HFTextTrunk output must be 'sequence' or 'vector', got {output!r}")
        if pooling not in (None, "cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        transformers = _require("transformers", "hf", "HFTextTrunk")
        if isinstance(path_or_config, str | Path):
            path = Path(path_or_config).expanduser()
            if not path.is_dir():
                raise _refuse_download(
                    f"HFTextTrunk({str(path_or_config)!r}) is not a local model directory"
                )
            model = transformers.AutoModel.from_pretrained(str(path), local_files_only=True)
            self.source = str(path)
        else:
            config = path_or_config
            if isinstance(config, Mapping):
                fields = dict(config)
                model_type = fields.pop("model_type", None)
                if not model_type:
                    raise ValueError(
                        "an HFTextTrunk config dict needs a 'model_type' (e.g. 'bert')"
                    )
                config = transformers.AutoConfig.for_model(model_type, **fields)
            elif not isinstance(config, transformers.PretrainedConfig):
                raise TypeError(
                    "HFTextTrunk takes a local directory, a dict config or a PretrainedConfig, got "
                    f"{type(config).__name__}"
                )
            model = transformers.AutoModel.from_config(config)
            self.source = f"config:{config.model_type}"
        if getattr(model, "pooler", None) is not None:
            model.pooler = None
        self.model = model
        self.output = output
        config = model.config
        self.model_type = str(getattr(config, "model_type", ""))
        self.pad_token_id = int(getattr(config, "pad_token_id", None) or 0)
        self.pooling: Literal["cls", "mean"] = pooling or (
            "cls" if self.model_type in CLS_MODEL_TYPES else "mean"
        )
        width = int(config.hidden_size)
        self._accepts_token_types = "token_type_ids" in _forward_params(model)
        if output == "vector":
            self.out_features = width
            self.feature_spec = FeatureSpec("vector", width)
        else:
            self.feature_spec = FeatureSpec("sequence", width, pooling=self.pooling)
        if freeze is not None:
            freeze_stages(self, freeze)

    @property
    def stages(self) -> tuple[nn.Module, ...] | None:
        """Embeddings then each layer, for freezing only (not the stage contract: see the module doc)."""
        return _hf_layer_groups(self.model)

    def forward_features(self, inputs: Any) -> list[Tensor]:
        raise TypeError(
            "HFTextTrunk is not stage-compatible: its layers need the attention mask and their "
            "signatures differ between model families; use it with hard sharing or a mixture "
            "architecture"
        )

    def _split(self, inputs: Tensor | Mapping[str, Tensor]) -> dict[str, Tensor]:
        if isinstance(inputs, Tensor):
            ids = inputs
            mask = (ids != self.pad_token_id).long()
            kwargs = {"input_ids": ids, "attention_mask": mask}
        elif isinstance(inputs, Mapping):
            if "input_ids" not in inputs:
                raise ValueError(
                    f"HFTextTrunk expects a dict with 'input_ids' (and 'attention_mask'), got keys "
                    f"{sorted(inputs)}"
                )
            ids = inputs["input_ids"]
            mask = inputs.get("attention_mask")
            if mask is None:
                mask = (ids != self.pad_token_id).long()
            kwargs = {"input_ids": ids, "attention_mask": mask}
            if self._accepts_token_types and "token_type_ids" in inputs:
                kwargs["token_type_ids"] = inputs["token_type_ids"]
        else:
            raise ValueError(
                "HFTextTrunk expects token ids [B, L] or a tokenizer's dict (input_ids, "
                f"attention_mask), got {type(inputs).__name__}"
            )
        if ids.ndim != 2:
            raise ValueError(f"HFTextTrunk expects input_ids [B, L], got {tuple(ids.shape)}")
        return kwargs

    def forward(self, inputs: Tensor | Mapping[str, Tensor]) -> Tensor:
        kwargs = self._split(inputs)
        hidden = self.model(**kwargs).last_hidden_state
        keep = kwargs["attention_mask"].to(hidden.dtype).unsqueeze(-1)
        hidden = hidden * keep
        if self.output == "sequence":
            return hidden
        if self.pooling == "cls":
            return hidden[:, 0]
        return hidden.sum(dim=1) / keep.sum(dim=1).clamp(min=1)


def _forward_params(model: nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _hf_layer_groups(model: nn.Module) -> tuple[nn.Module, ...] | None:
    """``(embeddings, layer 0, layer 1, ...)`` of a Hugging Face encoder, or None if not found.

    The layers are the first ``nn.ModuleList`` as long as ``config.num_hidden_layers``
    (``encoder.layer`` in BERT/RoBERTa, ``transformer.layer`` in DistilBERT).
    """
    embeddings = getattr(model, "embeddings", None)
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not isinstance(embeddings, nn.Module) or not n_layers:
        return None
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return (embeddings, *module)
    return None


class HFTokenize:
    """Strings -> ``{"input_ids", "attention_mask"}`` (long ``[B, L]``) with a local HF tokenizer.

    For the collate (``MultiTaskCollate(transform_inputs=HFTokenize(path, 128))``): tokenising in
    the DataLoader's workers keeps it off the training loop. Picklable: it carries the path and
    options, and each process loads the tokenizer (``local_files_only=True``) on first use.

    Args:
        path: a local tokenizer directory (``save_pretrained`` output).
        max_length: tokens per row, special tokens included; longer texts are truncated.
        padding: ``"max_length"`` (default: every batch has length ``max_length``, so batches can
            be concatenated when evaluation gathers them) or ``"longest"`` (the batch's longest,
            cheaper; then do not concatenate batches).
    """

    def __init__(
        self,
        path: str | Path,
        max_length: int = 128,
        padding: Literal["max_length", "longest"] = "max_length",
    ) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if padding not in ("max_length", "longest"):
            raise ValueError(f"padding must be 'max_length' or 'longest', got {padding!r}")
        self.path = str(Path(path).expanduser())
        self.max_length = max_length
        self.padding = padding
        self._tokenizer: Any = None

    def _load(self) -> Any:
        if self._tokenizer is None:
            transformers = _require("transformers", "hf", "HFTokenize")
            if not Path(self.path).is_dir():
                raise _refuse_download(
                    f"HFTokenize({self.path!r}) is not a local tokenizer directory"
                )
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(
                self.path, local_files_only=True
            )
        return self._tokenizer

    def __call__(self, strings: Sequence[str]) -> dict[str, Tensor]:
        if isinstance(strings, str):
            raise TypeError("HFTokenize takes a list of strings, not one string")
        enc = self._load()(
            list(strings),
            padding=self.padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {
            "input_ids": enc["input_ids"].to(torch.long),
            "attention_mask": enc["attention_mask"].to(torch.long),
        }

    def __getstate__(self) -> dict[str, Any]:
        # The loaded tokenizer stays behind: workers load their own from the path.
        return {**self.__dict__, "_tokenizer": None}

    def __repr__(self) -> str:
        return f"HFTokenize({self.path!r}, max_length={self.max_length}, padding={self.padding!r})"


@register_trunk(
    "timm",
    "a timm backbone, features_only (needs polytask[timm]; options: model_name, pretrained=<local "
    "file>, out_indices, output=map|vector, in_chans, freeze, timm model options)",
)
def timm_trunk(model_name: str, **options: Any) -> TimmTrunk:
    """``TimmTrunk(model_name, ...)`` for the registry.

    The option is ``model_name`` (timm's own word) rather than ``name`` because
    ``create_trunk(name, **options)`` already takes ``name``: the registry's name, here ``"timm"``.
    """
    return TimmTrunk(model_name, **options)


register_trunk(
    "hf",
    "a Hugging Face encoder from a local directory or a config (needs polytask[hf]; options: "
    "path_or_config, output=sequence|vector, pooling, freeze)",
)(HFTextTrunk)
