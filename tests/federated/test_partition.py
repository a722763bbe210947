"""Partitions: rows per client, tasks a client lacks, and the errors raised before any round."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from polytask.federated import FederatedError, parse_federated_config, partition_clients


def test_iid_deals_every_row_once_and_removes_missing_labels(raw_config: Callable[..., dict[str, Any]]) -> None:
    config = parse_federated_config(raw_config(missing={"client_001": ["y_bin"]}))
    fed = partition_clients(config, seed=0)
    assert fed.names == ["client_000", "client_001", "client_002"]
    for split in ("train", "val", "test"):
        ids = torch.cat([getattr(c, split).row_ids for c in fed.clients])
        assert ids.numel() == ids.unique().numel()  # no row given twice
    assert sum(len(c.train) for c in fed.clients) == 192  # 80 % of 240
    assert fed.clients[1].labelled_tasks("train") == ["y_reg"]
    assert fed.clients[1].labelled_tasks("test") == ["y_reg"]
    assert fed.clients[0].labelled_tasks("train") == ["y_reg", "y_bin"]


def test_a_client_without_labels_is_named(raw_config: Callable[..., dict[str, Any]]) -> None:
    raw = raw_config(missing={"client_002": ["y_reg", "y_bin"]})
    with pytest.raises(FederatedError, match="client 'client_002' holds no training label"):
        partition_clients(parse_federated_config(raw), seed=0)


def test_missing_names_unknown_clients_and_tasks(raw_config: Callable[..., dict[str, Any]]) -> None:
    raw = raw_config(missing={"client_009": ["y_bin"]})
    with pytest.raises(FederatedError, match="unknown client 'client_009'"):
        partition_clients(parse_federated_config(raw), seed=0)
    raw = raw_config(missing={"client_000": ["y_cat"]})
    with pytest.raises(FederatedError, match=r"missing.client_000: unknown task\(s\) \['y_cat'\]"):
        partition_clients(parse_federated_config(raw), seed=0)
    every = {f"client_{i:03d}": ["y_bin"] for i in range(3)}
    with pytest.raises(FederatedError, match=r"no client holds a training label of task\(s\) \['y_bin'\]"):
        partition_clients(parse_federated_config(raw_config(missing=every)), 0)


def test_by_source_needs_sources(raw_config: Callable[..., dict[str, Any]]) -> None:
    config = parse_federated_config(raw_config(partition="by_source"))
    with pytest.raises(FederatedError, match="by_source needs several data sources"):
        partition_clients(config, seed=0)


def test_school_by_source_gives_each_school_its_own_students(data_dir: Path, tmp_path: Path) -> None:
    raw = {
        "data": {"dataset": "school_sources"},
        "federated": {"rounds": 1, "partition": "by_source", "merge_tasks": "score"},
    }
    fed = partition_clients(parse_federated_config(raw), seed=0)
    assert len(fed.clients) == 139 and [t.name for t in fed.tasks] == ["score"]
    school = fed.clients[17]
    assert school.name == "school_017"
    total = sum(len(c.train) + len(c.val) + len(c.test) for c in fed.clients)
    assert total == 15362  # every student, once
    # a school's students are labelled for the merged task in every split
    for split in ("train", "val", "test"):
        data = getattr(school, split)
        assert len(data) > 0 and not bool(data.targets["score"].isnan().any())
