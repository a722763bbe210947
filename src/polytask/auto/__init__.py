"""Automatic choices within a time budget: ``polytask advise`` and ``polytask fit --auto``.

* :mod:`polytask.auto.budget`: the wall-clock budget (parse, spend, account);
* :mod:`polytask.auto.search`: the trainings compared (reference, task groups, Optuna search);
* :mod:`polytask.auto.advise`: the decision between one shared model, groups and separate models,
  the balancer and the hyper-parameters, on validation only, and the config that reproduces it;
* :mod:`polytask.auto.quick`: ``polytask fit``'s default, the quick choice between one shared
  model, separate models and the tasks sharing helped, on one seed and without a budget.
"""

from polytask.auto.advise import Advice, AdviceError, advise, advise_config, table_config
from polytask.auto.budget import DEFAULT_AUTO_BUDGET_S, Budget, BudgetError, parse_budget
from polytask.auto.quick import quick_advise

__all__ = [
    "DEFAULT_AUTO_BUDGET_S",
    "Advice",
    "AdviceError",
    "Budget",
    "BudgetError",
    "advise",
    "advise_config",
    "parse_budget",
    "quick_advise",
    "table_config",
]
