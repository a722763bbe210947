"""The configuration of a federated run: an experiment's data / model / training parts plus
``federated:`` (rounds, client sampling, local epochs, strategy, head sharing, partition).

Why a config of its own rather than a key of :class:`~polytask.config.ExperimentConfig`: a
federated run trains one balancer, has no single-task baselines and its batches come from each
client's own rows, so half of the experiment keys would be meaningless here; the parts that do
apply (``data``, ``model``, ``balancer``, ``training``) are the very same pydantic models, validated
alike, and :meth:`FederatedConfig.experiment` turns them back into an experiment config for the
shared loaders and model builder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from polytask.config import (
    BalancerConfig,
    ConfigError,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    SummaryMetric,
    TrainingConfig,
    format_validation_error,
    read_yaml,
)

__all__ = [
    "STRATEGIES",
    "FederatedConfig",
    "FederatedSettings",
    "IidPartition",
    "load_federated_config",
    "parse_federated_config",
]


class StrictModel(BaseModel):
    """Unknown keys are errors, as in every polytask config: a typo never falls back silently."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: Flower strategies a config may name (``federated.strategy``).
STRATEGIES = ("fedavg", "fedprox")


class IidPartition(StrictModel):
    """Rows shuffled with the run seed and dealt to ``clients`` clients (train, val, test alike)."""

    clients: int = Field(ge=1, description="number of clients the rows are dealt to")


class PartitionConfig(StrictModel):
    """``partition: by_source`` or ``partition: {iid: {clients: N}}``."""

    by_source: bool = Field(
        False,
        description="one client per data source (data.sources, or a several-datasets loader "
        "such as school_sources): a client holds its source's training rows and the validation "
        "and test rows of its own tasks",
    )
    iid: IidPartition | None = Field(None, description="rows dealt at random to N clients")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, raw: Any) -> Any:
        if raw == "by_source":
            return {"by_source": True}
        if isinstance(raw, str):
            raise ValueError(
                f"unknown partition {raw!r}; expected 'by_source' or {{iid: {{clients: N}}}}"
            )
        return raw

    @model_validator(mode="after")
    def _exactly_one(self) -> PartitionConfig:
        if self.by_source == (self.iid is not None):
            raise ValueError("give exactly one partition: 'by_source' or {iid: {clients: N}}")
        return self

    @property
    def kind(self) -> str:
        return "by_source" if self.by_source else "iid"


class FederatedSettings(StrictModel):
    """How the federation trains: Flower's strategy over the shared trunk, private heads."""

    rounds: int = Field(
        ge=1, description="federated rounds (each: local training, then evaluation)"
    )
    clients_per_round: int | None = Field(
        None, ge=1, description="clients sampled for training each round (default: fraction)"
    )
    fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="share of the clients sampled for training each round (default 1.0)",
    )
    local_epochs: int = Field(
        1, ge=1, description="passes over its own rows a client makes per round"
    )
    strategy: Literal["fedavg", "fedprox"] = Field(
        "fedavg", description="Flower's server strategy: fedavg or fedprox"
    )
    proximal_mu: float | None = Field(
        None,
        gt=0,
        description="fedprox only: weight mu of the proximal term mu/2 ||w - w_global||^2 on the "
        "averaged weights",
    )
    personal_heads: bool = Field(
        True,
        description="true: task heads stay on their client (FedPer), only the shared trunk is "
        "averaged; false: heads are averaged too (one global model)",
    )
    merge_tasks: str | None = Field(
        None,
        description="by_source only: every client labels exactly one task and they are the same "
        "quantity (School: each school's exam score); train them as one task of this name, with "
        "a head per client (personal_heads) or one global head",
    )
    partition: PartitionConfig = Field(description="how the rows are dealt to clients")
    missing: dict[str, list[str]] = Field(
        default_factory=dict,
        description="client -> tasks whose labels that client does not hold (removed from its "
        "train, validation and test rows)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> FederatedSettings:
        if self.clients_per_round is not None and self.fraction is not None:
            raise ValueError("give clients_per_round or fraction, not both")
        if self.strategy == "fedprox" and self.proximal_mu is None:
            raise ValueError("strategy 'fedprox' needs proximal_mu > 0")
        if self.strategy != "fedprox" and self.proximal_mu is not None:
            raise ValueError(f"proximal_mu applies to strategy 'fedprox', not {self.strategy!r}")
        if self.merge_tasks is not None and not self.partition.by_source:
            raise ValueError("merge_tasks needs partition 'by_source' (one task per client)")
        return self


class FederatedConfig(StrictModel):
    """A federated run: data, model, one balancer, training (per client and round), federated."""

    name: str = Field("federated", description="the run folder name under output_dir")
    data: DataConfig = Field(
        description="what the clients hold (partitioned by federated.partition)"
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="trunk and architecture")
    balancer: BalancerConfig = Field(
        default_factory=BalancerConfig, description="how each client combines its task losses"
    )
    training: TrainingConfig = Field(
        default_factory=TrainingConfig,
        description="local optimisation (lr, batch_size, ...); training.epochs is unused "
        "(federated.rounds x local_epochs), selection picks the round on validation",
    )
    federated: FederatedSettings = Field(description="rounds, sampling, strategy, heads, partition")
    summary_metrics: list[SummaryMetric] = Field(
        default_factory=list, description="whole-model metrics pooled over every client's rows"
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0], min_length=1, description="one federated run per seed"
    )
    output_dir: str = Field("runs", description="where the run folder goes")

    @model_validator(mode="after")
    def _applicable(self) -> FederatedConfig:
        if self.training.sampling is not None:
            raise ValueError(
                "training.sampling does not apply to a federated run: each client trains on "
                "its own rows"
            )
        if self.training.selection == "delta_m":
            raise ValueError(
                "training.selection 'delta_m' needs single-task baselines, which a federated run "
                "does not train; use val_loss, mean_primary or <task>/<metric>"
            )
        return self

    def experiment(self) -> ExperimentConfig:
        """The same data / model / balancer / training as an experiment config (no baselines),
        for the shared loaders and model builder."""
        return ExperimentConfig(
            name=self.name,
            data=self.data,
            model=self.model,
            balancers=[self.balancer],
            training=self.training,
            baselines={"stl": False},  # type: ignore[arg-type]
            summary_metrics=self.summary_metrics,
            seeds=self.seeds,
            output_dir=self.output_dir,
        )

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def parse_federated_config(raw: Any, source: str = "") -> FederatedConfig:
    """Validate a mapping; every bad key is named with its path (``federated.strategy: ...``)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"federated configuration {source} must be a mapping at the top level")
    try:
        return FederatedConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, "federated configuration")) from None


def load_federated_config(path: str | Path) -> FederatedConfig:
    """Read and validate a federated YAML file."""
    return parse_federated_config(read_yaml(path, "configuration file", ConfigError), str(path))
