"""The federated config refuses what cannot run, naming the key and the valid values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from polytask.config import ConfigError
from polytask.federated import parse_federated_config


def test_unknown_strategy_lists_the_valid_names(raw_config: Callable[..., dict[str, Any]]) -> None:
    with pytest.raises(ConfigError, match=r"federated\.strategy: .*'fedavg' or 'fedprox'"):
        parse_federated_config(raw_config(strategy="fedsgd"))


def test_fedprox_needs_mu_and_mu_needs_fedprox(raw_config: Callable[..., dict[str, Any]]) -> None:
    with pytest.raises(ConfigError, match="fedprox' needs proximal_mu"):
        parse_federated_config(raw_config(strategy="fedprox"))
    with pytest.raises(ConfigError, match="proximal_mu applies to strategy 'fedprox'"):
        parse_federated_config(raw_config(proximal_mu=0.1))


def test_partition_and_sampling_keys(raw_config: Callable[..., dict[str, Any]]) -> None:
    with pytest.raises(ConfigError, match="unknown partition 'by_row'"):
        parse_federated_config(raw_config(partition="by_row"))
    with pytest.raises(ConfigError, match="clients_per_round or fraction, not both"):
        parse_federated_config(raw_config(clients_per_round=2, fraction=0.5))
    with pytest.raises(ConfigError, match="merge_tasks needs partition 'by_source'"):
        parse_federated_config(raw_config(merge_tasks="score"))
    raw = raw_config()
    raw["training"]["sampling"] = "all"
    with pytest.raises(ConfigError, match=r"training\.sampling does not apply"):
        parse_federated_config(raw)
    config = parse_federated_config(raw_config(partition="by_source"))
    assert config.federated.partition.kind == "by_source"
