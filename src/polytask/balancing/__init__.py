"""Loss-weighting and gradient-balancing methods, one private module each, behind a registry.

``create_balancer(name, task_names, **hyperparameters)`` builds one; ``available()`` lists them
with their family, cost and reference. The training loop only sees the
:class:`~polytask.balancing.base.Balancer` contract and the
:class:`~polytask.balancing.engine.GradientEngine`.
"""

from polytask.balancing import (  # noqa: F401  (importing a module registers its method)
    _aligned_mtl,
    _cagrad,
    _config,
    _db_mtl,
    _dualproj,
    _dwa,
    _equal,
    _excess_mtl,
    _fairgrad,
    _famo,
    _gls,
    _go4align,
    _graddrop,
    _gradnorm,
    _gradvac,
    _imtl_g,
    _imtl_l,
    _mgda,
    _mgda_ub,
    _moco,
    _nash_mtl,
    _pcgrad,
    _rlw,
    _scale_invariant,
    _sdmgrad,
    _static,
    _stch,
    _uncertainty,
    _upgrad,
)
from polytask.balancing.base import (
    Balancer,
    BalancerError,
    Combination,
    Needs,
    StepInfo,
    scatter_present,
)
from polytask.balancing.engine import EngineError, GradientEngine, StepOutput
from polytask.balancing.registry import (
    BalancerInfo,
    available,
    create_balancer,
    get_balancer_class,
    register_balancer,
)

__all__ = [
    "Balancer",
    "BalancerError",
    "BalancerInfo",
    "Combination",
    "EngineError",
    "GradientEngine",
    "Needs",
    "StepInfo",
    "StepOutput",
    "available",
    "create_balancer",
    "get_balancer_class",
    "register_balancer",
    "scatter_present",
]
