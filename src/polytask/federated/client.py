"""The ClientApp: one client's local training and evaluation, its private heads kept between rounds.

Every message from the ServerApp carries the federated config (as YAML text) and the run seed in
its ``config`` record; the client reads its partition id from its node config (``partition-id``,
set by Flower's simulation runtime, or by ``flower-supernode --node-config`` in a deployment),
loads its rows (:func:`~polytask.federated.partition.partition_clients`, cached per process) and
builds the same model every client builds from the seed.

What stays on the client, in its Flower ``Context.state`` (kept by the runtime between messages of
one run): the *private* part of the model (the task heads when ``personal_heads``), a snapshot of
it for the round the server currently selects, and the balancer's state. What travels: the
*averaged* part only (the shared trunk; every weight when heads are global), as an ``ArrayRecord``,
and metrics as ``MetricRecord`` lists with one entry per task (Flower aggregates records whose keys
agree across clients, and a client lacking a task reports a zero label count for it).

Message types:

* ``query.stats``: label counts / sums of the training targets (the server pools them into the
  regression scalers: no client sees another's data) and the client's name and row counts;
* ``query.init``: the initial averaged weights (the server never reads data or builds a model);
* ``train``: load the received weights, train ``local_epochs`` with the configured balancer (the
  proximal term of FedProx on the averaged weights when ``proximal-mu`` is sent), reply weights;
* ``evaluate``: metrics on the client's own validation rows (``split: val``, snapshotting the
  heads evaluated) or test rows (``split: test``, with the heads of the selected round).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import yaml
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import Tensor

from polytask.balancing import create_balancer
from polytask.balancing.base import Balancer
from polytask.balancing.engine import GradientEngine, StepOutput
from polytask.data.base import MultiTaskData
from polytask.evaluation.metrics import evaluate, predict_outputs
from polytask.federated.config import FederatedConfig, parse_federated_config
from polytask.federated.partition import ClientData, FederatedError, Federation, partition_clients
from polytask.models.base import MultiTaskModel
from polytask.tasks import Task, TaskKind
from polytask.training.loop import resolve_device, training_optimizer
from polytask.training.precision import Precision
from polytask.training.step import train_step

__all__ = [
    "CONFIG_KEY",
    "SEED_KEY",
    "averaged_keys",
    "client_app",
    "evaluation_record",
    "local_train",
    "metric_names",
    "remember_federation",
    "scaled_tasks",
]

CONFIG_KEY = "polytask-config"
SEED_KEY = "polytask-seed"
_PRIVATE = "polytask.private"
_BALANCER = "polytask.balancer"

client_app = ClientApp()

_FEDERATIONS: dict[tuple[str, int], tuple[FederatedConfig, Federation]] = {}


def remember_federation(config: FederatedConfig, seed: int, federation: Federation) -> None:
    """Hand an already partitioned federation to the clients of this process (the in-process
    engine partitions once to validate it; Ray workers and deployed nodes partition themselves)."""
    _FEDERATIONS.clear()
    _FEDERATIONS[(config.to_yaml(), seed)] = (config, federation)


@dataclass
class ClientJob:
    """What one message needs: the config, the federation, this client and its partition id."""

    config: FederatedConfig
    federation: Federation
    client: ClientData
    partition_id: int
    seed: int

    def model(self) -> MultiTaskModel:
        """The federation's model, initialised from the run seed (identical on every client)."""
        from polytask.experiment import build_model

        torch.manual_seed(self.seed)
        example = self.federation.clients[0].train.example()
        return build_model(
            self.config.experiment(),
            self.federation.tasks,
            example,
            self.config.model,
            self.federation.clients[0].train.info,
        )

    def averaged(self, model: MultiTaskModel) -> list[str]:
        return averaged_keys(model, self.config.federated.personal_heads)


def _job(config: ConfigRecord, context: Context) -> ClientJob:
    text, seed = str(config[CONFIG_KEY]), int(config[SEED_KEY])  # type: ignore[arg-type]
    if (text, seed) not in _FEDERATIONS:
        parsed = parse_federated_config(yaml.safe_load(text), "(sent by the server)")
        _FEDERATIONS.clear()  # one federation per process at a time: a new run replaces it
        _FEDERATIONS[(text, seed)] = (parsed, partition_clients(parsed, seed))
    parsed, federation = _FEDERATIONS[(text, seed)]
    pid = int(context.node_config["partition-id"])  # type: ignore[arg-type]
    nodes = int(context.node_config.get("num-partitions", len(federation.clients)))  # type: ignore[arg-type]
    if nodes != len(federation.clients) or not 0 <= pid < nodes:
        raise FederatedError(
            f"node with partition-id {pid} of {nodes}: the partition gives "
            f"{len(federation.clients)} clients ({parsed.federated.partition.kind}); start one "
            "node per client"
        )
    return ClientJob(parsed, federation, federation.clients[pid], pid, seed)


def averaged_keys(model: MultiTaskModel, personal_heads: bool) -> list[str]:
    """State keys that the server averages: the shared modules' (every key without personal heads).

    Ownership comes from the model contract (``shared_modules``), so an architecture's gates and
    task towers stay with the client like its heads do.
    """
    state = model.state_dict()
    if not personal_heads:
        return list(state)
    shared = [id(m) for m in model.shared_modules()]
    prefixes = [name + "." for name, m in model.named_modules() if id(m) in shared and name]
    keys = [k for k in state if any(k.startswith(p) for p in prefixes)]
    if not keys:
        raise FederatedError(f"{type(model).__name__}: no shared weight to average")
    return keys


def scaled_tasks(tasks: list[Task]) -> list[bool]:
    """Which tasks train on standardized targets (their scaler is pooled across clients)."""
    return [t.kind is TaskKind.REGRESSION and t.standardize for t in tasks]


def metric_names(tasks: list[Task]) -> list[str]:
    """Every metric name of any task (records must have the same keys on every client)."""
    return sorted({"loss", *(m for t in tasks for m in t.metric_factories())})


# ---------------------------------------------------------------------------------- handlers
@client_app.query("stats")
def stats(msg: Message, context: Context) -> Message:
    """Label counts, sums and sums of squares of this client's training targets, per task."""
    job = _job(msg.content["config"], context)
    counts, sums, squares = [], [], []
    for task, scaled in zip(job.federation.tasks, scaled_tasks(job.federation.tasks), strict=True):
        y = job.client.train.targets[task.name]
        values = y[task.label_mask(y)].double() if scaled else y.new_zeros(0).double()
        counts.append(float(values.numel()))
        sums.append(float(values.sum()))
        squares.append(float((values**2).sum()))
    rows = {s: float(len(getattr(job.client, s))) for s in ("train", "val", "test")}
    metrics = MetricRecord(
        {
            "count": counts,
            "sum": sums,
            "sumsq": squares,
            "partition-id": job.partition_id,
            "num-clients": len(job.federation.clients),
            **{f"{s}-rows": n for s, n in rows.items()},
            "task-higher": [float(t.primary_higher_is_better) for t in job.federation.tasks],
        }
    )
    info = ConfigRecord(
        {
            "client": job.client.name,
            "tasks": job.client.labelled_tasks(),
            "task-names": [t.name for t in job.federation.tasks],
            "task-primary": [t.primary for t in job.federation.tasks],
            **{
                f"task-metrics.{i}": sorted({"loss", *t.metric_factories()})
                for i, t in enumerate(job.federation.tasks)
            },
        }
    )
    return Message(RecordDict({"metrics": metrics, "info": info}), reply_to=msg)


@client_app.query("init")
def init(msg: Message, context: Context) -> Message:
    """The initial averaged weights: every client would send the same ones (same seed)."""
    job = _job(msg.content["config"], context)
    model = job.model()
    state = model.state_dict()
    arrays = ArrayRecord({k: state[k] for k in job.averaged(model)})
    return Message(RecordDict({"arrays": arrays}), reply_to=msg)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Local epochs on this client's rows from the received averaged weights and its own heads."""
    config = msg.content["config"]
    job = _job(config, context)
    rnd = int(config["server-round"])  # type: ignore[arg-type]
    _apply_scalers(job.federation.tasks, config)
    model = _load_model(job, msg, context, private=_PRIVATE)
    balancer = _balancer(job, context)
    mu = float(config.get("proximal-mu", 0.0))  # type: ignore[arg-type]
    seed = _local_seed(job, rnd)
    loss_sum, loss_n = local_train(
        model,
        balancer,
        job.client.train,
        job.config,
        seed=seed,
        proximal_mu=mu,
        anchored=job.averaged(model) if mu > 0 else [],
        where=f"client {job.client.name!r}, round {rnd}",
    )
    state = model.state_dict()
    averaged = job.averaged(model)
    context.state[_PRIVATE] = ArrayRecord({k: v for k, v in state.items() if k not in averaged})
    context.state[_BALANCER] = ConfigRecord({"state": _to_bytes(balancer.state_dict())})
    metrics = MetricRecord(
        {
            "num-examples": len(job.client.train),
            "loss": [s / n if n else 0.0 for s, n in zip(loss_sum, loss_n, strict=True)],
            "labelled": [float(n) for n in loss_n],
        }
    )
    reply = RecordDict({"arrays": ArrayRecord({k: state[k] for k in averaged}), "metrics": metrics})
    return Message(reply, reply_to=msg)


@client_app.evaluate()
def evaluate_split(msg: Message, context: Context) -> Message:
    """Per-task metrics on this client's validation (each round) or test rows (once, at the end)."""
    config = msg.content["config"]
    job = _job(config, context)
    _apply_scalers(job.federation.tasks, config)
    split = str(config.get("split", "val"))
    rnd = int(config["server-round"])  # type: ignore[arg-type]
    if split == "val":
        model = _load_model(job, msg, context, private=_PRIVATE)
        # the private weights evaluated in this round, for a later test (empty: still initial)
        context.state[f"{_PRIVATE}@{rnd}"] = (
            context.state[_PRIVATE] if _PRIVATE in context.state else ArrayRecord()
        )
        keep = {f"{_PRIVATE}@{rnd}", f"{_PRIVATE}@{config.get('keep-round', -1)}"}
        for key in [k for k in context.state if k.startswith(f"{_PRIVATE}@") and k not in keep]:
            del context.state[key]
        data = job.client.val
    elif split == "test":
        key = f"{_PRIVATE}@{config['heads-round']}"
        if key not in context.state:
            raise FederatedError(
                f"client {job.client.name!r}: no snapshot of its heads for round "
                f"{config['heads-round']} (the selected round); it keeps only the selected one"
            )
        model = _load_model(job, msg, context, private=key)
        data = job.client.test
    else:
        raise FederatedError(f"evaluate: unknown split {split!r}; expected 'val' or 'test'")
    record = evaluation_record(model, job.federation.tasks, data, job.config)
    return Message(RecordDict({"metrics": record}), reply_to=msg)


# ---------------------------------------------------------------------------------- pieces
def _local_seed(job: ClientJob, rnd: int) -> int:
    """A seed per (run seed, client, round): local shuffles differ by client and round, and a
    rerun of the federation reproduces them."""
    return (job.seed * 1_000_003 + job.partition_id * 10_007 + rnd) % (2**31)


def _apply_scalers(tasks: list[Task], config: ConfigRecord) -> None:
    """The regression scalers the server pooled from every client's training label statistics."""
    if "target-mean" not in config:
        return
    means, stds = config["target-mean"], config["target-std"]
    for task, scaled, mean, std in zip(tasks, scaled_tasks(tasks), means, stds, strict=True):  # type: ignore[arg-type]
        if scaled:
            task.target_mean_, task.target_std_ = float(mean), float(std)


def _load_model(job: ClientJob, msg: Message, context: Context, private: str) -> MultiTaskModel:
    """The model with the received averaged weights and this client's private ones (if any yet)."""
    model = job.model()
    state = model.state_dict()
    averaged = job.averaged(model)
    received = msg.content["arrays"].to_torch_state_dict()
    missing, unexpected = (
        sorted(set(averaged) - set(received)),
        sorted(set(received) - set(averaged)),
    )
    if missing or unexpected:
        raise FederatedError(
            f"client {job.client.name!r}: received weights do not fit the model: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}"
        )
    state.update(received)
    if private in context.state:
        state.update(context.state[private].to_torch_state_dict())
    model.load_state_dict(state)
    return model


def _balancer(job: ClientJob, context: Context) -> Balancer:
    tasks = job.federation.tasks
    bc = job.config.balancer
    balancer = create_balancer(
        bc.name,
        [t.name for t in tasks],
        task_weights={t.name: t.weight for t in tasks},
        **bc.options,
    )
    if _BALANCER in context.state:
        data = context.state[_BALANCER]["state"]
        balancer.load_state_dict(torch.load(io.BytesIO(data), weights_only=True))  # type: ignore[arg-type]
    return balancer


def _to_bytes(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def local_train(
    model: MultiTaskModel,
    balancer: Balancer,
    data: MultiTaskData,
    config: FederatedConfig,
    *,
    seed: int,
    proximal_mu: float = 0.0,
    anchored: list[str] | None = None,
    where: str = "client",
) -> tuple[list[float], list[int]]:
    """``local_epochs`` over ``data`` through the project's training step; per-task loss sums and
    label counts of the round.

    FedProx: the proximal term mu/2 ||w - w_global||^2 on the ``anchored`` (averaged) weights adds
    ``mu (w - w_global)`` to their gradient in an optimizer pre-step hook, i.e. after the balancer
    has combined the task gradients and after clipping, whatever the balancer is.
    """
    training = config.training
    settings = training.settings(seed)
    device = resolve_device(training.device)
    precision = Precision.of(training.amp, device)
    model.to(device).train()
    balancer.to(device)
    optimizer = training_optimizer(model, balancer, settings)  # fit's parameter groups
    if proximal_mu > 0:
        named = dict(model.named_parameters())
        anchor = {named[k]: named[k].detach().clone() for k in anchored or [] if k in named}
        optimizer.register_step_pre_hook(_proximal_hook(anchor, proximal_mu))
    tasks = model.tasks
    engine = GradientEngine(
        model,
        tasks,
        balancer,
        mode=training.engine,
        chunk_size=training.chunk_size,
        seed=seed,
    )
    loss_sum = torch.zeros(len(tasks), dtype=torch.float64)
    loss_n = torch.zeros(len(tasks), dtype=torch.float64)
    step = 0
    for epoch in range(config.federated.local_epochs):
        generator = torch.Generator().manual_seed(seed * 7919 + epoch)
        for batch in data.batches(training.batch_size, shuffle=True, generator=generator):
            out = train_step(
                engine,
                optimizer,
                batch,
                step,
                epoch,
                device=device,
                precision=precision,
                grad_clip=training.grad_clip,
                check=_finite_check(model.task_names, where, step),
            )
            if out is None:
                continue
            present = out.present.cpu()
            loss_sum += torch.where(present, out.losses.detach().cpu(), 0).double()
            loss_n += present.double()
            step += 1
    return loss_sum.tolist(), [int(n) for n in loss_n.tolist()]


def _proximal_hook(
    anchor: dict[torch.nn.Parameter, Tensor], mu: float
) -> Callable[[torch.optim.Optimizer, Any, Any], None]:
    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            for p, p0 in anchor.items():
                if p.grad is not None:
                    p.grad.add_(p - p0, alpha=mu)

    return hook


def _finite_check(names: list[str], where: str, step: int) -> Callable[[StepOutput], None]:
    def check(out: StepOutput) -> None:
        bad = out.present & ~torch.isfinite(out.losses)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise FederatedError(
                f"{where}: loss of task {names[i]!r} is {float(out.losses[i])} at local step "
                f"{step}; training stopped before the update"
            )

    return check


def evaluation_record(
    model: MultiTaskModel, tasks: list[Task], data: MultiTaskData, config: FederatedConfig
) -> MetricRecord:
    """Metrics of this client's rows as lists over the federation's tasks (0 where unlabelled).

    Per task: ``labelled`` (label count, the aggregation weight) and every metric name of any task
    (``metric_names``); with ``pooled_explained_variance`` also the sums that pool it exactly over
    clients (``ev-n``, ``ev-sum``, ``ev-sumsq``, ``ev-sse``, in the targets' own units).
    """
    names = metric_names(tasks)
    values = {name: [0.0] * len(tasks) for name in names}
    labelled = [0.0] * len(tasks)
    counts = data.label_counts() if len(data) else {}
    own = [t for t in tasks if counts.get(t.name, 0) > 0]
    if own:
        device = next(model.parameters()).device
        scores, _ = evaluate(
            model, own, data.with_tasks(own), config.training.eval_batch_size, device
        )
        for i, task in enumerate(tasks):
            if task.name in scores:
                labelled[i] = scores[task.name]["labelled"]
                for name in task.metric_factories().keys() | {"loss"}:
                    values[name][i] = float(scores[task.name][name])
    record = MetricRecord({"num-examples": len(data), "labelled": labelled, **values})
    if "pooled_explained_variance" in config.summary_metrics:
        record.update(_ev_sums(model, own, data, config.training.eval_batch_size))
    return record


def _ev_sums(
    model: MultiTaskModel, tasks: list[Task], data: MultiTaskData, batch: int
) -> dict[str, float]:
    """Sufficient statistics of 1 - SSE/SST over this client's labelled regression entries."""
    sums = {"ev-n": 0.0, "ev-sum": 0.0, "ev-sumsq": 0.0, "ev-sse": 0.0}
    regression = [t for t in tasks if t.kind is TaskKind.REGRESSION]
    if not regression:
        return sums
    outputs = predict_outputs(model, data, batch)
    for task in regression:
        y = data.targets[task.name]
        mask = task.label_mask(y)
        truth = y[mask].double()
        pred = task.predict(outputs[task.name]).reshape(y.shape)[mask].double()
        if not bool(torch.isfinite(pred).all()):
            raise FederatedError(f"task {task.name!r}: non-finite predictions on labelled rows")
        sums["ev-n"] += float(truth.numel())
        sums["ev-sum"] += float(truth.sum())
        sums["ev-sumsq"] += float((truth**2).sum())
        sums["ev-sse"] += float(((truth - pred) ** 2).sum())
    assert math.isfinite(sums["ev-sse"])
    return sums
