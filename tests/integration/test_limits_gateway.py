"""Rate limits through a real gateway (Redis store): 429s with OpenAI's headers, allowed answers too.

The minute window is the real clock's here: a test that needs a whole window starts right after a
minute boundary (it waits for the boundary when less than 30 s of the minute are left).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.support.stack import RunningStack

pytestmark = pytest.mark.timeout(240)

CHAT = "/v1/chat/completions"


def body(text: str = "hi") -> dict:
    return {"model": "echo", "messages": [{"role": "user", "content": text}], "max_tokens": 20}


def within_one_minute() -> None:
    """Return with at least 30 s of the current UTC minute left (polls the clock, no fixed sleep)."""
    while time.time() % 60 > 30:
        time.sleep(0.2)


async def burst(stack: RunningStack, n: int, key: str | None = None) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60, limits=limits) as client:
        return list(await asyncio.gather(*(client.post(CHAT, json=body(f"q{i}"), headers=stack.headers(key))
                                           for i in range(n))))


def test_rpm_50_under_200_concurrent_requests(make_stack, redis_server):
    stack = make_stack({"costControls": {"store": "redis", "limits": {"perTenant": {"rpm": 50}}},
                        "cache": {"enabled": False}},
                       extra_env={"QLENS_REDIS_URL": redis_server.url})
    within_one_minute()
    replies = asyncio.run(burst(stack, 200))
    ok = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code == 429]
    assert len(ok) == 50 and len(refused) == 150
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok) == list(range(50))
    for r in ok + refused:
        assert r.headers["x-ratelimit-limit-requests"] == "50"
        reset = int(r.headers["x-ratelimit-reset-requests"].removesuffix("s"))
        assert 1 <= reset <= 60
    for r in refused:
        err = r.json()["error"]
        assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
        assert "tenant rate limit of 50 requests per minute (rpm)" in err["message"]
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert 1 <= int(r.headers["retry-after"]) <= 60


def test_tpm_refuses_past_the_tokens_and_names_the_window(make_stack):
    # each request reserves its prompt estimate (~15 tokens) + max_tokens 20; 200 tokens fit a few
    stack = make_stack({"costControls": {"limits": {"perUser": {"tpm": 200}}}, "cache": {"enabled": False}})
    within_one_minute()
    replies = asyncio.run(burst(stack, 40))
    ok = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code == 429]
    assert ok and refused and len(ok) + len(refused) == 40
    used = sum(r.json()["usage"]["total_tokens"] for r in ok)
    assert used <= 200
    for r in refused:
        assert "user rate limit of 200 tokens per minute (tpm)" in r.json()["error"]["message"]
        assert r.headers["x-ratelimit-limit-tokens"] == "200"
        assert int(r.headers["retry-after"]) >= 1
    assert all(r.headers["x-ratelimit-limit-tokens"] == "200" for r in ok)
    assert "x-ratelimit-limit-requests" not in ok[0].headers  # no rpm limit: no request headers


def test_budget_refusal_has_retry_after_to_the_end_of_the_window(make_stack):
    stack = make_stack({"costControls": {"limits": {"perTenant": {"monthly": 0.00001}}}})
    r = httpx.post(stack.gateway_url + CHAT, json=body(), timeout=30)
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["code"] == "budget_exceeded"
    prefix = "Budget exceeded: monthly tenant budget of $0.00 exceeded; it resets at "
    assert err["message"].startswith(prefix)
    assert int(r.headers["retry-after"]) >= 1
