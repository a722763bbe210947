"""Experiment configuration: YAML in, validated by pydantic, resolved YAML out.

Unknown keys and wrong types fail with the key's full path (``training.lr: Input should be a valid
number``), so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from polytask.training.settings import TrainSettings

__all__ = [
    "BalancerConfig",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "load_config",
]


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names every offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Either a registered ``dataset`` (with its loader ``options``) or a ``table`` file."""

    dataset: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    table: str | None = None
    targets: list[str] = Field(default_factory=list)
    kinds: dict[str, Literal["binary", "multiclass", "multilabel", "regression"]] = Field(
        default_factory=dict
    )
    features: list[str] | None = None
    split_seed: int | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.dataset is None) == (self.table is None):
            raise ValueError("give exactly one of 'dataset' or 'table'")
        if self.table is not None and not self.targets:
            raise ValueError("a table needs at least one entry in 'targets'")
        return self


class ModelConfig(_Strict):
    architecture: str = "hard_sharing"
    trunk: str = "mlp"
    trunk_options: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)


class BalancerConfig(_Strict):
    name: str = "equal"
    options: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None

    @property
    def display(self) -> str:
        return self.label or self.name


class TrainingConfig(_Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    momentum: float = 0.9
    scheduler: Literal["none", "cosine", "step", "plateau"] = "none"
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.5, gt=0, le=1)
    grad_clip: float | None = Field(None, gt=0)
    device: str = "auto"
    amp: bool = False
    patience: int | None = Field(None, ge=1)
    selection: str = "auto"
    engine: Literal["jacobian", "gramian", "representation"] = "jacobian"
    chunk_size: int | None = Field(None, ge=1)
    dist_mode: Literal["exact", "cheap"] = "exact"
    eval_batch_size: int = Field(1024, ge=1)
    progress: bool = True
    tensorboard: bool = True

    def settings(self, seed: int, **extra: Any) -> TrainSettings:
        return TrainSettings(**self.model_dump(), seed=seed, extra=dict(extra))


class BaselineConfig(_Strict):
    stl: bool = True


class ExperimentConfig(_Strict):
    """A whole experiment: data, model, the balancers to compare, training, baselines, seeds."""

    name: str = "experiment"
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    balancers: list[BalancerConfig] = Field(default_factory=lambda: [BalancerConfig()])
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    baselines: BaselineConfig = Field(default_factory=BaselineConfig)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    output_dir: str = "runs"

    @model_validator(mode="after")
    def _unique_labels(self) -> ExperimentConfig:
        labels = [b.display for b in self.balancers]
        if len(set(labels)) != len(labels):
            raise ValueError(f"balancer labels must be unique, got {labels}; set 'label'")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration {source}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


def parse_config(raw: Any, source: str = "") -> ExperimentConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"configuration {source} must be a mapping at the top level")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read and validate a YAML experiment file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"configuration {path} is not valid YAML: {err}") from None
    if overrides:
        raw = {**raw, **overrides}
    return parse_config(raw, str(path))
