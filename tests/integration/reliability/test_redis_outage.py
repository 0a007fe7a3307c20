"""Redis stopped in the middle of a load and started again, in a production-like environment: the
cache service on Redis, budgets counted in Redis, API keys required.

While Redis is down the cache is bypassed (`x-qlens-cache: bypass`) and the budget policy decides:
`failClosed` refuses with 503 `budget_unavailable`, `failOpen` serves. Once Redis is back the cache
fills and hits again and every request is served. No request outlives the request deadline: the
load client's timeout is that deadline, and a client timeout is a failure.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest

from tests.integration.reliability.support import CHAT, Outcome, chat, openai_error, run_load

pytestmark = [pytest.mark.timeout(240), pytest.mark.redis]

DEADLINE = 10.0
PROMPTS = 24  # cycled: each prompt misses once, then hits while its entry lives
CONCURRENCY = 8
MAX_REQUESTS = 20_000  # bounds the load; the phases below stop it much earlier
ENOUGH = 150  # answered requests per phase, at least
PHASE_SECONDS = {"before": 1.0, "down": 3.0, "back": 2.0}  # and at least this long each


def production_like(policy: str) -> dict:
    return {
        "name": "production-like",
        "routing": {"deadlineSeconds": DEADLINE},
        "cache": {"enabled": True, "backend": "redis"},
        "costControls": {"store": "redis", "onStoreFailure": policy,
                         "dailyLimits": {"total": 1000, "perTenant": 200, "perUser": 50}},
        "auth": {"required": True},
    }


@pytest.mark.parametrize("policy", ["failClosed", "failOpen"])
async def test_redis_stopped_mid_load_then_restarted(make_stack, redis_server, policy, capsys):
    stack = make_stack(production_like(policy), extra_env={"QLENS_REDIS_URL": redis_server.url},
                       keys={"app": ("acme", "app")})
    gw = stack.gateway_url
    marks: dict[str, float] = {}
    answered: list[Outcome] = []  # filled as answers arrive (run_load's report comes at the end)

    def after(mark: str) -> list[Outcome]:
        return [o for o in answered if o.started > marks[mark]]

    def elapsed(mark: str) -> float:
        return time.monotonic() - marks[mark]

    def hits(outcomes: list[Outcome]) -> int:
        return sum(o.headers.get("x-qlens-cache") == "hit" for o in outcomes)

    async def until(predicate, limit: float) -> None:
        deadline = time.monotonic() + limit
        while not predicate() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def body(i: int) -> dict:
        return chat(f"redis outage prompt {i % PROMPTS}")

    async def phases() -> None:
        marks["start"] = time.monotonic()
        await until(lambda: len(answered) >= ENOUGH and elapsed("start") >= PHASE_SECONDS["before"], 60)
        marks["stopping"] = time.monotonic()
        await asyncio.to_thread(redis_server.stop)
        marks["stopped"] = time.monotonic()
        await until(lambda: len(after("stopped")) >= ENOUGH and elapsed("stopped") >= PHASE_SECONDS["down"],
                    60)
        marks["starting"] = time.monotonic()
        await asyncio.to_thread(redis_server.start)
        marks["started"] = time.monotonic()
        await until(lambda: hits(after("started")) >= ENOUGH and elapsed("started") >= PHASE_SECONDS["back"],
                    60)
        marks["end"] = time.monotonic()

    driver = asyncio.create_task(phases())
    load = asyncio.create_task(run_load(
        gw + CHAT, body, MAX_REQUESTS, CONCURRENCY, headers=stack.headers("app"), timeout=DEADLINE,
        stop_after=180, on_answer=answered.append, stop_when=driver.done))
    await driver
    report = await load
    outcomes = report.outcomes

    before = [o for o in outcomes if o.ended < marks["stopping"]]
    during = [o for o in outcomes if marks["stopped"] < o.started and o.ended < marks["starting"]]
    back = [o for o in outcomes if o.started > marks["started"]]
    cache = Counter(o.headers.get("x-qlens-cache", "-") for o in outcomes)
    down = marks["starting"] - marks["stopping"]
    with capsys.disabled():
        print(f"\n[reliability] redis outage ({policy}): {len(outcomes)} requests at {CONCURRENCY} "
              f"connections in {report.wall_seconds:.1f} s, Redis down {down:.1f} s; "
              f"statuses {dict(report.statuses())}; cache {dict(cache)}; client timeouts "
              f"{sum(o.status == 0 for o in outcomes)}")

    # nothing hung: every request got an answer within the deadline (the client's timeout)
    assert all(o.status != 0 for o in outcomes), [o.error for o in outcomes if o.status == 0][:5]
    # before: served, from the cache once each prompt had been answered
    assert before and all(o.status == 200 for o in before)
    assert any(o.headers.get("x-qlens-cache") == "hit" for o in before)
    # during: never a cache hit; the policy decides between a clear refusal and serving
    assert during and all(o.headers.get("x-qlens-cache") == "bypass" for o in during)
    if policy == "failClosed":
        for o in during:
            err = openai_error(o.status, o.body, o.headers)
            assert o.status == 503 and err["code"] == "budget_unavailable", err
            assert "failClosed" in err["message"]
    else:
        assert all(o.status == 200 for o in during), report.statuses()
    # after: the cache answers again, and every request is served once Redis has been back a moment
    assert hits(back) >= ENOUGH
    assert all(o.status == 200 for o in back), [(o.status, o.body[:200]) for o in back if o.status != 200][:5]
    # the budget store is reachable again, the spend was recorded in Redis
    usage = httpx.get(gw + "/v1/usage", headers=stack.headers("app"), timeout=10).json()
    assert usage["tenant_id"] == "acme" and usage["tenant"]["spent"] > 0
    assert "Traceback" not in stack.log("gateway") and "Traceback" not in stack.log("cache")
