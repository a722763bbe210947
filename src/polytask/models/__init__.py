"""Multi-task architectures and trunks; every one is reachable by name through the registry."""

from polytask.models import (  # noqa: F401  (registers built-ins)
    cross_stitch as _cross_stitch,
    dselect_k as _dselect_k,
    hard_sharing as _hard_sharing,
    mmoe as _mmoe,
    mtan as _mtan,
    ple as _ple,
)
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
