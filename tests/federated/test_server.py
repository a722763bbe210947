"""A real Flower run: the ServerApp (FedAvg / FedProx) against 3 ClientApps over the in-process Grid.

No part of Flower is replaced: the strategy samples, builds and aggregates the messages, the
ClientApp dispatches them to its handlers, records cross Flower's protobuf serialization.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, RecordDict

from polytask.federated import parse_federated_config, partition_clients
from polytask.federated.client import ClientJob, client_app, remember_federation
from polytask.federated.grid import InProcessGrid
from polytask.federated.server import ServerJob, make_server_app

pytestmark = pytest.mark.usefixtures("single_thread")


Raw = Callable[..., dict[str, Any]]


def _run(raw: Raw, **federated: object) -> tuple[dict, InProcessGrid, dict, dict]:
    config = parse_federated_config(raw(**federated))
    out = Path(config.output_dir)
    fed = partition_clients(config, seed=0)
    remember_federation(config, 0, fed)
    grid = InProcessGrid(client_app, len(fed.clients))
    job = ServerJob(config, 0, out / "seed0", len(fed.clients))
    make_server_app(job)(grid, Context(0, 0, {}, RecordDict(), {}))
    best = torch.load(out / "seed0" / "checkpoints" / "best_averaged.pt", weights_only=True)
    initial = ClientJob(config, fed, fed.clients[0], 0, 0).model().state_dict()
    heads = {k: v for k, v in initial.items() if k.startswith("heads.")}
    return json.loads((out / "seed0" / "federated.json").read_text()), grid, best, heads


def _private(grid: InProcessGrid) -> list[dict[str, torch.Tensor]]:
    """Each client's private weights as it holds them after the run (partition-id order)."""
    return [
        ctx.state["polytask.private"].to_torch_state_dict() if "polytask.private" in ctx.state else {}
        for ctx in grid.contexts.values()
    ]


def test_trunk_averaged_heads_private_and_a_missing_task(raw_config: Raw) -> None:
    run, grid, best, init = _run(raw_config, missing={"client_001": ["y_bin"]})
    assert [r["round"] for r in run["rounds"]] == [1, 2]
    assert run["selected_round"] in (1, 2) and set(run["test"]) == {"y_reg", "y_bin"}
    # only the shared trunk travels: the averaged record holds trunk weights, no head
    assert best and all(k.startswith("trunk.") for k in best)
    private = _private(grid)
    assert all(set(p) and all(k.startswith("heads.") for k in p) for p in private)
    # personal heads differ between clients
    assert not torch.equal(private[0]["heads.y_reg.weight"], private[2]["heads.y_reg.weight"])
    # client_001 lacks y_bin: that head never moved from its initial value; its y_reg head did
    assert torch.equal(private[1]["heads.y_bin.weight"], init["heads.y_bin.weight"])
    assert not torch.equal(private[1]["heads.y_reg.weight"], init["heads.y_reg.weight"])
    assert not torch.equal(private[0]["heads.y_bin.weight"], init["heads.y_bin.weight"])
    # the test figure pools the test rows of every client, after selection on validation
    ev = run["summary_metrics"]["test"]["pooled_explained_variance"]
    assert 0 < ev <= 100
    assert run["rounds"][-1]["val"]["y_bin"]["labelled"] == 16  # two clients' validation rows


def test_global_heads_and_fedprox(raw_config: Raw) -> None:
    run, grid, best, _ = _run(
        raw_config, personal_heads=False, strategy="fedprox", proximal_mu=0.5,
        clients_per_round=2,
    )
    assert any(k.startswith("heads.") for k in best)  # the heads are averaged too
    assert all(len(r["clients_trained"]) == 2 for r in run["rounds"])
    # nothing is private: every client's model is the averaged one
    assert all(not p for p in _private(grid))
    assert run["strategy"] == "fedprox"
