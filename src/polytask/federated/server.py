"""The ServerApp: Flower's FedAvg / FedProx over the averaged weights, selection on validation.

One run, round by round (:func:`run_server`):

1. ``query.stats`` to every node: who is there (client name, partition id, rows) and the label
   statistics of its training targets; the server pools them into each regression task's scaler
   (mean and std over every client's training labels, as a centralised run fits them) and sends
   the scalers with every later message. ``query.init`` to one node: the initial averaged weights
   (every client builds the same model from the seed; the server never reads data).
2. Each round: the strategy's ``configure_train`` samples the clients and builds their messages,
   the Grid delivers them, ``aggregate_train`` averages the returned weights by example count
   (Flower's FedAvg; FedProx adds ``proximal-mu`` to the clients' config); then every client
   evaluates the averaged weights with its own heads on its validation rows and
   ``aggregate_evaluate`` pools the per-task metrics (:func:`aggregate_task_metrics`).
   The strategy's own methods are called in the order ``Strategy.start`` calls them; the loop is
   written out here because the server must keep the selected round's weights, tell the clients
   which round's heads to keep, stop early on ``training.patience`` and fail loudly on a client
   error (``start`` logs it and averages the others).
3. The round with the best validation score (``training.selection``) is selected; its averaged
   weights go to every client once more, which evaluates its *test* rows with its heads of that
   round. The test split is read once, at the end, and never chooses anything.

Everything is written to ``<run_dir>/federated.json`` (rewritten after every round: one row per
round with the aggregated train losses, validation metrics and selection score) and the selected
averaged weights to ``<run_dir>/checkpoints/best_averaged.pt``.
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx

from polytask.evaluation.metrics import mean_primary
from polytask.federated.client import CONFIG_KEY, SEED_KEY
from polytask.federated.config import FederatedConfig, load_federated_config
from polytask.federated.partition import FederatedError

__all__ = [
    "ServerJob",
    "aggregate_task_metrics",
    "make_server_app",
    "run_server",
    "server_app",
]

Metrics = dict[str, dict[str, float]]


@dataclass
class ServerJob:
    """One federated run: the config, its seed, where it writes, how many clients to wait for."""

    config: FederatedConfig
    seed: int
    run_dir: Path
    num_clients: int
    timeout_s: float = 3600.0


def make_server_app(job: ServerJob) -> ServerApp:
    """A ServerApp running ``job`` (the simulation and the in-process grid use this one)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, job)

    return app


server_app = ServerApp()


@server_app.main()
def deployed_main(grid: Grid, context: Context) -> None:
    """``flwr run``: the job comes from the app's run config (``[tool.flwr.app.config]``):
    ``config`` (path of the federated YAML), ``seed``, ``run-dir`` and ``num-clients``."""
    cfg = context.run_config
    missing = [k for k in ("config", "num-clients") if k not in cfg]
    if missing:
        raise FederatedError(f"run config: missing key(s) {missing} ([tool.flwr.app.config])")
    config = load_federated_config(str(cfg["config"]))
    seed = int(cfg.get("seed", config.seeds[0]))  # type: ignore[arg-type]
    run_dir = Path(str(cfg.get("run-dir", Path(config.output_dir) / config.name / f"seed{seed}")))
    run_server(grid, ServerJob(config, seed, run_dir, int(cfg["num-clients"])))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- aggregation
def aggregate_task_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Pool per-task metric lists over clients, each task weighted by its label counts.

    Clients send, per metric, a list over the federation's tasks and ``labelled`` (their label
    count per task; 0 for a task they lack). A task's pooled value is the label-weighted mean:
    exact for means (loss, MSE, MAE, accuracy), a weighted mean of the clients' values for the
    others (ROC-AUC, R²), which the docs state. Scalars (``num-examples``, the explained-variance
    sums) are summed. A NaN from any client stays NaN.
    """
    metric_records = [next(iter(r.metric_records.values())) for r in records]
    first = metric_records[0]
    n_tasks = len(first["labelled"])  # type: ignore[arg-type]
    counts = [sum(float(m["labelled"][t]) for m in metric_records) for t in range(n_tasks)]  # type: ignore[index]
    out = MetricRecord()
    for key, value in first.items():
        if key == "labelled":
            out[key] = counts
        elif isinstance(value, list):
            out[key] = [
                sum(float(m[key][t]) * float(m["labelled"][t]) for m in metric_records) / counts[t]  # type: ignore[index]
                if counts[t]
                else 0.0
                for t in range(n_tasks)
            ]
        else:
            out[key] = sum(float(m[key]) for m in metric_records)  # type: ignore[arg-type]
    return out


def _per_task(record: MetricRecord, tasks: list[TaskInfo]) -> Metrics:
    """``{task: {metric: value}}`` (the task's own metrics) for the tasks with a label."""
    out: Metrics = {}
    for i, task in enumerate(tasks):
        if float(record["labelled"][i]) == 0:  # type: ignore[index]
            continue
        out[task.name] = {
            k: float(record[k][i])  # type: ignore[index]
            for k in ("labelled", *task.metrics)
            if k in record
        }
    return out


def _summary(record: MetricRecord, config: FederatedConfig) -> dict[str, float]:
    if "pooled_explained_variance" not in config.summary_metrics:
        return {}
    n, s, sq, sse = (float(record[k]) for k in ("ev-n", "ev-sum", "ev-sumsq", "ev-sse"))  # type: ignore[arg-type]
    total = sq - s * s / n if n else 0.0
    if n < 2 or total <= 0:
        raise FederatedError(
            f"pooled explained variance undefined: {n:.0f} labelled regression entries"
        )
    return {"pooled_explained_variance": 100.0 * (1.0 - sse / total)}


# ---------------------------------------------------------------------------------- selection
def selection_score(rule: str, val: Metrics, tasks: list[Any]) -> float:
    """Higher is better: ``auto`` / ``mean_primary``, ``val_loss`` or ``<task>/<metric>``."""
    if rule in ("auto", "mean_primary"):
        full = {t.name: val.get(t.name, {t.primary: math.nan}) for t in tasks}
        return mean_primary(full, tasks)
    if rule == "val_loss":
        losses = [m["loss"] for m in val.values() if math.isfinite(m["loss"])]
        return -sum(losses) if losses else -math.inf
    name, _, metric = rule.partition("/")
    task = next((t for t in tasks if t.name == name), None)
    if task is None or metric not in val.get(name, {}):
        raise FederatedError(
            f"training.selection {rule!r} names no task/metric with validation labels; tasks: "
            f"{[t.name for t in tasks][:10]}"
        )
    higher = task.primary_higher_is_better if metric == task.primary else metric != "loss"
    return val[name][metric] if higher else -val[name][metric]


# ---------------------------------------------------------------------------------- the run
class _Replies:
    """Sends messages through the grid and refuses missing or failed replies, naming the client."""

    def __init__(self, grid: Grid, names: dict[int, str], timeout: float) -> None:
        self.grid, self.names, self.timeout = grid, names, timeout

    def send(self, messages: Iterable[Message], step: str) -> list[Message]:
        messages = list(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        answered = {r.metadata.src_node_id for r in replies}
        silent = [
            self._name(m.metadata.dst_node_id)
            for m in messages
            if m.metadata.dst_node_id not in answered
        ]
        if silent:
            raise FederatedError(f"{step}: no reply within {self.timeout:.0f} s from {silent[:10]}")
        for r in replies:
            if r.has_error():
                raise FederatedError(
                    f"{step}: client {self._name(r.metadata.src_node_id)} failed: {r.error.reason}"
                )
        return replies

    def _name(self, node: int) -> str:
        return repr(self.names.get(node, f"node {node}"))


def _wait_for_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    end = time.time() + timeout
    while len(nodes := list(grid.get_node_ids())) < n:
        if time.time() > end:
            raise FederatedError(
                f"{len(nodes)} of {n} client nodes connected after {timeout:.0f} s"
            )
        time.sleep(0.2)
    if len(nodes) > n:
        raise FederatedError(f"{len(nodes)} nodes connected but the partition has {n} clients")
    return sorted(nodes)


def _strategy(config: FederatedConfig, n: int) -> FedAvg:
    fed = config.federated
    k = fed.clients_per_round or max(1, math.floor((fed.fraction or 1.0) * n))
    if k > n:
        raise FederatedError(f"federated.clients_per_round = {k} but there are {n} clients")
    common: dict[str, Any] = {
        "fraction_train": k / n,
        "fraction_evaluate": 1.0,
        "min_train_nodes": k,
        "min_evaluate_nodes": n,
        "min_available_nodes": n,
        "train_metrics_aggr_fn": aggregate_task_metrics,
        "evaluate_metrics_aggr_fn": aggregate_task_metrics,
    }
    if fed.strategy == "fedprox":
        return FedProx(proximal_mu=float(fed.proximal_mu or 0.0), **common)
    return FedAvg(**common)


def _scalers(replies: list[Message], tasks: list[str]) -> tuple[list[float], list[float]]:
    """Pooled mean and (unbiased) std of each scaled task's training labels over every client."""
    means, stds = [], []
    for i in range(len(tasks)):
        n = sum(float(r.content["metrics"]["count"][i]) for r in replies)  # type: ignore[index]
        s = sum(float(r.content["metrics"]["sum"][i]) for r in replies)  # type: ignore[index]
        sq = sum(float(r.content["metrics"]["sumsq"][i]) for r in replies)  # type: ignore[index]
        mean = s / n if n else 0.0
        var = (sq - n * mean * mean) / (n - 1) if n > 1 else 1.0
        std = math.sqrt(var) if var > 1e-24 else 1.0
        means.append(mean)
        stds.append(std)
    return means, stds


def run_server(grid: Grid, job: ServerJob) -> dict[str, Any]:
    """Run the federation of ``job`` over ``grid``; returns (and writes) ``federated.json``."""
    started = time.perf_counter()
    config, seed = job.config, job.seed
    random.seed(seed)  # Flower's strategies sample clients with the random module
    job.run_dir.mkdir(parents=True, exist_ok=True)
    (job.run_dir / "config.yaml").write_text(config.to_yaml())
    nodes = _wait_for_nodes(grid, job.num_clients, job.timeout_s)
    base = {CONFIG_KEY: config.to_yaml(), SEED_KEY: seed}
    replies = _Replies(grid, {}, job.timeout_s)

    stats = replies.send(
        [
            Message(RecordDict({"config": ConfigRecord(base)}), n, f"{MessageType.QUERY}.stats")
            for n in nodes
        ],
        "statistics query",
    )
    clients = _clients(stats, job.num_clients)
    replies.names = {c["node"]: c["name"] for c in clients}
    task_names = [str(t) for t in stats[0].content["info"]["task-names"]]  # type: ignore[union-attr]
    tasks = _tasks_of(stats, task_names)
    means, stds = _scalers(stats, task_names)
    base |= {"target-mean": means, "target-std": stds}
    first = next(c["node"] for c in clients if c["partition_id"] == 0)
    init = replies.send(
        [Message(RecordDict({"config": ConfigRecord(base)}), first, f"{MessageType.QUERY}.init")],
        "initial weights",
    )
    arrays: ArrayRecord = init[0].content["arrays"]

    strategy = _strategy(config, job.num_clients)
    rule = config.training.selection
    rows: list[dict[str, Any]] = []
    best: dict[str, Any] = {"round": -1, "score": -math.inf, "arrays": arrays}
    warned: dict[str, int] = {}
    result: dict[str, Any] = {
        "name": config.name,
        "seed": seed,
        "strategy": config.federated.strategy,
        "personal_heads": config.federated.personal_heads,
        "partition": config.federated.partition.kind,
        "clients": [{k: v for k, v in c.items() if k != "node"} for c in clients],
        "tasks": task_names,
        "target_scalers": {
            t: [m, s]
            for t, m, s, n in zip(task_names, means, stds, _counts(stats), strict=True)
            if n
        },
        "selection": f"val {rule}",
        "rounds": rows,
    }
    for rnd in range(1, config.federated.rounds + 1):
        t0 = time.perf_counter()
        train_config = ConfigRecord(dict(base))
        sent = list(strategy.configure_train(rnd, arrays, train_config, grid))
        trained = replies.send(sent, f"round {rnd} training")
        new_arrays, train_metrics = strategy.aggregate_train(rnd, trained)
        if new_arrays is None or train_metrics is None:
            raise FederatedError(f"round {rnd}: the strategy aggregated no weights")
        arrays = new_arrays
        eval_config = ConfigRecord(base | {"split": "val", "keep-round": best["round"]})
        evaluated = replies.send(
            strategy.configure_evaluate(rnd, arrays, eval_config, grid), f"round {rnd} validation"
        )
        val_record = strategy.aggregate_evaluate(rnd, evaluated)
        if val_record is None:
            raise FederatedError(f"round {rnd}: no validation metrics were aggregated")
        val = _per_task(val_record, tasks)
        _count_nan(val, warned, "val")
        summary = _summary(val_record, config)
        score = selection_score(rule, val, tasks)
        if score > best["score"]:
            best = {"round": rnd, "score": score, "arrays": arrays}
            _save_arrays(arrays, job.run_dir / "checkpoints" / "best_averaged.pt")
        rows.append(
            {
                "round": rnd,
                "clients_trained": sorted(replies.names[m.metadata.src_node_id] for m in trained),
                "train_loss": {t: v["loss"] for t, v in _per_task(train_metrics, tasks).items()},
                "val": val,
                "val_summary": summary,
                "selection_score": score,
                "time_s": time.perf_counter() - t0,
            }
        )
        _write(job.run_dir, result)
        if config.training.patience is not None and rnd - best["round"] >= config.training.patience:
            break
    if best["round"] < 0:
        raise FederatedError(f"no round gave a finite validation score ({rule})")
    test_config = ConfigRecord(
        base | {"split": "test", "heads-round": best["round"], "server-round": best["round"]}
    )
    tested = replies.send(
        [
            Message(
                RecordDict({"arrays": best["arrays"], "config": test_config}),
                n,
                MessageType.EVALUATE,
            )
            for n in nodes
        ],
        "test evaluation",
    )
    test_record = aggregate_task_metrics([m.content for m in tested], "num-examples")
    test = _per_task(test_record, tasks)
    _count_nan(test, warned, "test")
    selected = rows[best["round"] - 1]
    result |= {
        "selected_round": best["round"],
        "val": selected["val"],
        "test": test,
        "summary_metrics": {"val": selected["val_summary"], "test": _summary(test_record, config)},
        "time_s": time.perf_counter() - started,
        "warnings": warned,
    }
    _write(job.run_dir, result)
    return result


def _counts(stats: list[Message]) -> list[float]:
    totals: list[float] = []
    for r in stats:
        values = [float(v) for v in r.content["metrics"]["count"]]  # type: ignore[union-attr]
        totals = values if not totals else [a + b for a, b in zip(totals, values, strict=True)]
    return totals


def _clients(stats: list[Message], expected: int) -> list[dict[str, Any]]:
    clients = []
    for r in stats:
        m, info = r.content["metrics"], r.content["info"]
        if int(m["num-clients"]) != expected:  # type: ignore[arg-type]
            raise FederatedError(
                f"client {info['client']!r} partitions the data into {m['num-clients']} clients, "
                f"the server expects {expected}"
            )
        clients.append(
            {
                "node": r.metadata.src_node_id,
                "name": str(info["client"]),
                "partition_id": int(m["partition-id"]),  # type: ignore[arg-type]
                "tasks": [str(t) for t in info["tasks"]],  # type: ignore[union-attr]
                **{f"{s}_rows": int(m[f"{s}-rows"]) for s in ("train", "val", "test")},  # type: ignore[arg-type]
            }
        )
    ids = sorted(c["partition_id"] for c in clients)
    if ids != list(range(expected)):
        raise FederatedError(
            f"client partition ids {ids[:10]} ... are not 0..{expected - 1}, each once"
        )
    return sorted(clients, key=lambda c: c["partition_id"])


@dataclass
class TaskInfo:
    """What selection reads of a task: its name and primary metric, reported by the clients."""

    name: str
    primary: str
    primary_higher_is_better: bool
    metrics: list[str]


def _tasks_of(stats: list[Message], names: list[str]) -> list[TaskInfo]:
    info, metrics = stats[0].content["info"], stats[0].content["metrics"]
    primaries = [str(p) for p in info["task-primary"]]  # type: ignore[union-attr]
    higher = [bool(v) for v in metrics["task-higher"]]  # type: ignore[union-attr]
    return [
        TaskInfo(name, primary, up, [str(m) for m in info[f"task-metrics.{i}"]])  # type: ignore[union-attr]
        for i, (name, primary, up) in enumerate(zip(names, primaries, higher, strict=True))
    ]


def _count_nan(metrics: Metrics, warned: dict[str, int], split: str) -> None:
    for task, scores in metrics.items():
        for name, value in scores.items():
            if not math.isnan(value):
                continue
            key = f"undefined_metric/{split}/{task}/{name}"
            if key not in warned:
                warnings.warn(
                    f"{split}: metric {name} of task {task!r} is NaN", RuntimeWarning, stacklevel=3
                )
            warned[key] = warned.get(key, 0) + 1


def _save_arrays(arrays: ArrayRecord, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(dict(arrays.to_torch_state_dict()), tmp)
    tmp.replace(path)


def _write(run_dir: Path, result: dict[str, Any]) -> None:
    def clean(obj: Any) -> Any:
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else None
        if isinstance(obj, dict):
            return {str(k): clean(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [clean(v) for v in obj]
        return obj

    tmp = run_dir / "federated.json.tmp"
    tmp.write_text(json.dumps(clean(result), indent=1))
    tmp.replace(run_dir / "federated.json")
