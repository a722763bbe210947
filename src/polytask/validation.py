"""Check every component an experiment names, and every option given to it, before training.

Why: the config schema (:mod:`polytask.config`) checks the *shape* of a config, but component
names (balancers, architectures, trunks, data sets) and their options are free strings and
mappings that the registries only look at when the component is built. An experiment builds its
components one after another: a misspelt second balancer (``pcgrd``) used to surface after the
single-task baselines and the first balancer had trained, leaving half-finished run folders.
:func:`validate_components` resolves all of them against the registries and the factories'
signatures first, so a typo fails in a second, with every problem at once, each named by its key
path (``balancers.1.name``) and listing the valid choices.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from polytask.config import ConfigError, DataConfig, ExperimentConfig, ModelConfig

__all__ = ["accepted_options", "validate_components"]

# Parameters a factory receives from polytask itself, never from a config's ``options``.
_BALANCER_FIXED = {"self", "task_names"}
_ARCHITECTURE_FIXED = {"self", "trunk", "tasks", "example_input"}
# load_table's own arguments come from data.table / targets / kinds / features / split_seed.
_TABLE_FIXED = {"path", "targets", "kinds", "features", "seed"}
_SELECTION_RULES = ("auto", "delta_m", "mean_primary", "val_loss")


def accepted_options(
    factory: Callable[..., Any], fixed: Iterable[str] = (), follow_class: bool = False
) -> list[str] | None:
    """The keyword options ``factory`` accepts (minus ``fixed``); ``None`` when it takes any.

    A factory that passes ``**options`` on is followed when it says where: a ``__signature__``
    (what :mod:`polytask.data.registry` sets on forwarding loaders) is used as is, and with
    ``follow_class`` the class named by the return annotation is read (an architecture factory
    ``def mmoe(trunk, tasks, **options) -> MMoE`` takes what ``MMoE.__init__`` takes).
    """
    skip = set(fixed)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    names: list[str] = []
    open_ended = False
    for p in signature.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            open_ended = True
        elif p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.append(p.name)
    if open_ended and follow_class:
        try:
            target = inspect.signature(factory, eval_str=True).return_annotation
        except (NameError, TypeError, ValueError):
            target = None
        if inspect.isclass(target):
            more = accepted_options(target, skip)
            if more is None:
                return None
            names += more
            open_ended = False
    if open_ended:
        return None
    return sorted(n for n in dict.fromkeys(names) if n not in skip)


def _choices(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "(none)"


def _unknown_name(where: str, what: str, name: str, known: Iterable[str]) -> str:
    """``where: unknown what 'name' (did you mean x?); choose one of: a, b, c``."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{where}: unknown {what} {name!r}{hint}; choose one of: {_choices(known)}"


def _check_options(
    where: str, what: str, options: Mapping[str, Any], accepted: list[str] | None
) -> list[str]:
    """One problem per option that the component does not take."""
    if accepted is None:
        return []
    problems = []
    for key in options:
        if key in accepted:
            continue
        if not accepted:
            problems.append(f"{where}.{key}: {what} takes no options")
            continue
        close = difflib.get_close_matches(str(key), accepted, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.append(
            f"{where}.{key}: unknown option of {what}{hint}; choose from: {_choices(accepted)}"
        )
    return problems


def _check_dataset(where: str, name: str, options: Mapping[str, Any], single: bool) -> list[str]:
    from polytask.data import registry

    known = {**registry._REGISTRY, **registry._MULTI}
    if name not in known:
        return [_unknown_name(f"{where}.dataset", "data set", name, known)]
    if single and registry.is_multisource(name):
        return [
            f"{where}.dataset: {name!r} is already several data sets; give it as data.dataset "
            "instead of a source"
        ]
    loader = known[name][1]
    return _check_options(f"{where}.options", f"data set {name!r}", options, accepted_options(loader))


def _check_data(data: DataConfig) -> list[str]:
    if data.table is not None and data.images is not None:
        from polytask.data.image_table import load_image_table

        accepted = accepted_options(load_image_table, _TABLE_FIXED | {"table", "images"})
        problems = _check_options("data.options", "an image table", data.options, accepted)
        if "seed" in data.options:
            problems.append("data.options.seed: give the split seed as data.split_seed")
        return problems
    if data.table is not None:
        from polytask.data.table import load_table

        accepted = accepted_options(load_table, _TABLE_FIXED)
        problems = _check_options("data.options", "a table", data.options, accepted)
        if "seed" in data.options:
            problems.append("data.options.seed: give the split seed as data.split_seed")
        return problems
    if data.sources is not None:
        problems = []
        for i, src in enumerate(data.sources):
            problems += _check_dataset(f"data.sources.{i}", src.dataset, src.options, single=True)
        return problems
    assert data.dataset is not None
    return _check_dataset("data", data.dataset, data.options, single=False)


def _check_model(where: str, model: ModelConfig) -> list[str]:
    from polytask.models import registry

    problems = []
    registry._load_builtins()
    if model.trunk not in registry._TRUNKS:
        problems.append(_unknown_name(f"{where}.trunk", "trunk", model.trunk, registry._TRUNKS))
    else:
        problems += _check_options(
            f"{where}.trunk_options", f"trunk {model.trunk!r}", model.trunk_options,
            accepted_options(registry._TRUNKS[model.trunk][0]),
        )
    arch = model.architecture
    if arch not in registry._ARCHITECTURES:
        problems.append(
            _unknown_name(f"{where}.architecture", "architecture", arch, registry._ARCHITECTURES)
        )
    else:
        factory = registry._ARCHITECTURES[arch][0]
        problems += _check_options(
            f"{where}.options", f"architecture {arch!r}", model.options,
            accepted_options(factory, _ARCHITECTURE_FIXED, follow_class=True),
        )
    return problems


def _check_balancer(
    where: str, name: str, options: Mapping[str, Any], engine: str
) -> list[str]:
    from polytask.balancing import available, get_balancer_class
    from polytask.balancing.base import BalancerError

    known = available()
    if name not in known:
        return [_unknown_name(f"{where}.name", "balancer", name, known)]
    cls = get_balancer_class(name)
    accepted = accepted_options(cls, _BALANCER_FIXED)
    problems = _check_options(f"{where}.options", f"balancer {name!r}", options, accepted)
    if cls.needs.gradients == "jacobian" and engine == "gramian":
        problems.append(
            f"{where}.name: balancer {name!r} needs the per-task gradients themselves, which "
            "training.engine: gramian does not compute; use engine jacobian or representation"
        )
    if problems or any(isinstance(v, Mapping) for v in options.values()):
        return problems  # per-task mappings can only be checked against the data's tasks
    try:  # the constructor checks the values (ranges, choices) and needs no data
        cls(["task_a", "task_b"], **options)
    except (BalancerError, ValueError, TypeError) as err:
        problems.append(f"{where}.options: {err}")
    return problems


def _check_training(config: ExperimentConfig) -> list[str]:
    import torch

    t, d = config.training, config.data
    problems = []
    if t.device != "auto":
        try:
            torch.device(t.device)
        except (RuntimeError, ValueError) as err:
            problems.append(f"training.device: {err}")
    rule = t.selection
    task, sep, metric = rule.rpartition("/")  # a task name may hold "/", a metric never
    if rule not in _SELECTION_RULES and not (sep and task and metric):
        problems.append(
            f"training.selection: unknown rule {rule!r}; choose one of: "
            f"{', '.join(_SELECTION_RULES)} or <task>/<metric>"
        )
    elif rule == "delta_m" and not config.baselines.stl:
        problems.append("training.selection: delta_m needs the single-task baselines (baselines.stl)")
    elif sep and d.table is not None and task not in d.targets:
        problems.append(
            f"training.selection: task {task!r} is not a target; choose one of: "
            f"{_choices(d.targets)}"
        )
    if t.sampling is not None:
        from polytask.data.registry import is_multisource

        several = d.sources is not None or (d.dataset is not None and is_multisource(d.dataset))
        if not several:
            problems.append(
                "training.sampling: the data is a single data set; sampling applies to several "
                "(data.sources or a several-datasets loader such as school_sources)"
            )
        elif d.sources is not None and t.sampling.batch_sizes is not None:
            names = [s.display for s in d.sources]
            unknown = sorted(set(t.sampling.batch_sizes) - set(names))
            if unknown:
                problems.append(
                    f"training.sampling.batch_sizes: unknown source(s) {', '.join(unknown)}; "
                    f"choose from: {_choices(names)}"
                )
    return problems


def validate_components(config: ExperimentConfig, check_data: bool = True) -> None:
    """Raise :class:`ConfigError` listing every unknown name or option in ``config``.

    ``check_data=False`` skips ``data`` (the data were given from Python: ``splits_override``).

    Checks the data set (or table, or each source) and its options, each model's trunk,
    architecture and their options, each balancer and its options (their values too, by building
    it on two placeholder tasks, unless an option maps task names), the engine mode against each
    balancer, the selection rule, the device name and the sampling settings. Loads no data and
    builds no model, so it takes well under a second.
    """
    problems = _check_data(config.data) if check_data else []
    models = config.models if config.models is not None else [config.model]
    for i, model in enumerate(models):
        assert model is not None
        problems += _check_model(f"models.{i}" if config.models is not None else "model", model)
    for i, bc in enumerate(config.balancers):
        problems += _check_balancer(f"balancers.{i}", bc.name, bc.options, config.training.engine)
    problems += _check_training(config)
    if problems:
        raise ConfigError(
            "invalid configuration (nothing was trained):\n" + "\n".join(f"  {p}" for p in problems)
        )
