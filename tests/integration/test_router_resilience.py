"""Retries, circuit breakers, fallback and the deadline, tested for what they do: a real router
process, real SDKs, and stand-ins told to fail, throttle or stall.

Every test uses its own model and deployment names, so the circuit breakers of one test do not
leak into another (the router process is shared by the module).
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.fakes._common import router_process
from tests.fakes.azure_openai import FakeAzureOpenAI
from tests.fakes.bedrock import FakeBedrock

KEY = "azure-key-for-resilience"
CLAUDE = "anthropic.claude-3-sonnet-20240229-v1:0"
COOLDOWN = 1.0
DEADLINE = 3.0
FAST = {"connect": 1, "read": 1, "total": 1.5}


def azure(target: str) -> dict:
    return {"provider": "azureOpenAI", "target": target}


CONFIG = {
    "name": "resilience-test",
    "providers": {
        "azureOpenAI": {"enabled": True, "timeouts": FAST},
        "awsBedrock": {
            "enabled": True,
            "timeouts": FAST,
            "models": [{"id": "claude-3-sonnet", "modelId": CLAUDE}],
        },
        "echo": {"enabled": False},
    },
    "models": {
        "gpt-4": {"deployments": [azure("gpt-4")], "fallbacks": ["claude-3-sonnet"]},
        "claude-3-sonnet": {"deployments": [{"provider": "awsBedrock", "target": "claude-3-sonnet"}]},
        "retry-500": {"deployments": [azure("retry-500")]},
        "retry-429": {"deployments": [azure("retry-429")]},
        "retry-timeout": {"deployments": [azure("retry-timeout")]},
        "retry-stream": {"deployments": [azure("retry-stream")]},
        "mid-stream": {"deployments": [azure("mid-stream")]},
        "pair": {"strategy": "round-robin", "deployments": [azure("pair-a"), azure("pair-b")]},
        "breaker": {"deployments": [azure("breaker")]},
        "lonely": {"deployments": [azure("lonely")]},
        "throttled": {"deployments": [azure("throttled")]},
        "rejected": {"deployments": [azure("rejected")]},
        "stalled": {"deployments": [azure("stalled")]},
        "abandoned": {"deployments": [azure("abandoned")]},
        "nowhere": {"deployments": [{"provider": "echo", "target": "echo"}]},
    },
    "routing": {
        "deadlineSeconds": DEADLINE,
        "retries": {"maxAttempts": 3, "backoffBaseMs": 10, "backoffMaxMs": 50},
        "circuitBreaker": {"failureThreshold": 3, "cooldownSeconds": COOLDOWN},
    },
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with FakeAzureOpenAI.for_environment(CONFIG, api_key=KEY) as az, \
            FakeBedrock(access_key="AKIDRESILIENCE") as br:
        env = {**az.client_env(), **br.client_env()}
        with router_process(CONFIG, env, tmp_path_factory.mktemp("router")) as router:
            yield router, az, br


@pytest.fixture
def fakes(stack):
    router, az, br = stack
    az.reset()
    br.reset()
    return az, br


@pytest.fixture
def client(stack, fakes):
    router, _, _ = stack
    with openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=30) as c:
        yield c


MESSAGES = [{"role": "user", "content": "are you there?"}]


def metric(router, name: str) -> float:
    text = httpx.get(f"{router.url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def ready_state(router, deployment: str) -> str:
    body = httpx.get(f"{router.url}/health/ready", timeout=10).json()
    return body["checks"]["deployments"]["detail"][deployment]["state"]


@pytest.mark.parametrize("model,status", [("retry-500", 500), ("retry-429", 429)])
def test_retryable_failures_are_retried_until_success(stack, fakes, client, model, status):
    router, az, _ = stack
    retries_before = metric(router, "qlens_retries_total")
    az.behaviour.retry_after_ms = 20  # a 429 says how long to wait: briefly, so the deadline is not the test
    az.fail(status, times=2)
    completion = client.chat.completions.create(model=model, messages=MESSAGES)
    assert completion.choices[0].message.content == f"[{model}] are you there?"
    assert az.calls(model) == 3
    assert [s.status for s in az.seen] == [status, status, 200]
    assert metric(router, "qlens_retries_total") - retries_before == 2


def test_timeout_is_retried(stack, fakes, client):
    _, az, _ = stack
    az.slow(delay=2.0, times=1)  # longer than the 1 s read timeout, once
    completion = client.chat.completions.create(model="retry-timeout", messages=MESSAGES)
    assert completion.choices[0].message.content == "[retry-timeout] are you there?"
    assert az.calls("retry-timeout") == 2


def test_a_retry_prefers_another_deployment(stack, fakes, client):
    _, az, _ = stack
    az.fail(503, times=1)
    raw = client.chat.completions.with_raw_response.create(model="pair", messages=MESSAGES)
    assert raw.headers["x-qlens-provider"] == "azureOpenAI/pair-b"
    assert [(s.target, s.status) for s in az.seen] == [("pair-a", 503), ("pair-b", 200)]


def test_stream_is_retried_before_its_first_byte(stack, fakes, client):
    _, az, _ = stack
    az.fail(503, times=1)
    chunks = list(client.chat.completions.create(model="retry-stream", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "[retry-stream] are you there?"
    assert az.calls("retry-stream") == 2


def test_stream_is_never_retried_after_its_first_byte(stack, fakes, client):
    _, az, _ = stack
    az.break_streams()
    received = []
    with pytest.raises(openai.APIError) as err:
        for chunk in client.chat.completions.create(model="mid-stream", messages=MESSAGES, stream=True):
            received.append(chunk)
    assert received  # the client had chunks before the failure
    assert "mid-stream" in str(err.value.message)
    assert az.calls("mid-stream") == 1  # and the router did not try again


def test_provider_rejection_is_passed_back_without_retry(stack, fakes, client):
    _, az, _ = stack
    az.fail(400, times=1)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="rejected", messages=MESSAGES)
    assert err.value.body["code"] == "provider_rejected_request"
    assert az.calls("rejected") == 1


def test_persistent_throttling_is_429(stack, fakes, client):
    _, az, _ = stack
    az.fail(429)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="throttled", messages=MESSAGES)
    assert err.value.body["code"] == "provider_rate_limited"
    assert az.calls("throttled") == 3


def test_circuit_opens_then_half_opens_after_cooldown_then_closes(stack, fakes, client):
    router, az, _ = stack
    az.fail(500)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="breaker", messages=MESSAGES)
    assert err.value.status_code == 503
    assert az.calls("breaker") == 3  # threshold reached: open
    assert ready_state(router, "azureOpenAI/breaker") == "open"
    assert (
        'qlens_circuit_state{deployment="azureOpenAI/breaker"} 2.0' in httpx.get(f"{router.url}/metrics").text
    )

    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="breaker", messages=MESSAGES)
    assert err.value.status_code == 503 and err.value.body["code"] == "no_healthy_deployment"
    assert az.calls("breaker") == 3  # open: the deployment was not called at all

    az.reset()  # the deployment recovers
    deadline = time.monotonic() + 10 * COOLDOWN
    while ready_state(router, "azureOpenAI/breaker") != "half-open":
        assert time.monotonic() < deadline, "the circuit never half-opened"
        time.sleep(0.1)
    completion = client.chat.completions.create(model="breaker", messages=MESSAGES)  # the probe
    assert completion.choices[0].message.content == "[breaker] are you there?"
    assert ready_state(router, "azureOpenAI/breaker") == "closed"


def test_fallback_to_another_model_when_deployments_fail(stack, fakes, client):
    router, az, br = stack
    fallbacks_before = metric(router, "qlens_fallbacks_total")
    az.fail(503)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == f"[{CLAUDE}] are you there?"
    assert raw.headers["x-qlens-provider"] == "awsBedrock/claude-3-sonnet"
    assert raw.headers["x-qlens-model"] == "claude-3-sonnet"
    assert raw.headers["x-qlens-fallback"] == "gpt-4"
    assert az.calls("gpt-4") == 3 and br.calls(CLAUDE) == 1
    assert metric(router, "qlens_fallbacks_total") - fallbacks_before == 1
    assert (
        '"msg":"served by fallback model","requested":"gpt-4","model":"claude-3-sonnet"'
        in open(router.log).read()
    )


def test_fallback_streams_too(stack, fakes, client):
    _, az, _ = stack
    az.fail(503)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"[{CLAUDE}] are you there?"
    )
    assert chunks[-1].usage.completion_tokens > 0


def test_no_fallback_left_is_503_within_the_deadline(stack, fakes, client):
    _, az, _ = stack
    az.fail(500)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="lonely", messages=MESSAGES)
    assert err.value.status_code == 503
    assert err.value.body["code"] == "no_healthy_deployment"
    assert set(err.value.body) == {"message", "type", "param", "code"}
    assert time.monotonic() - started < DEADLINE + 5  # answered, not hung (generous: a loaded CI box)


def test_model_without_any_enabled_provider_is_503(client):
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="nowhere", messages=MESSAGES)
    assert err.value.status_code == 503 and err.value.body["code"] == "no_healthy_deployment"


def test_deadline_passed_is_504(stack, fakes, client):
    _, az, _ = stack
    az.slow(delay=10)  # every attempt times out; the third is cut short by the 3 s deadline
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="stalled", messages=MESSAGES)
    assert err.value.status_code == 504 and err.value.body["code"] == "deadline_exceeded"
    assert 1 <= az.calls("stalled") <= 3


def test_client_leaving_mid_stream_releases_the_deployment(stack, fakes):
    router, az, _ = stack
    az.slow(chunk_delay=0.3)
    long_prompt = [{"role": "user", "content": " ".join(f"word{i}" for i in range(30))}]
    with httpx.stream(
        "POST",
        f"{router.url}/v1/chat/completions",
        timeout=10,
        json={"model": "abandoned", "messages": long_prompt, "stream": True},
    ) as r:
        lines = r.iter_lines()  # kept: dropping the iterator would close the connection
        first = next(lines)
        assert first.startswith("data: ")
        detail = httpx.get(f"{router.url}/health/ready", timeout=10).json()["checks"]["deployments"]["detail"]
        assert detail["azureOpenAI/abandoned"].get("inFlight") == 1
    # the client hung up after one chunk, ~9 s before the upstream would have finished
    deadline = time.monotonic() + 5
    while True:
        detail = httpx.get(f"{router.url}/health/ready", timeout=10).json()["checks"]["deployments"]["detail"]
        if "inFlight" not in detail["azureOpenAI/abandoned"]:
            break
        assert time.monotonic() < deadline, "the router kept the abandoned stream open"
        time.sleep(0.1)
    assert (
        '"msg":"client went away during the stream","deployment":"azureOpenAI/abandoned"'
        in open(router.log).read()
    )
