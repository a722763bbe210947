"""``polytask federated CONFIG``: partition, validate, then run the ServerApp against the ClientApps.

Two engines run the very same ``ServerApp`` / ``ClientApp``:

* ``inprocess`` (default): :class:`~polytask.federated.grid.InProcessGrid`, every client in this
  process, one message at a time. Seconds to start; what the tests and the School benchmark use.
* ``simulation``: Flower's Simulation Runtime (``flwr.simulation.run_simulation``, Ray actors, one
  CPU per client by default). Needs Ray (``pip install 'polytask[federated]'``) and takes tens of
  seconds to start; clients run concurrently in worker processes.

Deployment across machines (SuperLink, SuperNodes, ``flwr run``) uses the module-level
``server_app`` / ``client_app`` (docs/federated.md).

Every seed is one federated run in ``<out>/seed<k>/`` (``federated.json``, ``config.yaml``,
``checkpoints/best_averaged.pt``); ``<out>/summary.json`` holds the test figures as mean ± std over
the seeds. The partition is built and checked here, before any engine starts, so a client without
labels or a bad ``missing`` entry fails at once, naming it.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from polytask.federated.config import FederatedConfig
from polytask.federated.partition import FederatedError, partition_clients

__all__ = ["ENGINES", "FederatedResult", "run_federated"]

ENGINES = ("inprocess", "simulation")
Engine = Literal["inprocess", "simulation"]


@dataclass
class FederatedResult:
    """The runs of every seed (their ``federated.json``) and where they are."""

    out_dir: Path
    runs: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Test summary metrics and per-task primary test metrics: mean ± std over the seeds."""
        out: dict[str, Any] = {"seeds": [r["seed"] for r in self.runs]}
        names = dict.fromkeys(k for r in self.runs for k in r["summary_metrics"]["test"])
        out["summary_metrics"] = {
            k: _mean_std([r["summary_metrics"]["test"][k] for r in self.runs]) for k in names
        }
        out["selected_round"] = [r["selected_round"] for r in self.runs]
        out["time_s"] = _mean_std([r["time_s"] for r in self.runs])
        return out


def _mean_std(values: list[float]) -> list[float]:
    if any(v is None or not math.isfinite(v) for v in values):
        raise FederatedError(f"a seed gave a non-finite figure: {values}")
    return [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def run_federated(
    config: FederatedConfig,
    out_dir: str | Path | None = None,
    engine: Engine = "inprocess",
    log: Callable[[str], None] = print,
    ray_init: dict[str, Any] | None = None,
) -> FederatedResult:
    """Run the federation of ``config`` once per seed; see the module docstring."""
    from polytask.validation import validate_components

    if engine not in ENGINES:
        raise FederatedError(f"unknown engine {engine!r}; expected one of {list(ENGINES)}")
    validate_components(config.experiment())
    out = Path(out_dir or Path(config.output_dir) / config.name)
    taken = [s for s in config.seeds if (out / f"seed{s}" / "federated.json").exists()]
    if taken:
        raise FederatedError(
            f"{out} already holds federated runs of seed(s) {taken}; choose another --out or "
            "delete them"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(config.to_yaml())
    result = FederatedResult(out_dir=out)
    for seed in config.seeds:
        federation = partition_clients(config, seed)
        from polytask.federated.server import ServerJob

        job = ServerJob(config, seed, out / f"seed{seed}", len(federation.clients))
        log(
            f"seed {seed}: {len(federation.clients)} clients ({config.federated.partition.kind}), "
            f"{len(federation.tasks)} task(s), {config.federated.rounds} rounds, engine {engine}"
        )
        if engine == "inprocess":
            _run_inprocess(job, federation)
        else:
            _run_simulation(job, ray_init or {})
        run = json.loads((job.run_dir / "federated.json").read_text())
        if "test" not in run:
            raise FederatedError(f"seed {seed}: the run ended without its test evaluation")
        log(
            f"seed {seed}: selected round {run['selected_round']} on validation; test "
            f"{run['summary_metrics']['test'] or _brief(run['test'])}"
        )
        result.runs.append(run)
    (out / "summary.json").write_text(json.dumps(result.summary(), indent=2))
    return result


def _brief(metrics: dict[str, dict[str, float]]) -> str:
    return ", ".join(
        f"{t}: {m.get('loss', float('nan')):.4g} loss" for t, m in list(metrics.items())[:4]
    )


def _run_inprocess(job: Any, federation: Any) -> None:
    from flwr.app import Context, RecordDict

    from polytask.federated.client import client_app, remember_federation
    from polytask.federated.grid import InProcessGrid
    from polytask.federated.server import make_server_app

    remember_federation(job.config, job.seed, federation)
    grid = InProcessGrid(client_app, job.num_clients)
    context = Context(
        run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}
    )
    make_server_app(job)(grid, context)


def _run_simulation(job: Any, ray_init: dict[str, Any]) -> None:
    try:
        import ray  # noqa: F401
        from flwr.simulation import run_simulation
    except ImportError as err:
        raise FederatedError(
            f"engine 'simulation' needs Flower's simulation extra ({err}); "
            "pip install 'polytask[federated]'"
        ) from None
    from polytask.federated.client import client_app
    from polytask.federated.server import make_server_app

    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"include_dashboard": False, **ray_init},
    }
    run_simulation(
        make_server_app(job), client_app, num_supernodes=job.num_clients, backend_config=backend
    )
