"""What the gateway answers when its dependencies fail, with real processes stopped mid-test.

One stack (cache, router, gateway) with Redis-backed budgets under failClosed, taken apart in
stages: cache down (keep serving, bypass, still Ready), budget store down (503, clear message,
unready under failClosed), router down
(503 in OpenAI format, readiness 503 naming the router).
"""

from __future__ import annotations

import httpx
import pytest

pytestmark = [pytest.mark.timeout(180), pytest.mark.redis]

CHAT = "/v1/chat/completions"


def ask(gw: str, text: str) -> httpx.Response:
    return httpx.post(gw + CHAT, json={"model": "echo", "messages": [{"role": "user", "content": text}],
                                       "max_tokens": 20}, timeout=30)


def test_gateway_degrades_clearly_as_dependencies_go_away(make_stack, redis_server):
    stack = make_stack({"costControls": {"store": "redis", "onStoreFailure": "failClosed"}},
                       extra_env={"QLENS_REDIS_URL": redis_server.url})
    gw = stack.gateway_url
    assert ask(gw, "all up").headers["x-qlens-cache"] == "miss"
    assert ask(gw, "all up").headers["x-qlens-cache"] == "hit"

    # 1. cache service down: still served, by the provider, marked bypass
    stack.stop_service("cache")
    r = ask(gw, "all up")
    assert r.status_code == 200 and r.headers["x-qlens-cache"] == "bypass"
    assert r.json()["choices"][0]["message"]["content"] == "Echo: all up"
    ready = httpx.get(gw + "/health/ready")  # still Ready: the cache is optional
    assert ready.status_code == 200 and ready.json()["degraded"] == ["cache"]
    assert ready.json()["checks"]["cache"] == {"ok": False, "error": ready.json()["checks"]["cache"]["error"],
                                               "optional": True, "status": "degraded"}

    # 2. budget store down under failClosed: refused with a clear 503, not served unaccounted,
    # and the gateway is unready (every request would be refused)
    redis_server.stop()
    r = ask(gw, "budget store down")
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "budget_unavailable" and "failClosed" in err["message"]
    ready = httpx.get(gw + "/health/ready")
    assert ready.status_code == 503 and ready.json()["checks"]["budget_store"]["ok"] is False
    assert "optional" not in ready.json()["checks"]["budget_store"]

    # ... and served again once it is back
    redis_server.start()
    assert ask(gw, "budget store back").status_code == 200

    # 3. router down: 503 in OpenAI format; readiness names the router
    stack.stop_service("router")
    r = ask(gw, "router down")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "upstream_unavailable"
    assert r.headers["x-request-id"]
    models = httpx.get(gw + "/v1/models")
    assert models.status_code == 503 and models.json()["error"]["code"] == "upstream_unavailable"
    ready = httpx.get(gw + "/health/ready")
    assert ready.status_code == 503 and ready.json()["checks"]["router"]["ok"] is False
    # the refused request's reservation was released, not kept
    assert httpx.get(gw + "/v1/usage").json()["user"]["reserved"] == 0
    assert "Traceback" not in stack.log("gateway")


def test_failopen_serves_while_the_budget_store_is_down(make_stack, redis_server):
    stack = make_stack({"costControls": {"store": "redis", "onStoreFailure": "failOpen"},
                        "cache": {"enabled": False}},
                       extra_env={"QLENS_REDIS_URL": redis_server.url})
    redis_server.stop()
    r = ask(stack.gateway_url, "fail open")
    assert r.status_code == 200
    assert r.headers["x-qlens-cache"] == "bypass"  # cache disabled in this environment
    ready = httpx.get(stack.gateway_url + "/health/ready")  # failOpen: the store is optional
    assert ready.status_code == 200 and ready.json()["degraded"] == ["budget_store"]
    assert "cache" not in ready.json()["checks"]  # disabled: not checked at all
