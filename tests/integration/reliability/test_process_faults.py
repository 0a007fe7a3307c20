"""A service process dies (SIGKILL) or is told to stop (SIGTERM) while the gateway serves.

- Router killed: the gateway's readiness goes 503 naming the router, a request that needs the
  router gets 503 `upstream_unavailable` in OpenAI's format (a cached answer is still served);
  started again on the same port, everything answers again, stale pooled connections included.
- Cache killed: still Ready (readiness 200, the cache `degraded`, qlens_dependency_up 0), requests
  served without it (`x-qlens-cache:
  bypass`, the contract in docs/internals.md); started again, answers are cached and hit again.
- Gateway SIGTERM during load: the requests in flight finish with 200, new connections are
  refused, and the process exits by itself within its grace period.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

import httpx
import pytest

from qlensctl.local import pid_running
from tests.integration.reliability.support import (
    CHAT,
    chat,
    error_of,
    is_completion,
    openai_error,
    restart_service,
    sample,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)

ECHO_DELAY_MS = 3000


def kill(stack, name: str) -> None:
    pid = stack.stack.services[name].pid
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not pid_running(pid), 10), f"{name} (pid {pid}) survived SIGKILL"


def readiness(client: httpx.Client) -> tuple[int, dict]:
    r = client.get("/health/ready")
    return r.status_code, r.json()


def wait_ready_again(client: httpx.Client) -> dict:
    seen: list[tuple[int, dict]] = []
    assert wait_for(lambda: seen.append(readiness(client)) or seen[-1][0] == 200, 15, 0.1), seen[-1]
    return seen[-1][1]


def test_router_killed_then_restarted(make_stack):
    stack = make_stack()
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as gw:
        for i in range(4):  # fills the gateway's keep-alive pool to the router
            assert gw.post(CHAT, json=chat(f"router alive {i}")).status_code == 200
        cached = chat("router alive 0")

        kill(stack, "router")
        status, body = readiness(gw)
        assert status == 503 and body["status"] == "not ready"
        assert body["checks"]["router"]["ok"] is False and body["checks"]["router"]["error"]
        assert body["checks"]["cache"]["ok"] is True
        r = gw.post(CHAT, json=chat("router dead"))
        err = openai_error(r.status_code, r.content, r.headers)
        assert r.status_code == 503 and err["code"] == "upstream_unavailable", r.text
        assert "router" in err["message"] and r.headers["x-request-id"]
        r = gw.post(CHAT, json=chat("router dead", stream=True))
        assert r.status_code == 503 and error_of(r)["code"] == "upstream_unavailable"
        models = gw.get("/v1/models")
        assert models.status_code == 503 and error_of(models)["code"] == "upstream_unavailable"
        # an answer already in the cache does not need the router
        hit = gw.post(CHAT, json=cached)
        assert hit.status_code == 200 and hit.headers["x-qlens-cache"] == "hit"

        restart_service(stack, "router")
        assert wait_ready_again(gw)["checks"]["router"]["ok"] is True
        r = gw.post(CHAT, json=chat("router back"))
        assert r.status_code == 200 and is_completion(r.content)

        # killed and restarted with no request in between: the pool's dead connections are not used
        for i in range(4):
            assert gw.post(CHAT, json=chat(f"router back {i}")).status_code == 200
        kill(stack, "router")
        restart_service(stack, "router")
        for i in range(4):
            r = gw.post(CHAT, json=chat(f"router back again {i}"))
            assert r.status_code == 200, r.text
    assert "Traceback" not in stack.log("gateway")


def test_cache_killed_then_restarted(make_stack):
    stack = make_stack()
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as gw:
        prompt = chat("cache alive")
        assert gw.post(CHAT, json=prompt).headers["x-qlens-cache"] == "miss"
        assert wait_for(lambda: gw.post(CHAT, json=prompt).headers["x-qlens-cache"] == "hit", 5)

        kill(stack, "cache")
        status, body = readiness(gw)  # the cache is optional: Ready, reported as degraded
        assert status == 200 and body["status"] == "ready" and body["degraded"] == ["cache"]
        assert body["checks"]["cache"]["ok"] is False and body["checks"]["cache"]["status"] == "degraded"
        assert body["checks"]["router"]["ok"] is True
        metrics = gw.get("/metrics").text
        assert sample(metrics, "qlens_dependency_up", service="gateway", dependency="cache") == 0
        assert sample(metrics, "qlens_dependency_up", service="gateway", dependency="router") == 1
        for _ in range(3):  # the cache is best effort: served by the provider, marked bypass
            r = gw.post(CHAT, json=prompt)
            assert r.status_code == 200 and r.headers["x-qlens-cache"] == "bypass"
            assert r.json()["choices"][0]["message"]["content"] == "Echo: cache alive"

        restart_service(stack, "cache")
        assert wait_ready_again(gw)["checks"]["cache"]["ok"] is True
        # a new, empty cache (memory backend): a miss, stored, then hits again
        assert gw.post(CHAT, json=prompt).headers["x-qlens-cache"] == "miss"
        assert wait_for(lambda: gw.post(CHAT, json=prompt).headers["x-qlens-cache"] == "hit", 5)
    assert "Traceback" not in stack.log("gateway")


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


async def test_sigterm_lets_in_flight_requests_finish_and_refuses_new_ones(make_stack):
    stack = make_stack({"providers": {"echo": {"enabled": True, "delayMs": ECHO_DELAY_MS}}})
    gateway = stack.stack.services["gateway"]
    in_flight = 12

    def router_in_flight() -> int:
        ready = httpx.get(stack.url("router") + "/health/ready", timeout=5).json()
        return ready["checks"]["deployments"]["detail"]["echo/echo"].get("inFlight", 0)

    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=ECHO_DELAY_MS / 1000 + 20,
                                 limits=httpx.Limits(max_connections=in_flight)) as client:

        async def one(i: int) -> tuple[int, bytes]:
            body = chat(f"draining {i}", stream=i % 3 == 0)  # a third are streams
            r = await client.post(CHAT, json=body)
            return r.status_code, r.content

        tasks = [asyncio.create_task(one(i)) for i in range(in_flight)]
        # every request has reached the provider (the echo provider is waiting ECHO_DELAY_MS)
        assert await asyncio.to_thread(wait_for, lambda: router_in_flight() == in_flight, 10, 0.05)
        os.kill(gateway.pid, signal.SIGTERM)
        refused_at = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if await asyncio.to_thread(refused, gateway.port):
                refused_at = time.monotonic()
                break
            await asyncio.sleep(0.05)
        pending = sum(not t.done() for t in tasks)
        results = await asyncio.gather(*tasks)

    assert refused_at is not None, "the gateway still accepted connections 5 s after SIGTERM"
    assert pending > 0, "the requests finished before the listener closed: nothing was in flight"
    for i, (status, content) in enumerate(results):
        assert status == 200, content[:300]
        if i % 3 == 0:
            assert content.rstrip().endswith(b"data: [DONE]")
        else:
            assert is_completion(content)
    assert wait_for(lambda: not pid_running(gateway.pid), 30), "the gateway did not exit after draining"
    log = stack.log("gateway")
    assert "Traceback" not in log
    assert log.count('"status":200') >= in_flight  # each drained request was logged as served


def test_the_router_starts_with_an_empty_aws_profile(make_stack, tmp_path):
    """`AWS_PROFILE=` (empty, as `export AWS_PROFILE=` or an env file leaves it; the stack harness
    sets it so) with Bedrock credentials in the environment: the router must start and serve."""
    env = {"AWS_ACCESS_KEY_ID": "AKIDEMPTYPROFILE", "AWS_SECRET_ACCESS_KEY": "dummy",
           "AWS_REGION": "us-east-1", "AWS_PROFILE": "", "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    stack = make_stack({"providers": {"awsBedrock": {"enabled": True}}}, extra_env=env)
    assert httpx.get(stack.url("router") + "/health/ready", timeout=10).status_code == 200
