"""Experiment configuration: YAML in, validated by pydantic, resolved YAML out.

Unknown keys and wrong types fail with the key's full path (``training.lr: Input should be a valid
number``), so a typo never silently falls back to a default.

Several data sets: ``data.sources`` lists per-source data set specs (or ``data.dataset`` names a
several-datasets loader such as ``school_sources``), and ``training.sampling`` says which source
feeds each step (:mod:`polytask.data.sampling`). Several architectures: ``models`` (a labelled
list) replaces ``model`` to compare them on the same data, splits, balancers and baselines.
"""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:  # TrainSettings extends TrainingConfig: imported where it is built
    from polytask.training.settings import TrainSettings

__all__ = [
    "BalancerConfig",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "RelationsConfig",
    "SamplingConfig",
    "SourceConfig",
    "load_config",
    "read_yaml",
]


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names every offending key."""


class _Strict(BaseModel):
    """Unknown keys are errors; each subclass's docstring lists its fields (see below)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """Append a "Fields" section, built from the ``Field(description=...)`` texts, to the
        class docstring: ``help(TrainingConfig)`` then says what each key means, and the text
        lives in one place (the description, also in the JSON schema)."""
        super().__pydantic_init_subclass__(**kwargs)
        lines = []
        for name, info in cls.model_fields.items():
            default = "required" if info.is_required() else _default_text(info)
            text = f"{name} ({default}): {info.description or ''}".rstrip()
            lines.append(textwrap.fill(text, 96, initial_indent="    ", subsequent_indent="        "))
        if lines:
            cls.__doc__ = (inspect.cleandoc(cls.__doc__ or "") + "\n\nFields:\n" + "\n".join(lines))


def _default_text(info: Any) -> str:
    """A field's default as shown in help(): the value, or what its factory builds."""
    if info.default_factory is not None:
        try:
            value = info.default_factory()
        except TypeError:
            return "default: computed"
        if isinstance(value, BaseModel):
            return f"default: {type(value).__name__}()"
        return f"default: {value!r}"
    return f"default: {info.default!r}"


class SourceConfig(_Strict):
    """One data set of a several-datasets run: a registered ``dataset`` and its loader options.

    ``name`` names the source (per-source batch sizes refer to it; default: the data set name);
    ``tasks`` keeps a subset of the data set's tasks (default: all of them).
    """

    dataset: str = Field(description="a registered data set (polytask list datasets)")
    name: str | None = Field(
        None, description="names the source (per-source batch sizes use it); default: the data set name"
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="keyword options of the data set loader"
    )
    tasks: list[str] | None = Field(
        None, min_length=1, description="keep only these tasks of the data set (default: all)"
    )

    @property
    def display(self) -> str:
        return self.name or self.dataset


class DataConfig(_Strict):
    """A registered ``dataset`` (with its loader ``options``), a ``table`` file, or ``sources``.

    ``dataset`` may also name a several-datasets loader (``school_sources``,
    ``multimnist_two_sources``); ``sources`` stacks registered data sets that share one input
    space, each with its own split.
    """

    dataset: str | None = Field(
        None, description="a registered data set, or a several-datasets loader (polytask list datasets)"
    )
    sources: list[SourceConfig] | None = Field(
        None, min_length=1,
        description="several registered data sets sharing one input space, each labelling its own tasks",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="keyword options of the data set loader (or of load_table)"
    )
    table: str | None = Field(
        None, description="a CSV or Parquet file with one column per target (see targets)"
    )
    images: str | None = Field(
        None, description="folder of the image files listed in table (its first column is the path)"
    )
    targets: list[str] = Field(
        default_factory=list, description="the target columns of table, one task each"
    )
    kinds: dict[str, Literal["binary", "multiclass", "multilabel", "regression"]] = Field(
        default_factory=dict,
        description="target column -> binary / multiclass / multilabel / regression; others inferred",
    )
    features: list[str] | None = Field(
        None, description="feature columns of table (default: every column but the targets)"
    )
    split_seed: int | None = Field(
        None, description="seed of the train/val/test split (default: each run seed splits anew)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        given = [k for k in ("dataset", "table", "sources") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'dataset' or 'table' (or 'sources')")
        if self.sources is not None:
            names = [s.display for s in self.sources]
            if len(set(names)) != len(names):
                raise ValueError(f"source names must be unique, got {names}; set 'name'")
        if self.table is not None and not self.targets:
            raise ValueError("a table needs at least one entry in 'targets'")
        if self.images is not None and self.table is None:
            raise ValueError(
                "'images' is the folder of the files listed in 'table' (a CSV whose first column "
                "is the image path); give 'table' too"
            )
        return self


class ModelConfig(_Strict):
    """An architecture around a trunk; ``label`` names it in a ``models`` comparison."""

    label: str | None = Field(
        None, description="names this model in a models comparison (default: the architecture)"
    )
    architecture: str = Field(
        "hard_sharing", description="multi-task architecture (polytask list architectures)"
    )
    trunk: str = Field(
        "mlp", description="shared trunk (polytask list trunks); input widths are read from the data"
    )
    trunk_options: dict[str, Any] = Field(
        default_factory=dict, description="keyword options of the trunk, e.g. hidden: [256, 128] for mlp"
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="keyword options of the architecture, e.g. num_experts"
    )

    @property
    def display(self) -> str:
        return self.label or self.architecture


class BalancerConfig(_Strict):
    """One method that combines the task losses or gradients (``polytask list balancers``)."""

    name: str = Field("equal", description="registered balancer (polytask list balancers)")
    options: dict[str, Any] = Field(
        default_factory=dict, description="the balancer hyper-parameters (keyword options)"
    )
    label: str | None = Field(
        None, description="names its runs (default: name); needed to compare one balancer twice"
    )

    @property
    def display(self) -> str:
        return self.label or self.name


SamplingStrategy = Literal["all", "round_robin", "proportional", "temperature", "annealed"]
_STRATEGY_OPTIONS = {"temperature": {"temperature", "max_size"}, "annealed": {"final_alpha", "num_epochs"}}


class SamplingConfig(_Strict):
    """Which source feeds each step of a several-datasets run (see :mod:`polytask.data.sampling`).

    ``temperature`` / ``max_size`` belong to ``strategy: temperature``, ``final_alpha`` /
    ``num_epochs`` (default: ``training.epochs``) to ``annealed``; giving them to another strategy
    is an error rather than a silently ignored knob. ``batch_sizes`` sets a per-rank batch size per
    source name (every source named), overriding ``training.batch_size``. A bare string
    (``sampling: round_robin``) is the strategy with its defaults.
    """

    strategy: SamplingStrategy = Field(
        "all", description="which source feeds each step: all, round_robin, proportional, temperature, annealed"
    )
    temperature: float | None = Field(
        None, gt=0, description="temperature T: p_s ∝ min(n_s, max_size)^(1/T) (default 2)"
    )
    max_size: int | None = Field(
        None, ge=1, description="temperature: cap on the source size that counts (default none)"
    )
    final_alpha: float | None = Field(
        None, ge=0, le=1, description="annealed: p_s ∝ n_s^alpha, alpha from 1 to this at the last epoch (default 0.2)"
    )
    num_epochs: int | None = Field(
        None, ge=1, description="annealed: epochs of the schedule (default: training.epochs)"
    )
    batch_sizes: dict[str, int] | None = Field(
        None, description="per-rank batch size per source name, overriding training.batch_size"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, raw: Any) -> Any:
        return {"strategy": raw} if isinstance(raw, str) else raw

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is not None:
            bad = {k: v for k, v in value.items() if v < 1}
            if bad or not value:
                raise ValueError(f"per-source batch sizes must be >= 1 (and at least one), got {bad}")
        return value

    @model_validator(mode="after")
    def _options_fit_strategy(self) -> SamplingConfig:
        allowed = _STRATEGY_OPTIONS.get(self.strategy, set())
        stray = [
            k for k in sorted(set().union(*_STRATEGY_OPTIONS.values()))
            if getattr(self, k) is not None and k not in allowed
        ]  # fmt: skip
        if stray:
            raise ValueError(f"{stray} do not apply to strategy {self.strategy!r}")
        return self

    def sampler_options(self, epochs: int) -> dict[str, Any]:
        """Keyword arguments of :func:`polytask.data.sampling.make_sampler` for this strategy."""
        if self.strategy == "temperature":
            out: dict[str, Any] = {"max_size": self.max_size}
            if self.temperature is not None:
                out["temperature"] = self.temperature
            return out
        if self.strategy == "annealed":
            out = {"num_epochs": self.num_epochs or epochs}
            if self.final_alpha is not None:
                out["final_alpha"] = self.final_alpha
            return out
        return {}


assert set(get_args(SamplingStrategy)) >= set(_STRATEGY_OPTIONS)


RelationSpace = Literal["auto", "parameters", "representation"]


class RelationsConfig(_Strict):
    """Task relationship measures recorded during training (``polytask.analysis.relations``).

    Off unless ``training.relations`` is given (``relations: true`` means these defaults). The
    recorder works on the current batch with its own autograd calls and restores the random state
    and buffers it touches, so a run trains to the same parameters with or without it. Costs and
    meanings: ``docs/relationships.md``.
    """

    every: int = Field(
        10, ge=1, description="record the gradient measures (cosine, conflicts) every this many steps"
    )
    lookahead: bool = Field(
        True,
        description="also record the TAG lookahead affinity (exact: one extra forward per task) "
        "and its first-order approximation (needs the per-task gradients of the shared parameters)",
    )
    lookahead_every: int | None = Field(
        None, ge=1,
        description="record the lookahead affinities every this many steps (default: "
        "max(every, 40 x the number of tasks): a record costs about one training step per task)",
    )
    gradients: RelationSpace = Field(
        "auto",
        description="where gradient cosines and conflicts are measured: the shared parameters, or "
        "the shared representation (cheaper); auto: the representation when the model has one",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_bool(cls, raw: Any) -> Any:
        return {} if raw is True else raw

    def lookahead_period(self, num_tasks: int) -> int:
        """Steps between lookahead records.

        Why the default scales with the tasks: a lookahead record computes each task's gradient of
        the shared parameters and runs one forward per task, about one training step of compute
        per task; every ``40·T`` steps keeps it near 2.5% of training whatever ``T``, so that with
        the gradient measures (about 3-6% at ``every: 10``) and the record at step 0, which every
        run pays once, recording stays within 10% of training (docs/relationships.md, "Cost").
        """
        if self.lookahead_every is not None:
            return self.lookahead_every
        return max(self.every, 40 * num_tasks)


class TrainingConfig(_Strict):
    """How every run of the experiment trains (multi-task runs and single-task baselines alike)."""

    epochs: int = Field(10, ge=1, description="passes over the training split")
    batch_size: int = Field(128, ge=1, description="samples per step (per process under DDP)")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    weight_decay: float = Field(
        0.0, ge=0, description="weight decay (decoupled for adamw, an L2 term for adam and sgd)"
    )
    optimizer: Literal["adamw", "adam", "sgd"] = Field("adamw", description="the optimizer")
    momentum: float = Field(0.9, description="SGD momentum (optimizer sgd only)")
    scheduler: Literal["none", "cosine", "step", "plateau"] = Field(
        "none",
        description="learning-rate schedule: cosine over the epochs, step (x gamma every step_size "
        "epochs), plateau (x gamma when the validation score stalls)",
    )
    step_size: int = Field(10, ge=1, description="scheduler step: epochs between drops")
    gamma: float = Field(
        0.5, gt=0, le=1, description="learning-rate factor of scheduler step and plateau"
    )
    grad_clip: float | None = Field(
        None, gt=0, description="clip the gradient norm to this value (default: no clipping)"
    )
    device: str = Field(
        "auto", description="auto (CUDA, then MPS, then CPU) or a torch device name (cpu, cuda:1)"
    )
    amp: bool | Literal["bf16", "fp16"] = Field(
        False,
        description="mixed precision of the forward pass: false; bf16 (bfloat16 autocast, CPU or "
        "CUDA; true means bf16); fp16 (CUDA only: float16 autocast and loss scaling by a "
        "GradScaler, whose skipped inf/NaN steps are counted as a warning)",
    )
    patience: int | None = Field(
        None, ge=1, description="early stopping: epochs without a better validation score"
    )
    selection: str = Field(
        "auto",
        description="how the kept epoch is chosen on validation: auto (delta_m with baselines, "
        "else mean_primary), delta_m, mean_primary, val_loss or <task>/<metric>",
    )
    engine: Literal["jacobian", "gramian", "representation"] = Field(
        "jacobian",
        description="per-task gradients for gradient balancers: the Jacobian, only its Gramian "
        "(less memory), or the gradients of the shared representation (cheapest)",
    )
    chunk_size: int | None = Field(
        None, ge=1, description="Jacobian rows per backward pass (bounds memory; default: all)"
    )
    dist_mode: Literal["exact", "cheap"] = Field(
        "exact",
        description="torch.distributed: exact (the single-process update on the global batch) or "
        "cheap (each rank balances its own batch; weights averaged)",
    )
    eval_batch_size: int = Field(1024, ge=1, description="batch size of evaluation")
    progress: bool = Field(True, description="show progress bars")
    tensorboard: bool = Field(
        True, description="write TensorBoard events to the run directory (if installed)"
    )
    sampling: SamplingConfig | None = Field(
        None, description="several data sets only: which source feeds each step"
    )
    relations: RelationsConfig | None = Field(
        None,
        # left out of dumps when off: config hashes (cached baselines, suite cells) stay the same
        exclude_if=lambda value: value is None,
        description="record task relationship measures during training (off by default; "
        "relations: true for the defaults): see docs/relationships.md and polytask analyze",
    )

    @field_validator("relations", mode="before")
    @classmethod
    def _relations_off(cls, raw: Any) -> Any:
        return None if raw is False else raw

    def settings(self, seed: int, **extra: Any) -> TrainSettings:
        """These settings for one run of ``seed`` (``extra``: labels written to results.json)."""
        from polytask.training.settings import TrainSettings

        return TrainSettings(**dict(self), seed=seed, extra=dict(extra))


class BaselineConfig(_Strict):
    """Single-task baselines; ``model`` picks which entry of ``models`` they use (default: first)."""

    stl: bool = Field(
        True, description="train one single-task model per task (cached) and report Δm against them"
    )
    model: str | None = Field(
        None, description="with models: the label of the model the baselines use (default: first)"
    )


SummaryMetric = Literal["pooled_explained_variance"]


class ExperimentConfig(_Strict):
    """A whole experiment: data, model, the balancers to compare, training, baselines, seeds."""

    name: str = Field("experiment", description="the experiment folder name under output_dir")
    data: DataConfig = Field(description="what to train on")
    model: ModelConfig | None = Field(
        None, description="trunk and architecture (default: mlp, hard_sharing)"
    )
    models: list[ModelConfig] | None = Field(
        None, min_length=1, description="several labelled models to compare, instead of model"
    )
    balancers: list[BalancerConfig] = Field(
        default_factory=lambda: [BalancerConfig()],
        description="the methods to compare, each trained on the same data, seeds and baselines",
    )
    training: TrainingConfig = Field(
        default_factory=TrainingConfig, description="optimisation settings of every run"
    )
    baselines: BaselineConfig = Field(
        default_factory=BaselineConfig, description="the single-task baselines behind Δm"
    )
    summary_metrics: list[SummaryMetric] = Field(
        default_factory=list,
        description="whole-model metrics besides the per-task ones (pooled_explained_variance)",
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0], min_length=1,
        description="one run per seed of every model and balancer (mean ± std reported)",
    )
    output_dir: str = Field("runs", description="where the experiment folder goes")

    @model_validator(mode="before")
    @classmethod
    def _default_model(cls, raw: Any) -> Any:
        # Resolved YAML always shows the model used: without 'models', 'model' gets its defaults.
        if isinstance(raw, dict) and raw.get("model") is None and raw.get("models") is None:
            return {**raw, "model": {}}
        return raw

    @model_validator(mode="after")
    def _unique_labels(self) -> ExperimentConfig:
        labels = [b.display for b in self.balancers]
        if len(set(labels)) != len(labels):
            raise ValueError(f"balancer labels must be unique, got {labels}; set 'label'")
        if self.model is not None and self.models is not None:
            raise ValueError("give either 'model' or 'models' (a labelled list), not both")
        if self.models is not None:
            names = [m.display for m in self.models]
            if len(set(names)) != len(names):
                raise ValueError(f"model labels must be unique, got {names}; set 'label'")
            if self.baselines.model is not None and self.baselines.model not in names:
                raise ValueError(
                    f"baselines.model {self.baselines.model!r} is not one of the models {names}"
                )
        elif self.baselines.model is not None:
            raise ValueError("baselines.model picks one of 'models'; there is a single 'model'")
        return self

    @property
    def model_list(self) -> list[ModelConfig]:
        """The architectures to train: ``models``, or the single ``model``."""
        if self.models is not None:
            return list(self.models)
        assert self.model is not None
        return [self.model]

    @property
    def baseline_model(self) -> ModelConfig:
        """The architecture of the single-task baselines (``baselines.model`` or the first)."""
        models = self.model_list
        wanted = self.baselines.model
        return next((m for m in models if m.display == wanted), models[0])

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def format_validation_error(
    err: ValidationError, source: str, what: str = "configuration"
) -> str:
    """One line per error, each naming its key path (``training.lr: ...``)."""
    lines = [f"invalid {what} {source}:"]
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
        raise ConfigError(format_validation_error(err, source)) from None


def read_yaml(path: str | Path, what: str, error: type[ValueError]) -> Any:
    """The parsed YAML of ``path``; a missing file or bad YAML raises ``error`` naming ``what``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise error(f"{what} {path} is not valid YAML: {err}") from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read and validate a YAML experiment file."""
    raw = read_yaml(path, "configuration file", ConfigError)
    if overrides:
        raw = {**raw, **overrides}
    return parse_config(raw, str(path))
