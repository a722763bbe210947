"""Source samplers: frequencies against the formulas, epoch length, streams and DDP shards.

Frequency checks draw ``N`` independent steps; a source of probability ``p`` has an empirical
frequency with standard error ``sqrt(p (1 - p) / N)``, and every check allows 5 standard errors
(a false failure has probability below 1e-6 per source, and the draws are seeded anyway).
"""

from __future__ import annotations

import math

import pytest
import torch

from polytask.data.base import DataError, MultiTaskData
from polytask.data.multisource import MultiSourceData
from polytask.data.sampling import (
    AllSources,
    Annealed,
    MultiSourceBatches,
    Proportional,
    RoundRobin,
    Temperature,
    available_samplers,
    iterate_multisource,
    make_sampler,
    source_shard,
    steps_per_epoch,
)
from polytask.tasks import Task

SIZES = [100, 400, 1500]


# Tiny tensors: one intra-op thread is faster, and immune to a busy machine.
pytestmark = pytest.mark.usefixtures("single_thread")


def frequencies(sampler, epoch: int, n: int = 20_000, seed: int = 0) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    counts = [0] * sampler.num_sources
    for step in range(n):
        for s in sampler.draw(step, epoch, g):
            counts[s] += 1
    return [c / n for c in counts]


def assert_matches(freq: list[float], p: list[float], n: int = 20_000) -> None:
    assert math.isclose(sum(p), 1.0, rel_tol=1e-12)
    for f, q in zip(freq, p, strict=True):
        se = math.sqrt(q * (1 - q) / n)
        assert abs(f - q) <= 5 * se, (freq, p)


def test_proportional() -> None:
    sampler = Proportional(SIZES)
    p = [n / sum(SIZES) for n in SIZES]
    assert sampler.probabilities(0) == pytest.approx(p)
    assert_matches(frequencies(sampler, 0), p)


def test_temperature_two_and_cap() -> None:
    sampler = Temperature(SIZES, temperature=2.0)
    roots = [math.sqrt(n) for n in SIZES]
    p = [r / sum(roots) for r in roots]
    assert sampler.probabilities(3) == pytest.approx(p)
    assert_matches(frequencies(sampler, 3), p)
    capped = Temperature(SIZES, temperature=1.0, max_size=400)
    assert capped.probabilities(0) == pytest.approx([100 / 900, 400 / 900, 400 / 900])
    proportional = [n / sum(SIZES) for n in SIZES]
    assert Temperature(SIZES, temperature=1.0).probabilities(0) == pytest.approx(proportional)


def test_annealed_first_and_last_epoch() -> None:
    epochs = 5
    sampler = Annealed(SIZES, num_epochs=epochs)
    # Stickland & Murray: alpha = 1 - 0.8 (e - 1) / (E - 1) for e = 1..E (here epoch = e - 1)
    for epoch in range(epochs):
        assert sampler.alpha(epoch) == pytest.approx(1 - 0.8 * epoch / (epochs - 1))
    assert sampler.alpha(0) == 1.0 and sampler.alpha(4) == pytest.approx(0.2)
    assert sampler.alpha(9) == pytest.approx(0.2)  # stays at the final value
    first = [n / sum(SIZES) for n in SIZES]
    last_w = [n**0.2 for n in SIZES]
    last = [w / sum(last_w) for w in last_w]
    assert sampler.probabilities(0) == pytest.approx(first)
    assert sampler.probabilities(4) == pytest.approx(last)
    assert_matches(frequencies(sampler, 0), first)
    assert_matches(frequencies(sampler, 4), last)
    assert Annealed(SIZES, num_epochs=1).alpha(0) == 1.0


def test_round_robin_and_all() -> None:
    g = torch.Generator().manual_seed(0)
    rr = RoundRobin(SIZES)
    assert [rr.draw(t, 0, g) for t in range(7)] == [[0], [1], [2], [0], [1], [2], [0]]
    assert rr.probabilities(0) == pytest.approx([1 / 3] * 3)
    everything = AllSources(SIZES)
    assert everything.draw(5, 2, g) == [0, 1, 2]
    assert everything.probabilities(0) == [1.0, 1.0, 1.0]


def test_registry_and_errors() -> None:
    assert available_samplers() == ["all", "annealed", "proportional", "round_robin", "temperature"]
    assert isinstance(make_sampler("temperature", SIZES, temperature=3), Temperature)
    with pytest.raises(KeyError, match="unknown source sampler"):
        make_sampler("uniform", SIZES)
    with pytest.raises(TypeError, match="annealed"):
        make_sampler("annealed", SIZES, epochs=3)
    with pytest.raises(DataError):
        Proportional([10, 0])
    with pytest.raises(DataError):
        Temperature(SIZES, temperature=0)


# ---------------------------------------------------------------------------- through the data
def sources(sizes: list[int]) -> MultiSourceData:
    """Source ``s`` labels task ``t{s}``; input column 0 is ``1000 * s + row``."""
    data = []
    for s, n in enumerate(sizes):
        x = torch.zeros(n, 3)
        x[:, 0] = 1000 * s + torch.arange(n)
        task = Task(f"t{s}", "regression", standardize=False)
        data.append(MultiTaskData(x, {task.name: torch.randn(n)}, [task], name=f"s{s}"))
    return MultiSourceData(data)


def source_of(x: torch.Tensor) -> torch.Tensor:
    return torch.div(x[:, 0], 1000, rounding_mode="floor").long()


def rows_of(x: torch.Tensor) -> torch.Tensor:
    return (x[:, 0] % 1000).long()


def test_epoch_length_and_batch_sizes() -> None:
    data = sources([20, 50, 7])
    # B_s = ceil(n_s / b_s) = 3, 7, 1 with b = 8
    assert steps_per_epoch(data, Proportional(data.sizes), 8) == 11
    assert steps_per_epoch(data, AllSources(data.sizes), 8) == 7
    assert steps_per_epoch(data, RoundRobin(data.sizes), {"s0": 5, "s1": 10, "s2": 7}) == 10
    assert steps_per_epoch(data, Proportional(data.sizes), 8, world_size=2) == 2 + 4 + 1
    g = torch.Generator().manual_seed(0)
    batches = list(iterate_multisource(data, RoundRobin(data.sizes), 8, g, 0))
    assert len(batches) == 11 and all(x.shape[0] == 8 for x, _ in batches)
    per = {"s0": 2, "s1": 5, "s2": 3}
    batches = list(iterate_multisource(data, AllSources(data.sizes), per, g, 0))
    assert len(batches) == 10  # max(10, 10, 3)
    for x, y in batches:
        assert source_of(x).tolist() == [0] * 2 + [1] * 5 + [2] * 3
        assert set(y) == {"t0", "t1", "t2"}
        assert torch.isnan(y["t0"][2:]).all() and not torch.isnan(y["t0"][:2]).any()
    # under "all", the largest source is seen exactly once per epoch and every source at least once
    x = torch.cat([b[0] for b in batches])
    assert sorted(rows_of(x[source_of(x) == 1]).tolist()) == list(range(50))
    assert set(rows_of(x[source_of(x) == 2]).tolist()) == set(range(7))
    with pytest.raises(DataError, match="exactly the sources"):
        list(iterate_multisource(data, AllSources(data.sizes), {"s0": 2}, g, 0))


def test_sources_follow_the_sampler_through_the_iterator() -> None:
    data = sources([20, 80])
    sampler = Temperature(data.sizes, temperature=2.0)
    g = torch.Generator().manual_seed(3)
    used = []
    for epoch in range(40):  # 25 steps an epoch, 1000 in all
        used += [int(source_of(x)[0]) for x, _ in iterate_multisource(data, sampler, 4, g, epoch)]
    n = len(used)
    assert n == 1000
    freq = [used.count(0) / n, used.count(1) / n]
    assert_matches(freq, sampler.probabilities(0), n)


def test_same_generator_same_batches() -> None:
    data = sources([20, 30])
    runs = [
        [x for x, _ in iterate_multisource(data, Proportional(data.sizes), 4,
                                           torch.Generator().manual_seed(7), 0)]
        for _ in range(2)
    ]  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_source_shards_are_disjoint_and_cover_the_source() -> None:
    for n, world in [(31, 3), (30, 3), (5, 5), (100, 4)]:
        shards = [source_shard(n, r, world, torch.Generator().manual_seed(11)) for r in range(world)]
        allrows = torch.cat(shards)
        assert allrows.numel() == n and sorted(allrows.tolist()) == list(range(n))
        assert max(s.numel() for s in shards) - min(s.numel() for s in shards) <= 1


def test_ranks_stay_in_step_and_see_disjoint_rows() -> None:
    data = sources([30, 61])
    world = 3
    sampler = Proportional(data.sizes)
    per_rank = [
        list(iterate_multisource(data, sampler, 5, torch.Generator().manual_seed(5), 0, r, world))
        for r in range(world)
    ]
    lengths = {len(b) for b in per_rank}
    assert lengths == {steps_per_epoch(data, sampler, 5, world)} == {2 + 5}
    for step in range(len(per_rank[0])):  # every rank uses the same source at every step
        assert len({int(source_of(b[step][0])[0]) for b in per_rank}) == 1
    # The first pass of each source: the ranks' rows are disjoint and cover the source. With 61
    # rows on 3 ranks the shards hold 21, 20 and 20 rows, so ranks 1 and 2 complete their 21-row
    # batch from their next pass: only the first len(shard) rows of a rank belong to pass one.
    everything = AllSources(data.sizes)
    per_rank = [
        torch.cat([x for x, _ in iterate_multisource(
            data, everything, {"s0": 10, "s1": 21}, torch.Generator().manual_seed(5), 0, r, world)])
        for r in range(world)
    ]  # fmt: skip
    for s, n in enumerate(data.sizes):
        seen = [
            rows_of(x[source_of(x) == s])[: len(range(r, n, world))] for r, x in enumerate(per_rank)
        ]
        assert sorted(torch.cat(seen).tolist()) == list(range(n))
    with pytest.raises(DataError, match="rank"):
        list(iterate_multisource(data, sampler, 5, torch.Generator(), 0, rank=3, world_size=3))
    with pytest.raises(DataError, match="fewer rows"):
        list(iterate_multisource(sources([2, 9]), Proportional([2, 9]), 1, torch.Generator(), 0,
                                 rank=0, world_size=3))  # fmt: skip


def test_sampler_must_match_the_data() -> None:
    data = sources([20, 30])
    with pytest.raises(DataError, match="sizes"):
        list(iterate_multisource(data, Proportional([20, 31]), 4, torch.Generator(), 0))


def test_batch_source_adapter() -> None:
    data = sources([20, 30])
    adapter = MultiSourceBatches(data, "annealed", num_epochs=3)
    assert isinstance(adapter.sampler, Annealed)
    batches = list(adapter.batches(10, torch.Generator().manual_seed(0), 1, 0, 1))
    assert len(batches) == adapter.steps_per_epoch(10) == 5
    fixed = MultiSourceBatches(data, AllSources(data.sizes), batch_size={"s0": 2, "s1": 3})
    x, _ = next(iter(fixed.batches(10, torch.Generator().manual_seed(0), 0, 0, 1)))
    assert x.shape[0] == 5
