"""Multi-task architectures and trunks; every one is reachable by name through the registry."""

from polytask.models import hard_sharing as _hard_sharing  # noqa: F401  (registers built-ins)
from polytask.models.base import HardSharing, MultiTaskModel, infer_out_features
from polytask.models.registry import (
    available_architectures,
    available_trunks,
    create_model,
    create_trunk,
    register_architecture,
    register_trunk,
)
from polytask.models.trunks import MLP, SmallCNN, StagedTrunk

__all__ = [
    "MLP",
    "HardSharing",
    "MultiTaskModel",
    "SmallCNN",
    "StagedTrunk",
    "available_architectures",
    "available_trunks",
    "create_model",
    "create_trunk",
    "infer_out_features",
    "register_architecture",
    "register_trunk",
]
