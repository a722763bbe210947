"""Federated multi-task learning on Flower: a shared trunk averaged across clients, task heads
private to each client (FedPer-style), missing labels and missing tasks per client.

Flower (``pip install 'polytask[federated]'``) is imported by the modules that need it:
``client`` (the ClientApp), ``server`` (the ServerApp), ``grid`` (the in-process Grid); this
package's top level only needs the config and the partition. See docs/federated.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from polytask.federated.config import (
    STRATEGIES,
    FederatedConfig,
    FederatedSettings,
    load_federated_config,
    parse_federated_config,
)
from polytask.federated.partition import ClientData, FederatedError, Federation, partition_clients

if TYPE_CHECKING:
    from polytask.federated.run import FederatedResult

__all__ = [
    "STRATEGIES",
    "ClientData",
    "FederatedConfig",
    "FederatedError",
    "FederatedSettings",
    "Federation",
    "load_federated_config",
    "parse_federated_config",
    "partition_clients",
    "run_federated",
]


def run_federated(config: FederatedConfig, *args: Any, **kwargs: Any) -> FederatedResult:
    """See :func:`polytask.federated.run.run_federated` (imports Flower when called)."""
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise FederatedError(
            "federated runs need Flower: pip install 'polytask[federated]'"
        ) from None
    from polytask.federated.run import run_federated as run

    return run(config, *args, **kwargs)
