"""Which source feeds each training step, and how an epoch over several sources is defined.

Samplers (:func:`make_sampler` by name; every class takes the sources' sizes ``n_s``):

``all``
    every step takes one batch from *every* source and concatenates them ("all tasks every step");
``round_robin``
    step ``t`` of an epoch uses source ``t mod S``: a deterministic cycle;
``proportional``
    one source per step, ``p_s ∝ n_s`` (examples are seen at the same rate whatever their source);
``temperature``
    ``p_s ∝ min(n_s, K)^(1/T)`` (T5, Raffel et al. 2020): ``T = 1`` is proportional, ``T → ∞``
    uniform; ``K`` (``max_size``, optional) caps the size that counts;
``annealed``
    ``p_s ∝ n_s^α`` with ``α = 1 - 0.8 (e - 1)/(E - 1)`` for epochs ``e = 1..E`` (Stickland & Murray,
    "BERT and PALs", ICML 2019): proportional in the first epoch, close to uniform (α = 0.2) in the
    last, so small tasks get more weight as training goes. Here epochs are counted from 0, so
    ``α = 1 - 0.8 · epoch/(E - 1)``, and ``α`` stays at its final value after epoch ``E - 1``.

``probabilities(epoch)`` gives each source's probability of being used by one step (for ``all``,
1 for every source; for ``round_robin``, the long-run frequency ``1/S``). ``draw(step, epoch,
generator)`` returns the sources one step uses, drawing only from ``generator``.

Definition of an epoch. Each source is consumed as an endless stream of batches of its own size
``b_s`` (per rank): a fresh seeded permutation per pass, and a batch that crosses the end of a pass
is completed from the next pass, so every batch has exactly ``b_s`` rows. With ``B_s = ⌈n_s / b_s⌉``
batches per pass (``⌈⌈n_s / W⌉ / b_s⌉`` with ``W`` ranks), an epoch is

* ``max_s B_s`` steps for ``all`` (every source is seen at least once, smaller ones cycle);
* ``Σ_s B_s`` steps for the one-source-per-step samplers: the same number of batches as one pass
  over every source. Under ``proportional`` sampling every row is then seen once per epoch *in
  expectation*; under the others small sources are seen more often and large ones less.

Streams restart at every epoch (new permutations drawn from ``generator``).

Distributed training. ``generator`` must be seeded identically on every rank (the training loop
does): source choices and permutations are then identical everywhere, and rank ``r`` takes rows
``perm[r::W]`` of every permutation of every source (:func:`source_shard`), so within a pass the
ranks' shards are disjoint and together cover the source. Every rank runs the same number of steps
and uses the same source(s) at each step. Each source needs at least ``W`` rows.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from polytask.data.base import Batch, DataError
from polytask.data.multisource import MultiSourceData

__all__ = [
    "AllSources",
    "Annealed",
    "MultiSourceBatches",
    "Proportional",
    "RoundRobin",
    "SourceSampler",
    "Temperature",
    "available_samplers",
    "iterate_multisource",
    "make_sampler",
    "source_batch_sizes",
    "source_shard",
    "steps_per_epoch",
]


class SourceSampler:
    """Chooses the source(s) of each step. Subclasses set ``name`` and ``probabilities``."""

    name: ClassVar[str] = ""
    #: ``False`` when a step uses every source at once (``all``).
    single_source: ClassVar[bool] = True

    def __init__(self, sizes: Sequence[int]) -> None:
        sizes = [int(n) for n in sizes]
        if not sizes or any(n < 1 for n in sizes):
            raise DataError(f"{type(self).__name__}: source sizes must be >= 1, got {sizes}")
        self.sizes = sizes
        self._cdf: tuple[int, list[float]] | None = None

    @property
    def num_sources(self) -> int:
        return len(self.sizes)

    def probabilities(self, epoch: int) -> list[float]:
        """Probability that a step of epoch ``epoch`` (0-based) uses each source."""
        raise NotImplementedError

    def draw(self, step: int, epoch: int, generator: torch.Generator) -> list[int]:
        """The source indices used at ``step`` (0-based within the epoch).

        One uniform number from ``generator`` per step, mapped through the cumulative
        probabilities of ``epoch`` (inverse-CDF sampling).
        """
        if self._cdf is None or self._cdf[0] != epoch:
            self._cdf = (epoch, list(itertools.accumulate(self.probabilities(epoch))))
        cdf = self._cdf[1]
        u = float(torch.rand(1, generator=generator, dtype=torch.float64)) * cdf[-1]
        return [min(bisect.bisect_right(cdf, u), len(cdf) - 1)]

    def hyperparameters(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}(sizes={self.sizes}{', ' + args if args else ''})"


def _normalise(weights: Sequence[float]) -> list[float]:
    total = math.fsum(weights)
    return [w / total for w in weights]


class AllSources(SourceSampler):
    """Every source at every step; the step's batch concatenates one batch of each."""

    name = "all"
    single_source = False

    def probabilities(self, epoch: int) -> list[float]:
        return [1.0] * self.num_sources

    def draw(self, step: int, epoch: int, generator: torch.Generator) -> list[int]:
        return list(range(self.num_sources))


class RoundRobin(SourceSampler):
    """Source ``step mod S``: every source equally often, in a fixed cycle."""

    name = "round_robin"

    def probabilities(self, epoch: int) -> list[float]:
        return [1.0 / self.num_sources] * self.num_sources

    def draw(self, step: int, epoch: int, generator: torch.Generator) -> list[int]:
        return [step % self.num_sources]


class Proportional(SourceSampler):
    """``p_s ∝ n_s``."""

    name = "proportional"

    def probabilities(self, epoch: int) -> list[float]:
        return _normalise(self.sizes)


class Temperature(SourceSampler):
    """``p_s ∝ min(n_s, max_size)^(1/temperature)`` (T5's temperature-scaled mixing)."""

    name = "temperature"

    def __init__(
        self, sizes: Sequence[int], temperature: float = 2.0, max_size: int | None = None
    ) -> None:
        super().__init__(sizes)
        if not temperature > 0:
            raise DataError(f"temperature must be > 0, got {temperature}")
        if max_size is not None and max_size < 1:
            raise DataError(f"max_size must be >= 1, got {max_size}")
        self.temperature = float(temperature)
        self.max_size = max_size

    def probabilities(self, epoch: int) -> list[float]:
        cap = self.max_size
        return _normalise(
            [float(min(n, cap) if cap else n) ** (1.0 / self.temperature) for n in self.sizes]
        )

    def hyperparameters(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "max_size": self.max_size}


class Annealed(SourceSampler):
    """``p_s ∝ n_s^α(epoch)``, ``α`` from 1 (first epoch) to ``final_alpha`` (last epoch).

    Stickland & Murray 2019 use ``final_alpha = 0.2``: ``α = 1 - 0.8 (e - 1)/(E - 1)``, epochs
    ``e = 1..E``; with 0-based epochs ``α = 1 - (1 - final_alpha) · epoch/(E - 1)``.
    """

    name = "annealed"

    def __init__(self, sizes: Sequence[int], num_epochs: int, final_alpha: float = 0.2) -> None:
        super().__init__(sizes)
        if num_epochs < 1:
            raise DataError(f"num_epochs must be >= 1, got {num_epochs}")
        if not 0.0 <= final_alpha <= 1.0:
            raise DataError(f"final_alpha must be in [0, 1], got {final_alpha}")
        self.num_epochs = int(num_epochs)
        self.final_alpha = float(final_alpha)

    def alpha(self, epoch: int) -> float:
        if epoch < 0:
            raise DataError(f"epochs are counted from 0, got {epoch}")
        if self.num_epochs == 1:
            return 1.0
        progress = min(epoch, self.num_epochs - 1) / (self.num_epochs - 1)
        return 1.0 - (1.0 - self.final_alpha) * progress

    def probabilities(self, epoch: int) -> list[float]:
        a = self.alpha(epoch)
        return _normalise([float(n) ** a for n in self.sizes])

    def hyperparameters(self) -> dict[str, Any]:
        return {"num_epochs": self.num_epochs, "final_alpha": self.final_alpha}


_SAMPLERS: dict[str, type[SourceSampler]] = {
    cls.name: cls for cls in (AllSources, RoundRobin, Proportional, Temperature, Annealed)
}


def available_samplers() -> list[str]:
    return sorted(_SAMPLERS)


def make_sampler(
    name: str, sizes: Sequence[int] | MultiSourceData, **options: Any
) -> SourceSampler:
    """Build sampler ``name`` for sources of ``sizes`` (or of a :class:`MultiSourceData`)."""
    if name not in _SAMPLERS:
        raise KeyError(f"unknown source sampler {name!r}; available: {available_samplers()}")
    if isinstance(sizes, MultiSourceData):
        sizes = sizes.sizes
    try:
        return _SAMPLERS[name](sizes, **options)
    except TypeError as err:
        raise TypeError(f"source sampler {name!r}: {err}") from None


# ---------------------------------------------------------------------------- epochs and streams
def source_batch_sizes(data: MultiSourceData, batch_size: int | Mapping[str, int]) -> list[int]:
    """Per-source (per-rank) batch sizes, in source order, from an int or ``{source: size}``."""
    if isinstance(batch_size, Mapping):
        unknown = set(batch_size) - set(data.names)
        missing = [n for n in data.names if n not in batch_size]
        if unknown or missing:
            raise DataError(
                f"per-source batch sizes must name exactly the sources {data.names}; "
                f"unknown {sorted(unknown)}, missing {missing}"
            )
        sizes = [int(batch_size[n]) for n in data.names]
    else:
        sizes = [int(batch_size)] * len(data)
    if any(b < 1 for b in sizes):
        raise DataError(f"batch sizes must be >= 1, got {sizes}")
    return sizes


def _check_world(data: MultiSourceData, rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    small = [n for n, size in zip(data.names, data.sizes, strict=True) if size < world_size]
    if small:
        raise DataError(f"source(s) {small} have fewer rows than the {world_size} ranks")


def steps_per_epoch(
    data: MultiSourceData,
    sampler: SourceSampler,
    batch_size: int | Mapping[str, int],
    world_size: int = 1,
) -> int:
    """``max_s B_s`` for ``all``, ``Σ_s B_s`` otherwise, ``B_s = ⌈⌈n_s / W⌉ / b_s⌉``."""
    per_pass = [
        math.ceil(math.ceil(n / world_size) / b)
        for n, b in zip(data.sizes, source_batch_sizes(data, batch_size), strict=True)
    ]
    return max(per_pass) if not sampler.single_source else sum(per_pass)


def source_shard(
    n: int, rank: int, world_size: int, generator: torch.Generator
) -> Tensor:
    """One pass over a source of ``n`` rows as seen by ``rank``: ``randperm(n)[rank::W]``.

    The permutation is the same on every rank when ``generator`` is, so the shards of one pass are
    disjoint and their union is ``range(n)``.
    """
    return torch.randperm(n, generator=generator)[rank::world_size]


class _Stream:
    """Endless batches of ``batch`` row indices from one source's shard, pass after pass."""

    def __init__(self, n: int, batch: int, rank: int, world_size: int, seed: int) -> None:
        self.n, self.batch, self.rank, self.world_size = n, batch, rank, world_size
        self.generator = torch.Generator().manual_seed(seed)
        self.buffer = torch.empty(0, dtype=torch.long)

    def next(self) -> Tensor:
        while self.buffer.numel() < self.batch:
            shard = source_shard(self.n, self.rank, self.world_size, self.generator)
            self.buffer = torch.cat([self.buffer, shard])
        out, self.buffer = self.buffer[: self.batch], self.buffer[self.batch :]
        return out


def iterate_multisource(
    data: MultiSourceData,
    sampler: SourceSampler,
    batch_size: int | Mapping[str, int],
    generator: torch.Generator,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:
    """One epoch of ``(inputs, targets)`` batches; every task key present (missing ones filled).

    See the module docstring for the epoch length, the streams and the DDP shards. ``batch_size``
    is per rank and per source (an int or ``{source: size}``); a step of ``all`` concatenates one
    batch of every source, in source order.
    """
    if sampler.sizes != data.sizes:
        raise DataError(
            f"the sampler was built for source sizes {sampler.sizes}, the data has {data.sizes}"
        )
    _check_world(data, rank, world_size)
    sizes = source_batch_sizes(data, batch_size)
    steps = steps_per_epoch(data, sampler, batch_size, world_size)
    seeds = torch.randint(0, 2**62, (len(data),), generator=generator).tolist()
    streams = [
        _Stream(n, b, rank, world_size, seed)
        for n, b, seed in zip(data.sizes, sizes, seeds, strict=True)
    ]
    for step in range(steps):
        chosen = sampler.draw(step, epoch, generator)
        yield data.gather([(s, streams[s].next()) for s in chosen])


class MultiSourceBatches:
    """A training-loop batch source (``fit(..., train_source=...)``) over several sources.

    ``batch_size`` (int or ``{source: size}``) overrides the loop's batch size when given.
    """

    def __init__(
        self,
        data: MultiSourceData,
        sampler: SourceSampler | str,
        batch_size: int | Mapping[str, int] | None = None,
        **sampler_options: Any,
    ) -> None:
        self.data = data
        self.sampler = (
            make_sampler(sampler, data, **sampler_options) if isinstance(sampler, str) else sampler
        )
        if batch_size is not None:
            source_batch_sizes(data, batch_size)  # validate now
        self.batch_size = batch_size

    def batches(
        self, batch_size: int, generator: torch.Generator, epoch: int, rank: int, world_size: int
    ) -> Iterator[Batch]:
        size = self.batch_size if self.batch_size is not None else batch_size
        return iterate_multisource(
            self.data, self.sampler, size, generator, epoch, rank=rank, world_size=world_size
        )

    def steps_per_epoch(self, batch_size: int, world_size: int = 1) -> int:
        size = self.batch_size if self.batch_size is not None else batch_size
        return steps_per_epoch(self.data, self.sampler, size, world_size)
