"""Budget arithmetic and the in-memory store (no processes; Redis-backed tests are in integration/)."""

from __future__ import annotations

import asyncio
import random

import pytest
from prometheus_client import REGISTRY

from services.common.config import CostControls, DailyLimits, Pricing
from services.gateway.budget import (
    DEFAULT_MAX_COMPLETION_TOKENS,
    BudgetExceeded,
    Limits,
    MemoryBudget,
    RedisBudget,
    actual_cost,
    estimate_prompt_tokens,
    make_budget,
    worst_case_cost,
)

GPT4 = Pricing(input=0.03, output=0.06)


def test_costs_are_per_1k_tokens():
    assert actual_cost(GPT4, 1000, 1000) == pytest.approx(0.09)
    assert actual_cost(GPT4, 0, 0) == 0
    assert worst_case_cost(GPT4, 100, 50) == pytest.approx(actual_cost(GPT4, 100, 50))
    assert worst_case_cost(GPT4, 0, None) == pytest.approx(DEFAULT_MAX_COMPLETION_TOKENS * 0.06 / 1000)


def test_prompt_estimate_bounds_the_utf8_length():
    text = "Grüße, 世界! " * 50
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]
    assert estimate_prompt_tokens(messages) >= len(text.encode()) + len("be brief")
    parts = [{"role": "user", "content": [{"type": "text", "text": text},
                                          {"type": "image_url", "image_url": {"url": "data:..."}}]}]
    assert estimate_prompt_tokens(parts) > estimate_prompt_tokens([{"role": "user", "content": text}])
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    assert estimate_prompt_tokens(messages, tools) > estimate_prompt_tokens(messages)
    assert estimate_prompt_tokens([{"role": "assistant", "content": None,
                                    "tool_calls": [{"id": "1", "function": {"arguments": "{}"}}]}]) > 10


class Clock:
    def __init__(self, t: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self.t = t

    def __call__(self) -> float:
        return self.t


def limits(total=None, tenant=None, user=None) -> Limits:
    return Limits.daily(total, tenant, user)


async def test_reserve_settle_release_and_usage():
    b = MemoryBudget(limits(total=10, tenant=5, user=2), clock=Clock())
    r = await b.reserve("acme", "alice", 1.5)
    u = await b.usage("acme", "alice")
    assert u["date"] == "2026-01-01" and u["resets_at"] == "2026-01-02T00:00:00Z"
    assert u["user"] == {"spent": 0.0, "reserved": 1.5, "limit": 2.0, "remaining": 0.5}
    await b.settle(r, 0.25)
    await b.settle(r, 0.25)  # a second settle is a no-op
    u = await b.usage("acme", "alice")
    assert u["user"] == {"spent": 0.25, "reserved": 0.0, "limit": 2.0, "remaining": 1.75}
    assert u["tenant"]["spent"] == 0.25 and u["tenant"]["limit"] == 5.0
    r = await b.reserve("acme", "alice", 1.75)
    await b.release(r)
    assert (await b.usage("acme", "alice"))["user"]["remaining"] == 1.75


@pytest.mark.parametrize(
    ("lims", "scope", "limit"),
    [((1, None, None), "total", 1.0), ((None, 1, None), "tenant", 1.0), ((None, None, 1), "user", 1.0),
     ((3, 2, 1), "user", 1.0), ((1, 2, 3), "total", 1.0)],
)
async def test_refusal_names_the_scope(lims, scope, limit):
    b = MemoryBudget(limits(*lims), clock=Clock())
    await b.reserve("acme", "alice", 0.6)
    with pytest.raises(BudgetExceeded) as exc:
        await b.reserve("acme", "alice", 0.6)
    assert exc.value.scope == scope and exc.value.limit == limit
    # nothing was reserved by the refused request, in any scope
    assert (await b.usage("acme", "alice"))["tenant"]["reserved"] == 0.6


async def test_refused_reservation_changes_no_scope():
    b = MemoryBudget(limits(total=2, user=1.5), clock=Clock())
    await b.reserve("acme", "alice", 1)
    with pytest.raises(BudgetExceeded):
        await b.reserve("acme", "alice", 0.6)
    await b.reserve("acme", "bob", 1)  # total still had exactly 1 left
    with pytest.raises(BudgetExceeded) as exc:
        await b.reserve("acme", "carol", 0.000001)
    assert exc.value.scope == "total"


async def test_micro_dollar_amounts_do_not_drift():
    b = MemoryBudget(limits(total=1), clock=Clock())
    for _ in range(10):
        await b.settle(await b.reserve("acme", "alice", 0.1), 0.1)
    assert (await b.usage("acme", "alice"))["user"]["spent"] == 1.0
    with pytest.raises(BudgetExceeded):
        await b.reserve("acme", "alice", 0.000001)


async def test_day_rollover_resets_and_late_settle_lands_on_its_day():
    clock = Clock(1_767_225_600.0 - 1)  # 2025-12-31T23:59:59Z
    b = MemoryBudget(limits(tenant=1), clock=clock)
    r = await b.reserve("acme", "alice", 1)
    with pytest.raises(BudgetExceeded):
        await b.reserve("acme", "alice", 0.5)
    clock.t += 2
    await b.reserve("acme", "alice", 1)  # a new day: a fresh budget
    await b.settle(r, 0.7)  # yesterday's reservation settles against yesterday
    u = await b.usage("acme", "alice")
    assert u["date"] == "2026-01-01" and u["tenant"]["spent"] == 0.0 and u["tenant"]["reserved"] == 1.0


async def test_abandoned_reservation_returns_after_its_lease():
    clock = Clock()
    b = MemoryBudget(limits(total=1), clock=clock, lease_seconds=60)
    lost = await b.reserve("acme", "alice", 1)  # its holder "crashes"
    with pytest.raises(BudgetExceeded):
        await b.reserve("acme", "alice", 0.5)
    clock.t += 61
    r = await b.reserve("acme", "alice", 0.5)
    await b.settle(lost, 0.2)  # a very late settle still records spend, releases nothing twice
    u = await b.usage("acme", "alice")
    assert u["user"]["spent"] == 0.2 and u["user"]["reserved"] == 0.5
    await b.release(r)
    assert (await b.usage("acme", "alice"))["user"]["reserved"] == 0.0


@pytest.mark.parametrize("bad", [("acme", "", 1), ("ac:me", "alice", 1), ("acme", "alice", -1),
                                 ("acme", "alice", float("nan")), ("acme", "a/b", 1)])
async def test_bad_input_is_refused_and_changes_nothing(bad):
    b = MemoryBudget(limits(total=1), clock=Clock())
    with pytest.raises(ValueError):
        await b.reserve(*bad)
    assert (await b.usage("acme", "alice"))["tenant"]["reserved"] == 0.0


async def test_200_concurrent_requests_never_overshoot():
    b = MemoryBudget(limits(total=2, tenant=1.5, user=0.6), clock=Clock())
    rng = random.Random(4)
    refusals: list[BudgetExceeded] = []

    async def one(i: int) -> None:
        tenant, user = f"t{i % 2}", f"u{i % 3}"
        await asyncio.sleep(rng.random() / 100)  # arrivals spread out, interleaved with settles
        try:
            r = await b.reserve(tenant, user, 0.05)
        except BudgetExceeded as exc:
            refusals.append(exc)
            return
        await asyncio.sleep(rng.random() / 1000)
        if i % 5 == 0:
            await b.release(r)
        else:
            await b.settle(r, rng.choice([0.05, 0.04]))

    await asyncio.gather(*(one(i) for i in range(200)))
    spent = {}
    for t in ("t0", "t1"):
        for u in ("u0", "u1", "u2"):
            usage = await b.usage(t, u)
            assert usage["user"]["spent"] <= 0.6 and usage["user"]["reserved"] == 0
            spent[t] = usage["tenant"]["spent"]
            assert usage["tenant"]["spent"] <= 1.5
    assert sum(spent.values()) <= 2.0
    configured = {"total": 2.0, "tenant": 1.5, "user": 0.6}
    assert refusals and all(configured[e.scope] == e.limit for e in refusals)
    # the limits were really reached: even if every request arrived before any settled, the 40 that
    # fit in the total would settle >= 1.2
    assert sum(spent.values()) > 1.0


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_cost_and_remaining():
    b = MemoryBudget(limits(total=10, tenant=4), clock=Clock())
    before = _sample("qlens_cost_usd_total", {"scope": "total"})
    await b.settle(await b.reserve("acme", "alice", 1), 0.5)
    await b.settle(await b.reserve("globex", "bob", 3), 3)
    assert _sample("qlens_cost_usd_total", {"scope": "total"}) - before == pytest.approx(3.5)
    assert _sample("qlens_budget_remaining_usd", {"scope": "total"}) == pytest.approx(6.5)
    # the tenant closest to its limit
    assert _sample("qlens_budget_remaining_usd", {"scope": "tenant"}) == pytest.approx(1.0)


async def test_remaining_gauge_is_the_minimum_over_many_tenants_when_scraped():
    """The per-scope minimum is taken at scrape time over every tenant seen today (2,000 here)."""
    b = MemoryBudget(limits(total=100_000, tenant=5), clock=Clock())
    for i in range(2000):
        await b.settle(await b.reserve(f"t{i}", "u", 0.001), 0.001)
    assert _sample("qlens_budget_remaining_usd", {"scope": "tenant"}) == pytest.approx(4.999)
    await b.settle(await b.reserve("t1234", "u", 2), 2)
    assert _sample("qlens_budget_remaining_usd", {"scope": "tenant"}) == pytest.approx(2.999)
    assert _sample("qlens_budget_limit_usd", {"scope": "tenant"}) == pytest.approx(5)


async def test_make_budget_follows_the_environment():
    off = make_budget(CostControls(enabled=False, daily_limits=DailyLimits(total=0)), None)
    await off.reserve("acme", "alice", 100)  # disabled: counted, never refused
    mem = make_budget(CostControls(daily_limits=DailyLimits(total=1)), None)
    assert isinstance(mem, MemoryBudget)
    with pytest.raises(BudgetExceeded):
        await mem.reserve("acme", "alice", 2)
    with pytest.raises(ValueError, match="QLENS_REDIS_URL"):
        make_budget(CostControls(store="redis"), None)
    red = make_budget(CostControls(store="redis"), "redis://127.0.0.1:1/0")
    assert isinstance(red, RedisBudget)
    await red.close()


def test_windows_are_the_same_built_once_per_minute_or_on_every_call() -> None:
    """Windows.at is cached per UTC minute: across minute, day, month and year ends it must give
    what building every window from the moment itself gives."""
    from datetime import UTC, datetime, timedelta

    from services.gateway.budget import Windows

    def built(now: float) -> tuple:
        t = datetime.fromtimestamp(now, UTC)
        day0 = t.replace(hour=0, minute=0, second=0, microsecond=0)
        month0 = day0.replace(day=1)
        next_month = (month0 + timedelta(days=32)).replace(day=1)
        minute0 = t.replace(second=0, microsecond=0)
        return (t.strftime("%Y-%m-%d"), int((day0 + timedelta(days=1)).timestamp()), t.strftime("%Y-%m"),
                int(next_month.timestamp()), minute0.strftime("%Y%m%d%H%M"), int(minute0.timestamp()) + 60)

    year_end = datetime(2026, 12, 31, 23, 59, tzinfo=UTC).timestamp()
    for now in (year_end, year_end + 59.999, year_end + 60, year_end + 60.001, year_end - 86400 * 30 + 7.5,
                datetime(2028, 2, 29, 23, 59, 59, tzinfo=UTC).timestamp(), 0.0, 1.5):
        w = Windows.at(now)
        assert (w.day, w.day_end, w.month, w.month_end, w.minute, w.minute_end) == built(now), now
