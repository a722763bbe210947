"""Multi-task architectures and trunks; every one is reachable by name through the registry."""

# Importing each architecture module registers it.
from polytask.models import cross_stitch as _cross_stitch  # noqa: F401
from polytask.models import dselect_k as _dselect_k  # noqa: F401
from polytask.models import hard_sharing as _hard_sharing  # noqa: F401
from polytask.models import mmoe as _mmoe  # noqa: F401
from polytask.models import mtan as _mtan  # noqa: F401
from polytask.models import multi_input as _multi_input  # noqa: F401
from polytask.models import ple as _ple  # noqa: F401
from polytask.models import pretrained as _pretrained  # noqa: F401
from polytask.models import resnet as _resnet  # noqa: F401
from polytask.models import tabular as _tabular  # noqa: F401
from polytask.models import transformer as _transformer  # noqa: F401
from polytask.models.base import HardSharing, MultiTaskModel, infer_out_features
from polytask.models.features import FeatureSpec
from polytask.models.heads import make_task_head
from polytask.models.multi_input import MultiInputTrunk
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
    "FeatureSpec",
    "HardSharing",
    "MultiInputTrunk",
    "MultiTaskModel",
    "SmallCNN",
    "StagedTrunk",
    "available_architectures",
    "available_trunks",
    "create_model",
    "create_trunk",
    "infer_out_features",
    "make_task_head",
    "register_architecture",
    "register_trunk",
]
