"""Provider faults end to end: client -> gateway -> cache -> router -> Azure OpenAI stand-in (real
`openai` SDK in the router) or the echo provider, all real processes.

- `gpt-4` has two deployments: `azureOpenAI/flaky` fails 30% of its calls (20% HTTP 500, 10% stall
  past the router's 1 s provider timeout) and `echo/steady` never fails. 5,000 requests at 64
  concurrent connections: no client sees a failure, and the flaky circuit opens and closes again.
- `all-down` (both Azure deployments answer 500) falls back to `echo`; `no-fallback` (both stall)
  is a 503 in OpenAI's format within the request deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.reliability.support import (
    CHAT,
    Faults,
    FaultyAzure,
    chat,
    openai_error,
    run_load,
    sample,
    wait_for,
)
from tests.support.stack import running_stack

pytestmark = pytest.mark.timeout(400)

AZURE_KEY = "azure-key-for-reliability"
LOAD_REQUESTS = 5000
CONCURRENCY = 64
ERROR_FRACTION, STALL_FRACTION = 0.20, 0.10
PROVIDER_TIMEOUT = 1.0
DEADLINE = 4.0
COOLDOWN = 1.0
FLAKY, STEADY = "azureOpenAI/flaky", "echo/steady"


def azure(target: str) -> dict:
    return {"provider": "azureOpenAI", "target": target}


ENV = {
    "providers": {
        "azureOpenAI": {
            "enabled": True,
            "timeouts": {"connect": PROVIDER_TIMEOUT, "read": PROVIDER_TIMEOUT, "total": PROVIDER_TIMEOUT},
            "pool": {"maxConnections": 200, "maxKeepalive": 100},
        },
    },
    "models": {
        "gpt-4": {
            "strategy": "round-robin",
            "pricing": {"input": 0.03, "output": 0.06},
            "deployments": [azure("flaky"), {"provider": "echo", "target": "steady"}],
        },
        "all-down": {"deployments": [azure("down-a"), azure("down-b")], "fallbacks": ["echo"]},
        "no-fallback": {"deployments": [azure("stalled-a"), azure("stalled-b")]},
        "race": {"deployments": [azure("race")]},
    },
    "routing": {
        "deadlineSeconds": DEADLINE,
        "retries": {"maxAttempts": 3, "backoffBaseMs": 5, "backoffMaxMs": 20},
        "circuitBreaker": {"failureThreshold": 3, "cooldownSeconds": COOLDOWN},
    },
}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    with FaultyAzure.for_environment(ENV, api_key=AZURE_KEY) as fake:
        env = {"AZURE_OPENAI_ENDPOINT": fake.url, "AZURE_OPENAI_API_KEY": AZURE_KEY}
        with running_stack(tmp_path_factory.mktemp("provider-faults"), ENV, extra_env=env) as stack:
            yield stack, fake


def sse_text(lines) -> str:
    """The content of a chat-completion stream's chunks, joined."""
    out = []
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            for choice in json.loads(line[6:]).get("choices", []):
                out.append(choice.get("delta", {}).get("content") or "")
    return "".join(out)


def router_metrics(stack) -> str:
    return httpx.get(stack.url("router") + "/metrics", timeout=10).text


def state_of_flaky(stack) -> float:
    return sample(router_metrics(stack), "qlens_circuit_state", deployment=FLAKY)


async def test_30_percent_faults_on_one_deployment_never_reach_a_client(faulty, capsys):
    stack, fake = faulty
    flaky = fake.set_faults("flaky", Faults(error_fraction=ERROR_FRACTION, stall_fraction=STALL_FRACTION,
                                            stall_seconds=2 * PROVIDER_TIMEOUT))
    before = router_metrics(stack)
    states: list[tuple[float, float]] = []  # (when, qlens_circuit_state of the flaky deployment)
    done = asyncio.Event()

    async def watch_circuit() -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            while not done.is_set():
                try:
                    text = (await client.get(stack.url("router") + "/metrics")).text
                    states.append((time.monotonic(), sample(text, "qlens_circuit_state", deployment=FLAKY)))
                except httpx.HTTPError:
                    pass
                try:
                    await asyncio.wait_for(done.wait(), 0.1)
                except TimeoutError:
                    pass

    run = uuid.uuid4().hex[:8]  # unique prompts: every request is a cache miss, so reaches the router
    watcher = asyncio.create_task(watch_circuit())
    try:
        report = await run_load(stack.gateway_url + CHAT, lambda i: chat(f"load {run} {i}", "gpt-4"),
                                LOAD_REQUESTS, CONCURRENCY, timeout=30, stop_after=240)
    finally:
        done.set()
        await watcher
    after = router_metrics(stack)
    flaky = dataclasses.replace(flaky)  # the load's figures, before the probes below add to them
    # with the faults still on, the circuit closes again once a half-open probe succeeds
    closed_after = wait_for(lambda: httpx.post(stack.gateway_url + CHAT, json=chat(f"probe {run}", "gpt-4"),
                                               headers={"cache-control": "no-store"}, timeout=30).status_code
                            == 200 and state_of_flaky(stack) == 0, 20, 0.3)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    server_errors = delta("qlens_provider_requests_total", deployment=FLAKY, outcome="server_error")
    timeouts = delta("qlens_provider_requests_total", deployment=FLAKY, outcome="timeout")
    flaky_ok = delta("qlens_provider_requests_total", deployment=FLAKY, outcome="success")
    flaky_failed = delta("qlens_provider_requests_total", deployment=FLAKY) - flaky_ok
    steady_ok = delta("qlens_provider_requests_total", deployment=STEADY, outcome="success")
    retries = delta("qlens_retries_total")
    opened = sum(1 for (_, a), (_, b) in zip(states, states[1:], strict=False) if a != 2 and b == 2)
    closed = sum(1 for (_, a), (_, b) in zip(states, states[1:], strict=False) if a != 0 and b == 0)
    failures = report.failed()
    with capsys.disabled():
        print(f"\n[reliability] provider faults: {len(report.outcomes)} requests at {CONCURRENCY} "
              f"connections in {report.wall_seconds:.1f} s; flaky deployment: {flaky.calls} calls, "
              f"{flaky.injected} faults injected ({flaky.errors} HTTP 500, {flaky.stalls} stalls > "
              f"{PROVIDER_TIMEOUT:g} s); router saw {server_errors:.0f} server errors, {timeouts:.0f} "
              f"timeouts, {flaky_ok:.0f} flaky successes, {steady_ok:.0f} steady successes, "
              f"{retries:.0f} retries; circuit opened {opened}x and closed {closed}x in "
              f"{len(states)} metric polls; failed answers to clients: {len(failures)}")

    # every request was made and answered 200 with a completion: the faults never reached a client
    assert len(report.outcomes) == LOAD_REQUESTS
    assert not failures, [(o.status, o.error, o.body[:200]) for o in failures[:5]]
    # faults were really injected, at about the rate asked for (the circuit keeps some calls away)
    assert flaky.errors > 0 and flaky.stalls > 0
    assert 0.2 < flaky.injected / flaky.calls < 0.4
    # the router saw each of them as a failed call (a 500 as a server error, unless the machine was
    # so slow that it arrived after the 1 s provider timeout; every stall as a timeout)
    assert flaky_failed >= flaky.injected
    assert 0 < server_errors <= flaky.errors and timeouts >= flaky.stalls
    # every failed call was retried once, on the steady deployment, and that answered
    assert retries == flaky_failed
    assert flaky_ok + steady_ok == LOAD_REQUESTS
    # the circuit opened (qlens_circuit_state 2) during the load and closed again (0)
    assert opened >= 1, states
    assert closed_after, "the flaky deployment's circuit did not close again"
    # while the circuit was open the flaky deployment got fewer calls than round-robin's half
    assert flaky.calls < (LOAD_REQUESTS + retries) / 2


def test_every_deployment_down_the_fallback_model_serves(faulty):
    stack, fake = faulty
    fake.set_faults("down-a", Faults(error_fraction=1.0, status=500))
    fake.set_faults("down-b", Faults(error_fraction=1.0, status=503))
    with httpx.Client(base_url=stack.gateway_url, timeout=DEADLINE + 10) as client:
        for i in range(8):  # past the failure threshold: the open circuits go straight to the fallback
            r = client.post(CHAT, json=chat(f"fallback {i}", "all-down"))
            assert r.status_code == 200, r.text
            assert r.headers["x-qlens-fallback"] == "all-down"
            assert r.headers["x-qlens-model"] == "echo"
            assert r.json()["choices"][0]["message"]["content"] == f"Echo: fallback {i}"
        with client.stream("POST", CHAT, json=chat("fallback stream", "all-down", stream=True)) as r:
            assert r.status_code == 200
            assert r.headers["x-qlens-fallback"] == "all-down"
            assert sse_text(r.iter_lines()) == "Echo: fallback stream"
    text = router_metrics(stack)
    assert sample(text, "qlens_fallbacks_total") >= 9
    assert sample(text, "qlens_circuit_state", deployment="azureOpenAI/down-a") == 2


def test_every_deployment_down_without_fallback_is_503_within_the_deadline(faulty):
    stack, fake = faulty
    for target in ("stalled-a", "stalled-b"):
        fake.set_faults(target, Faults(stall_fraction=1.0, stall_seconds=30))
    # the client gives the gateway the deadline and a little slack: past it, this raises (a hang)
    with httpx.Client(base_url=stack.gateway_url, timeout=DEADLINE + 3) as client:
        for i in range(3):
            r = client.post(CHAT, json=chat(f"nowhere {i}", "no-fallback"))
            err = openai_error(r.status_code, r.content, r.headers)
            assert r.status_code == 503, r.text
            assert err["code"] == "no_healthy_deployment"
            assert "no-fallback" in err["message"]
            assert r.headers["x-request-id"]
        r = client.post(CHAT, json=chat("nowhere stream", "no-fallback", stream=True))
        assert r.status_code == 503
        assert openai_error(r.status_code, r.content)["code"] == "no_healthy_deployment"


def test_an_open_circuit_stays_open_when_an_older_call_succeeds(faulty):
    """A call is slow but fine; meanwhile three calls fail and open the circuit. The slow call's
    success must not close it: only a probe after the cooldown may."""
    stack, fake = faulty
    race = fake.set_faults("race", Faults(stall_seconds=0.6, script=["stall", "error", "error", "error"]))
    label = "azureOpenAI/race"
    with httpx.Client(base_url=stack.gateway_url, timeout=DEADLINE + 5) as client, \
            ThreadPoolExecutor(1) as pool:
        slow = pool.submit(client.post, CHAT, json=chat("slow but fine", "race"))
        assert wait_for(lambda: race.calls >= 1, 5)
        failed = client.post(CHAT, json=chat("fails three times", "race"))  # 3 attempts, 3 failures
        assert failed.status_code == 503, failed.text
        assert sample(router_metrics(stack), "qlens_circuit_state", deployment=label) == 2
        assert slow.result().status_code == 200
    # cooldown is COOLDOWN: open (2) or, on a slow machine, half-open (1), but never closed (0)
    assert sample(router_metrics(stack), "qlens_circuit_state", deployment=label) != 0
