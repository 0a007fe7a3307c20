"""Budgets on both stores, the Redis one against a real redis-server: no overshoot, ever.

The fake clocks start from the real current day: Redis expires counters by wall-clock time, so a
clock in the past would see its keys vanish at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import pytest
import redis as redis_sync

from services.gateway.budget import (
    DAY_MARGIN_SECONDS,
    Budget,
    BudgetExceeded,
    BudgetUnavailable,
    Limits,
    RedisBudget,
    day_end,
    utc_day,
)
from tests.support import budgets as shared_budgets
from tests.support.budgets import SLOW_MACHINE_TIMEOUT, Factory
from tests.support.redis_server import RedisServer

make = shared_budgets.make  # the shared memory/redis budget factory fixture, by this module's name

CONFIGURED = {"total": 2.0, "tenant": 1.5, "user": 0.6}
TENANTS = ("t0", "t1")
# hundreds of connects at once on a shared, starved CPU can exceed the production timeout (1 s);
# these tests are about the arithmetic. A stopped Redis refuses connections at once either way.
USERS = ("u0", "u1", "u2")


class Clock:
    def __init__(self) -> None:
        midnight = time.time() // 86400 * 86400
        self.t = midnight + 86400 - 5  # 23:59:55 UTC today

    def __call__(self) -> float:
        return self.t


def limits(total=None, tenant=None, user=None) -> Limits:
    return Limits.daily(total, tenant, user)




async def hammer(budgets: list[Budget], n: int, seed: int) -> list[BudgetExceeded]:
    """n concurrent requests: reserve 0.05, then succeed (settle <= reserved) or fail (release)."""
    rng = random.Random(seed)
    refusals: list[BudgetExceeded] = []

    async def provider_call(i: int) -> float:
        await asyncio.sleep(rng.random() / 200)
        if i % 6 == 0:
            raise ConnectionError("provider failed")
        return rng.choice([0.05, 0.04])  # at most what was reserved

    async def one(i: int) -> None:
        budget = budgets[i % len(budgets)]
        await asyncio.sleep(rng.random() / 50)  # arrivals spread out, interleaved with settles
        try:
            reservation = await budget.reserve(TENANTS[i % 2], USERS[i % 3], 0.05)
        except BudgetExceeded as exc:
            refusals.append(exc)
            return
        try:
            cost = await provider_call(i)
        except ConnectionError:
            await budget.release(reservation)
            return
        await budget.settle(reservation, cost)

    await asyncio.gather(*(one(i) for i in range(n)))
    return refusals


async def check_no_overshoot(budget: Budget, refusals: list[BudgetExceeded]) -> float:
    total = 0.0
    for tenant in TENANTS:
        for user in USERS:
            u = await budget.usage(tenant, user)
            assert u["user"]["spent"] <= CONFIGURED["user"] and u["user"]["reserved"] == 0
            assert u["tenant"]["spent"] <= CONFIGURED["tenant"] and u["tenant"]["reserved"] == 0
        total += u["tenant"]["spent"]
    assert total <= CONFIGURED["total"]
    assert refusals, "the limits were never reached: the test proves nothing"
    assert all(CONFIGURED[e.scope] == e.limit for e in refusals)
    # spend really went up to the limits: even if all arrived before any settled, the 40 requests
    # that fit in the total would settle > 1.0
    assert total > CONFIGURED["total"] / 2
    return total


async def test_200_concurrent_requests_never_overshoot(make: Factory):
    budget = make(limits(**{"total": 2.0, "tenant": 1.5, "user": 0.6}), clock=Clock())
    refusals = await hammer([budget], 240, seed=1)
    await check_no_overshoot(budget, refusals)


async def test_two_replicas_sharing_redis_never_overshoot(redis_server: RedisServer):
    clock = Clock()
    lims = limits(total=2.0, tenant=1.5, user=0.6)
    a, b = (RedisBudget(lims, redis_server.url, clock=clock, socket_timeout=SLOW_MACHINE_TIMEOUT)
            for _ in range(2))
    try:
        refusals = await hammer([a, b], 300, seed=2)
        total = await check_no_overshoot(a, refusals)
        assert await a.usage("t0", "u0") == await b.usage("t0", "u0")  # one shared view
        r = redis_sync.Redis.from_url(redis_server.url)
        counters = r.hgetall(f"qlens:budget:{utc_day(clock())}:total:all")
        assert int(counters[b"spent"]) == round(total * 1_000_000) and int(counters[b"reserved"]) == 0
        r.close()
    finally:
        await a.close()
        await b.close()


async def test_failures_release_every_reservation(make: Factory):
    budget = make(limits(total=1, tenant=1, user=1), clock=Clock())
    for _ in range(3):
        reservation = await budget.reserve("acme", "alice", 1)  # the whole budget
        with pytest.raises(BudgetExceeded):
            await budget.reserve("acme", "bob", 0.01)
        await budget.release(reservation)
    u = await budget.usage("acme", "alice")
    assert u["tenant"] == {"spent": 0.0, "reserved": 0.0, "limit": 1.0, "remaining": 1.0}


async def test_day_rollover_resets_at_midnight_utc(make: Factory):
    clock = Clock()
    budget = make(limits(tenant=1), clock=clock)
    yesterday = utc_day(clock())
    late = await budget.reserve("acme", "alice", 0.4)
    await budget.settle(await budget.reserve("acme", "alice", 0.6), 0.6)
    with pytest.raises(BudgetExceeded) as exc:
        await budget.reserve("acme", "alice", 0.01)
    assert exc.value.scope == "tenant"

    clock.t += 10  # 00:00:05 the next day
    u = await budget.usage("acme", "alice")
    assert u["date"] != yesterday and u["tenant"]["spent"] == 0 and u["tenant"]["remaining"] == 1.0
    await budget.settle(await budget.reserve("acme", "alice", 1), 0.5)
    await budget.settle(late, 0.4)  # settles against the day it was reserved on
    assert (await budget.usage("acme", "alice"))["tenant"]["spent"] == 0.5


async def test_abandoned_reservations_return_after_their_lease(make: Factory):
    clock = Clock()
    budget = make(limits(total=1), clock=clock, lease_seconds=2)
    lost = await budget.reserve("acme", "alice", 1)  # its replica "dies" before settling
    with pytest.raises(BudgetExceeded):
        await budget.reserve("acme", "bob", 0.5)
    clock.t += 3
    r = await budget.reserve("acme", "bob", 0.5)
    await budget.settle(lost, 0.1)  # arrives after all: spend counts, nothing is released twice
    await budget.release(r)
    u = await budget.usage("acme", "alice")
    assert u["user"]["spent"] == 0.1 and u["tenant"]["reserved"] == 0.0


async def test_redis_keys_are_per_day_and_expire_after_it(redis_server: RedisServer):
    clock = Clock()
    budget = RedisBudget(limits(total=5), redis_server.url, clock=clock)
    try:
        await budget.settle(await budget.reserve("acme", "alice", 1), 0.25)
    finally:
        await budget.close()
    day = utc_day(clock())
    r = redis_sync.Redis.from_url(redis_server.url)
    expected_expiry = int(day_end(day).timestamp()) + DAY_MARGIN_SECONDS
    for key in (f"qlens:budget:{day}:total:all", f"qlens:budget:{day}:tenant:acme",
                f"qlens:budget:{day}:user:acme/alice"):
        assert r.hgetall(key) == {b"spent": b"250000", b"reserved": b"0"}
        assert r.expiretime(key) == expected_expiry
    r.close()


async def test_fail_closed_refuses_while_redis_is_down_then_recovers(redis_server: RedisServer):
    budget = RedisBudget(limits(total=5), redis_server.url, clock=Clock())
    try:
        held = await budget.reserve("acme", "alice", 1)
        redis_server.stop()
        with pytest.raises(BudgetUnavailable):
            await budget.reserve("acme", "alice", 1)
        with pytest.raises(BudgetUnavailable):
            await budget.usage("acme", "alice")
        with pytest.raises(BudgetUnavailable):
            await budget.ping()
        await budget.settle(held, 0.5)  # never fails the already-served request
        redis_server.start()
        await budget.ping()
        reservation = await budget.reserve("acme", "alice", 1)
        assert reservation.store == "redis"
    finally:
        await budget.close()


async def test_fail_open_counts_locally_and_warns_once(redis_server: RedisServer, caplog):
    budget = RedisBudget(limits(user=1), redis_server.url, fail_open=True, clock=Clock())
    try:
        redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="qlens.gateway.budget"):
            first = await budget.reserve("acme", "alice", 0.6)
            assert first.store == "local"
            with pytest.raises(BudgetExceeded) as exc:  # limits still hold, per replica
                await budget.reserve("acme", "alice", 0.6)
            assert exc.value.scope == "user"
            await budget.settle(first, 0.5)
            u = await budget.usage("acme", "alice")
            assert u["store"] == "local" and u["user"]["spent"] == 0.5
        warnings = [r for r in caplog.records if "failOpen" in r.getMessage()]
        assert len(warnings) == 1
        redis_server.start()
        with caplog.at_level(logging.WARNING, logger="qlens.gateway.budget"):
            again = await budget.reserve("acme", "alice", 0.6)
        assert again.store == "redis"
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        assert (await budget.usage("acme", "alice"))["store"] == "redis"
    finally:
        await budget.close()
