"""Load-balancing strategies: which of a model's deployments takes the next call.

Each strategy picks from `candidates`, the deployments that may be called right now (provider on,
circuit not open, preferably not already tried by this request), always a non-empty subset of the
model's deployments in catalog order. Randomness comes from an injected `random.Random`, so every
strategy is deterministic under test.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, TypeVar


class Balanced(Protocol):
    """What a strategy reads from a deployment (see `catalog.Member`); read-only."""

    @property
    def index(self) -> int: ...  # position in the model's deployment list

    @property
    def weight(self) -> float: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def ewma(self) -> float | None: ...  # seconds; None until the first successful call


B = TypeVar("B", bound=Balanced)


class Strategy(Protocol):
    """Picks one of `candidates` and returns it (the caller's own object, whatever its type)."""

    def choose(self, candidates: Sequence[B]) -> B: ...


class RoundRobin:
    """Each deployment in turn. Skipped deployments do not shift the rotation for the others."""

    def __init__(self, size: int) -> None:
        self._size = max(size, 1)
        self._next = 0

    def choose(self, candidates: Sequence[B]) -> B:
        chosen = min(candidates, key=lambda c: (c.index - self._next) % self._size)
        self._next = (chosen.index + 1) % self._size
        return chosen


class Weighted:
    """Random, proportional to each deployment's weight."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[B]) -> B:
        point = self._rng.random() * sum(c.weight for c in candidates)
        for c in candidates:
            point -= c.weight
            if point < 0:
                return c
        return candidates[-1]  # float rounding at the very top of the range


class LeastInFlight:
    """The deployment with the fewest calls in progress; ties rotate so equal load spreads."""

    def __init__(self, size: int) -> None:
        self._tie = RoundRobin(size)

    def choose(self, candidates: Sequence[B]) -> B:
        fewest = min(c.in_flight for c in candidates)
        return self._tie.choose([c for c in candidates if c.in_flight == fewest])


class LatencyAware:
    """Lowest expected wait: EWMA latency times (calls in flight + 1), "peak EWMA" style.

    A deployment with no sample yet is tried first. With probability `explore`, a random
    candidate is chosen instead, so a deployment that was slow once gets measured again.
    """

    def __init__(self, size: int, rng: random.Random | None = None, explore: float = 0.05) -> None:
        self._rng = rng or random.Random()
        self._explore = explore
        self._tie = RoundRobin(size)

    def choose(self, candidates: Sequence[B]) -> B:
        unmeasured = [c for c in candidates if c.ewma is None]
        if unmeasured:
            return self._tie.choose(unmeasured)
        if len(candidates) > 1 and self._rng.random() < self._explore:
            return self._rng.choice(list(candidates))
        return min(candidates, key=lambda c: (c.ewma or 0.0) * (c.in_flight + 1))


def make_strategy(name: str, size: int, rng: random.Random | None = None) -> Strategy:
    if name == "round-robin":
        return RoundRobin(size)
    if name == "weighted":
        return Weighted(rng)
    if name == "least-in-flight":
        return LeastInFlight(size)
    if name == "latency":
        return LatencyAware(size, rng)
    raise ValueError(f"unknown load-balancing strategy {name!r}")


EWMA_ALPHA = 0.3  # weight of the newest sample


def update_ewma(previous: float | None, sample: float, alpha: float = EWMA_ALPHA) -> float:
    return sample if previous is None else alpha * sample + (1 - alpha) * previous
