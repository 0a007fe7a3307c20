"""Rate limits, monthly budgets, key scopes, runtime overrides and the ledger, on both stores.

The Redis store runs against a real redis-server. Clocks are injected; they start from the real
current time (Redis expires counters by wall-clock time, so a clock in the past would see its keys
vanish at once).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from services.gateway.budget import (
    BudgetExceeded,
    Limits,
    RedisBudget,
    ScopeLimits,
    month_end,
    utc_day,
    utc_month,
)
from tests.support import budgets as shared_budgets
from tests.support.budgets import Factory

make = shared_budgets.make  # the shared memory/redis budget factory fixture, by this module's name


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def minute_start_clock() -> Clock:
    """The start of the next minute plus 1 s: a whole minute window ahead, 59 s to its end."""
    return Clock(time.time() // 60 * 60 + 61)




async def test_rpm_50_under_200_concurrent_accepts_exactly_50(make: Factory):
    clock = minute_start_clock()
    budget = make(Limits(tenant=ScopeLimits(rpm=50)), clock=clock)

    async def one(i: int) -> dict[str, str] | BudgetExceeded:
        try:
            r = await budget.reserve("acme", f"u{i % 7}", 0.001)
        except BudgetExceeded as exc:
            return exc
        await budget.settle(r, 0.0005)  # a settle gives no request back
        return r.headers

    results = await asyncio.gather(*(one(i) for i in range(200)))
    accepted = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(accepted) == 50 and len(refused) == 150
    assert sorted(int(h["x-ratelimit-remaining-requests"]) for h in accepted) == list(range(50))
    assert {h["x-ratelimit-limit-requests"] for h in accepted} == {"50"}
    assert {h["x-ratelimit-reset-requests"] for h in accepted} == {"59s"}
    for exc in refused:
        assert (exc.scope, exc.window, exc.limit, exc.code) == ("tenant", "rpm", 50, "rate_limit_exceeded")
        assert exc.headers == {"x-ratelimit-limit-requests": "50", "x-ratelimit-remaining-requests": "0",
                               "x-ratelimit-reset-requests": "59s", "retry-after": "59"}
        assert "tenant rate limit of 50 requests per minute (rpm)" in str(exc)
    # another tenant has its own window; the next minute starts fresh
    await budget.reserve("globex", "u0", 0.001)
    clock.t += 59
    r = await budget.reserve("acme", "u0", 0.001)
    assert r.headers["x-ratelimit-remaining-requests"] == "49"


async def test_tpm_reserves_the_worst_case_and_settles_to_actual(make: Factory):
    clock = minute_start_clock()
    budget = make(Limits(user=ScopeLimits(tpm=1000)), clock=clock)

    async def one() -> object:
        try:
            return await budget.reserve("acme", "alice", 0.0, tokens=100)
        except BudgetExceeded as exc:
            return exc

    results = await asyncio.gather(*(one() for _ in range(200)))
    held = [r for r in results if not isinstance(r, BudgetExceeded)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(held) == 10 and len(refused) == 190
    assert {(e.scope, e.window, e.limit) for e in refused} == {("user", "tpm", 1000)}
    assert refused[0].headers["x-ratelimit-remaining-tokens"] == "0"
    for r in held:  # each used 40 of its 100
        await budget.settle(r, 0.0, input_tokens=30, output_tokens=10)
    more = [await budget.reserve("acme", "alice", 0.0, tokens=100) for _ in range(6)]
    assert more[-1].headers["x-ratelimit-remaining-tokens"] == "0"  # 400 spent + 600 reserved
    with pytest.raises(BudgetExceeded):
        await budget.reserve("acme", "alice", 0.0, tokens=1)
    await budget.release(more[0])  # a failed request gives its tokens back
    r = await budget.reserve("acme", "alice", 0.0, tokens=100)
    assert r.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_monthly_budget_spans_days_and_rolls_over_at_the_month(make: Factory):
    now = time.time()
    end = month_end(utc_month(now)).timestamp()
    clock = Clock(end - 86400 - 5)  # 23:59:55 on the month's second-to-last day
    budget = make(Limits(tenant=ScopeLimits(daily=10_000_000, monthly=1_000_000)), clock=clock)
    await budget.settle(await budget.reserve("acme", "alice", 0.7), 0.7)
    clock.t += 10  # the last day of the month: a fresh day, the same month
    await budget.settle(await budget.reserve("acme", "bob", 0.3), 0.3)
    with pytest.raises(BudgetExceeded) as exc:
        await budget.reserve("acme", "carol", 0.01)
    assert (exc.value.scope, exc.value.window, exc.value.limit) == ("tenant", "monthly", 1.0)
    first_of_next = datetime.fromtimestamp(end, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"monthly tenant budget of $1.00 exceeded; it resets at {first_of_next}" == str(exc.value)
    assert exc.value.retry_after == 86400 - 5
    u = await budget.usage("acme", "alice")
    assert u["monthly"]["tenant"] == {"spent": 1.0, "reserved": 0.0, "limit": 1.0, "remaining": 0.0}
    assert u["tenant"]["spent"] == 0.3  # today's part
    clock.t += 86400  # 00:00:05 on the 1st of the next month
    await budget.reserve("acme", "carol", 0.9)
    u = await budget.usage("acme", "alice")
    assert u["monthly"]["month"] == utc_month(clock.t) and u["monthly"]["tenant"]["reserved"] == 0.9


async def test_key_scope_and_runtime_tenant_overrides(make: Factory):
    clock = Clock(time.time())
    budget = make(Limits(tenant=ScopeLimits(daily=5_000_000), key=ScopeLimits(daily=2_000_000)), clock=clock)
    await budget.reserve("acme", "alice", 1.5, key="aaaaaaaaaaaa")
    with pytest.raises(BudgetExceeded) as exc:  # the environment's per-key default
        await budget.reserve("acme", "alice", 1.0, key="aaaaaaaaaaaa")
    assert (exc.value.scope, exc.value.window, exc.value.limit) == ("key", "daily", 2.0)
    await budget.reserve("acme", "alice", 1.0, key="bbbbbbbbbbbb", key_limits={"daily": 1.0})
    with pytest.raises(BudgetExceeded) as exc:  # the key's own limit replaces the default
        await budget.reserve("acme", "alice", 0.5, key="bbbbbbbbbbbb", key_limits={"daily": 1.0})
    assert exc.value.limit == 1.0

    overrides = {"acme": {"daily": 2.0}}
    budget.overrides = overrides.get
    with pytest.raises(BudgetExceeded) as exc:  # 2.5 held, the tenant lowered to 2 at runtime
        await budget.reserve("acme", "carol", 0.01)
    assert (exc.value.scope, exc.value.limit) == ("tenant", 2.0)
    overrides["acme"] = {"daily": None}  # an explicit "no limit"
    await budget.reserve("acme", "carol", 10)
    del overrides["acme"]  # cleared: the environment's default again
    with pytest.raises(BudgetExceeded):
        await budget.reserve("acme", "carol", 0.01)


async def test_ledger_rolls_up_settles_errors_and_hits(make: Factory):
    clock = Clock(time.time())
    budget = make(Limits(), clock=clock, ledger_days=400)
    await budget.settle(await budget.reserve("acme", "alice", 0.5, model="gpt-4"), 0.012345,
                        input_tokens=100, output_tokens=20, model="gpt-4")
    await budget.settle(await budget.reserve("acme", "alice", 0.5, model="gpt-4"), 0.000001,
                        input_tokens=1, output_tokens=0, model="gpt-4")
    await budget.release(await budget.reserve("acme", "bob", 0.5, model="gpt-4"))
    await budget.record_hit("globex", "carol", "echo")
    day = utc_day(clock.t)
    got = await budget.ledger([day, "1999-01-01"])
    assert got == {
        (day, "acme"): {"alice|gpt-4|requests": 2, "alice|gpt-4|input_tokens": 101,
                        "alice|gpt-4|output_tokens": 20, "alice|gpt-4|cost_micros": 12346,
                        "bob|gpt-4|requests": 1, "bob|gpt-4|errors": 1},
        (day, "globex"): {"carol|echo|requests": 1, "carol|echo|cache_hits": 1},
    }
    assert await budget.ledger([day], "globex") == {(day, "globex"): got[(day, "globex")]}


async def test_ledger_off_records_nothing(make: Factory):
    budget = make(Limits(), clock=Clock(time.time()))
    await budget.settle(await budget.reserve("acme", "alice", 0.5), 0.1, input_tokens=1, output_tokens=1)
    await budget.record_hit("acme", "alice", "echo")
    assert await budget.ledger([utc_day(time.time())]) == {}


async def test_redis_ledger_is_one_hash_per_day_and_tenant_kept_for_the_retention(redis_server):
    import redis as redis_sync

    clock = Clock(time.time())
    budget = RedisBudget(Limits(), redis_server.url, clock=clock, ledger_days=30)
    try:
        for user in ("alice", "bob"):
            await budget.settle(await budget.reserve("acme", user, 0.1, model="echo"), 0.05,
                                input_tokens=5, output_tokens=5, model="echo")
    finally:
        await budget.close()
    day = utc_day(clock.t)
    r = redis_sync.Redis.from_url(redis_server.url)
    try:
        assert sorted(k.decode() for k in r.scan_iter("qlens:usage:*")) == [
            f"qlens:usage:{day}:index", f"qlens:usage:{day}:t:acme"]
        expiry = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() + 86400 + 30 * 86400
        assert r.expiretime(f"qlens:usage:{day}:t:acme") == int(expiry)
        assert r.smembers(f"qlens:usage:{day}:index") == {b"acme"}
    finally:
        r.close()
