"""Load-balancing strategies, deterministic: plain objects, a seeded random.Random."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from services.router.strategies import (
    LatencyAware,
    LeastInFlight,
    RoundRobin,
    Weighted,
    make_strategy,
    update_ewma,
)


@dataclass(eq=False)
class D:
    index: int
    weight: float = 1.0
    in_flight: int = 0
    ewma: float | None = None


def picks(strategy, candidates, n):
    return [strategy.choose(candidates).index for _ in range(n)]


def test_round_robin_cycles_in_order():
    ds = [D(0), D(1), D(2)]
    assert picks(RoundRobin(3), ds, 7) == [0, 1, 2, 0, 1, 2, 0]


def test_round_robin_skips_unavailable_without_shifting_the_others():
    ds = [D(0), D(1), D(2)]
    rr = RoundRobin(3)
    assert rr.choose(ds).index == 0
    assert rr.choose([ds[0], ds[2]]).index == 2  # 1 is unavailable: the next one after it
    assert rr.choose(ds).index == 0


def test_weighted_follows_weights():
    ds = [D(0, weight=3), D(1, weight=1)]
    counts = Counter(picks(Weighted(random.Random(7)), ds, 4000))
    assert 2800 < counts[0] < 3200
    assert counts[0] + counts[1] == 4000


def test_weighted_draws_from_its_own_generator():
    """Same seed, same picks; another seed, other picks: the chooser's randomness is the generator
    it was given (not the global `random`, which would make runs unrepeatable)."""
    ds = [D(0, weight=1), D(1, weight=2), D(2, weight=5)]
    assert picks(Weighted(random.Random(1)), ds, 50) == picks(Weighted(random.Random(1)), ds, 50)
    assert picks(Weighted(random.Random(1)), ds, 50) != picks(Weighted(random.Random(2)), ds, 50)
    random.seed(99)  # the global generator's state changes nothing
    first = picks(Weighted(random.Random(1)), ds, 50)
    random.seed(100)
    assert picks(Weighted(random.Random(1)), ds, 50) == first


def test_weighted_only_picks_among_candidates():
    ds = [D(0, weight=100), D(1, weight=1)]
    assert set(picks(Weighted(random.Random(3)), [ds[1]], 20)) == {1}


def test_least_in_flight_prefers_the_idle_one_and_rotates_ties():
    ds = [D(0, in_flight=3), D(1, in_flight=1), D(2, in_flight=1)]
    s = LeastInFlight(3)
    assert picks(s, ds, 4) == [1, 2, 1, 2]
    ds[0].in_flight = 0
    assert s.choose(ds).index == 0


def test_latency_tries_unmeasured_first_then_the_fastest():
    ds = [D(0, ewma=0.5), D(1, ewma=None), D(2, ewma=0.1)]
    s = LatencyAware(3, random.Random(0), explore=0.0)
    assert s.choose(ds).index == 1
    ds[1].ewma = 0.3
    assert picks(s, ds, 3) == [2, 2, 2]


def test_latency_weighs_calls_in_flight():
    # 0.1 s with 5 in flight is worse than 0.3 s idle: peak-EWMA style
    ds = [D(0, ewma=0.1, in_flight=5), D(1, ewma=0.3, in_flight=0)]
    assert LatencyAware(2, random.Random(0), explore=0.0).choose(ds).index == 1


def test_latency_explores_sometimes():
    ds = [D(0, ewma=0.1), D(1, ewma=5.0)]
    counts = Counter(picks(LatencyAware(2, random.Random(5), explore=0.2), ds, 1000))
    assert 0 < counts[1] < 250  # the slow one is re-measured now and then, not used much


def test_ewma_update():
    assert update_ewma(None, 1.0) == 1.0
    assert update_ewma(1.0, 2.0, alpha=0.5) == 1.5


@pytest.mark.parametrize(
    "name,cls",
    [
        ("round-robin", RoundRobin),
        ("weighted", Weighted),
        ("least-in-flight", LeastInFlight),
        ("latency", LatencyAware),
    ],
)
def test_make_strategy(name, cls):
    assert isinstance(make_strategy(name, 2, random.Random(0)), cls)


def test_make_strategy_rejects_unknown():
    with pytest.raises(ValueError, match="unknown"):
        make_strategy("fastest", 2)
