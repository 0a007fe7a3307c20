"""Failure handling that understands providers, through a real router process and the stand-ins:
streams that end without their terminator or go quiet end with an error (never [DONE]), the
commit point is the first chunk with content, Retry-After cools a deployment down for as long as
the provider asked, and the context-window / content-policy fallbacks.
"""

from __future__ import annotations

import time

import httpx
import openai
import orjson
import pytest

from tests.fakes._common import router_process
from tests.fakes.azure_openai import FakeAzureOpenAI
from tests.fakes.bedrock import FakeBedrock

pytestmark = pytest.mark.timeout(120)

KEY = "azure-key-for-honesty"
CLAUDE = "anthropic.claude-3-sonnet-20240229-v1:0"
IDLE = 0.5


def azure(target: str) -> dict:
    return {"provider": "azureOpenAI", "target": target}


BEDROCK = {"provider": "awsBedrock", "target": "claude-3-sonnet"}
CONFIG = {
    "name": "honesty-test",
    "providers": {
        "azureOpenAI": {"enabled": True},
        "awsBedrock": {"enabled": True, "models": [{"id": "claude-3-sonnet", "modelId": CLAUDE}]},
        "echo": {"enabled": False},
    },
    "models": {
        "claude-3-sonnet": {"deployments": [BEDROCK]},
        "az-cut": {"deployments": [azure("az-cut")]},
        "br-cut": {"deployments": [BEDROCK]},
        "az-idle": {"deployments": [azure("az-idle")]},
        "br-early": {"deployments": [BEDROCK], "fallbacks": ["az-fallback"]},
        "az-fallback": {"deployments": [azure("az-fallback")]},
        "cool": {"deployments": [azure("cool")]},
        "cool-late": {"deployments": [azure("cool-late")]},
        "cool-pair": {"deployments": [azure("cool-a"), azure("cool-b")]},
        "big": {"deployments": [azure("big")], "contextWindowFallbacks": ["claude-3-sonnet"],
                "contentPolicyFallbacks": ["claude-3-sonnet"]},
        "plain": {"deployments": [azure("plain")], "fallbacks": ["claude-3-sonnet"]},
    },
    "routing": {
        "deadlineSeconds": 10,
        "streamIdleSeconds": IDLE,
        "retries": {"maxAttempts": 3, "backoffBaseMs": 10, "backoffMaxMs": 50},
        "circuitBreaker": {"failureThreshold": 50, "cooldownSeconds": 1},
    },
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with FakeAzureOpenAI.for_environment(CONFIG, api_key=KEY) as az, \
            FakeBedrock(access_key="AKIDHONEST") as br:
        env = {**az.client_env(), **br.client_env()}
        with router_process(CONFIG, env, tmp_path_factory.mktemp("router")) as router:
            yield router, az, br


@pytest.fixture
def fakes(stack):
    router, az, br = stack
    az.reset()
    br.reset()
    return router, az, br


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def text_of(body: bytes) -> str:
    chunks = [orjson.loads(e[6:]) for e in body.split(b"\n\n") if e.startswith(b"data: {")]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


def raw_stream(router, model: str, text: str) -> tuple[httpx.Response, bytes]:
    body = {"model": model, "messages": ask(text), "stream": True}
    with httpx.stream("POST", router.url + "/v1/chat/completions", json=body, timeout=30) as r:
        return r, r.read()


@pytest.mark.parametrize(("model", "which"), [("az-cut", "az"), ("br-cut", "br")])
def test_a_stream_without_its_terminator_ends_with_an_error_and_no_done(fakes, model: str, which: str):
    router, az, br = fakes
    fake = az if which == "az" else br
    fake.behaviour.drop_terminator = True
    r, body = raw_stream(router, model, "cut off at the end")
    assert r.status_code == 200  # the content had started: only an error event can say it now
    assert b"cut " in body  # what arrived was relayed
    assert b"data: [DONE]" not in body
    assert b'"code":"provider_error"' in body and b"without" in body
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model=model, messages=ask("sdk sees it"), stream=True))


def test_an_idle_stream_is_ended_after_stream_idle_seconds(fakes):
    router, az, _ = fakes
    az.behaviour.stall = IDLE * 6
    r, body = raw_stream(router, "az-idle", "goes quiet now")
    assert b'"code":"stream_idle_timeout"' in body and b"streamIdleSeconds" in body
    assert b"data: [DONE]" not in body
    az.behaviour.stall = 0.0
    r, body = raw_stream(router, "az-idle", "talks steadily")
    assert body.endswith(b"data: [DONE]\n\n")


def test_a_failure_before_any_content_falls_back_instead_of_failing_the_stream(fakes):
    router, az, br = fakes
    br.behaviour.fail_before_content = True  # Bedrock sent messageStart (role only), then broke
    with httpx.stream("POST", router.url + "/v1/chat/completions", timeout=30,
                      json={"model": "br-early", "messages": ask("early failure"), "stream": True}) as r:
        body = r.read()
        assert r.headers["x-qlens-fallback"] == "br-early"
        assert r.headers["x-qlens-model"] == "az-fallback"
    assert text_of(body) == "[az-fallback] early failure"
    assert body.endswith(b"data: [DONE]\n\n") and b'"error"' not in body


def test_retry_after_is_waited_out_instead_of_the_backoff(fakes):
    router, az, _ = fakes
    az.behaviour.retry_after_ms = 1200
    az.fail(429, times=1)
    r = httpx.post(router.url + "/v1/chat/completions", json={"model": "cool", "messages": ask("throttled")})
    assert r.status_code == 200
    first, second = az.seen
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 1.2  # the provider's wait, not the 10-50 ms backoff


def test_a_wait_past_the_deadline_tells_the_client_the_real_retry_after(fakes):
    router, az, _ = fakes
    az.behaviour.retry_after_ms = 30_000  # longer than the 10 s deadline
    az.fail(429, times=1)
    r = httpx.post(router.url + "/v1/chat/completions", json={"model": "cool-late", "messages": ask("later")})
    assert r.status_code == 429
    assert r.headers["retry-after"] in ("30", "29")  # what is left of the provider's 30 s, not a fixed 1
    assert r.json()["error"]["code"] == "provider_rate_limited"
    assert az.calls("cool-late") == 1  # not called again during its cooldown


def test_retry_after_moves_the_retry_to_another_deployment(fakes):
    router, az, _ = fakes
    az.behaviour.retry_after_ms = 5000
    az.fail(429, times=1)
    r = httpx.post(router.url + "/v1/chat/completions", json={"model": "cool-pair", "messages": ask("pair")})
    assert r.status_code == 200
    first, second = (s.target for s in az.seen)
    assert {first, second} == {"cool-a", "cool-b"}  # the throttled one was not asked again


@pytest.mark.parametrize(("code", "reason"), [("context_length_exceeded", "context_window"),
                                              ("content_filter", "content_policy")])
def test_special_fallbacks_are_taken_and_said(fakes, code: str, reason: str):
    router, az, _ = fakes
    az.behaviour.fail_code = code
    az.fail(400, times=1)
    r = httpx.post(router.url + "/v1/chat/completions", json={"model": "big", "messages": ask("long prompt")})
    assert r.status_code == 200
    assert r.headers["x-qlens-fallback"] == "big" and r.headers["x-qlens-fallback-reason"] == reason
    assert r.headers["x-qlens-model"] == "claude-3-sonnet"


def test_without_special_fallbacks_the_refusal_goes_back_to_the_client(fakes):
    router, az, br = fakes
    az.behaviour.fail_code = "context_length_exceeded"
    az.fail(400, times=1)
    r = httpx.post(router.url + "/v1/chat/completions", json={"model": "plain", "messages": ask("too long")})
    assert r.status_code == 400  # `fallbacks` are for failures, not for a refused request
    assert "x-qlens-fallback" not in r.headers
    assert br.calls() == 0


# --- the gateway: an abandoned stream is charged for what was relayed ------------------------------

PRICE = 1.0  # USD per 1K tokens, in and out: the arithmetic stays readable
GATEWAY_ENV = {
    "providers": {"azureOpenAI": {"enabled": True}},
    "models": {"slow": {"pricing": {"input": PRICE, "output": PRICE}, "deployments": [azure("slow")]}},
}


def test_an_abandoned_stream_is_settled_from_the_tokens_relayed(tmp_path):
    from tests.support.stack import running_stack

    with FakeAzureOpenAI.for_environment(GATEWAY_ENV, api_key=KEY) as az:
        az.slow(chunk_delay=0.3)
        with running_stack(tmp_path, GATEWAY_ENV, extra_env=az.client_env()) as stack:
            body = {"model": "slow", "messages": ask("one two three four five six seven eight nine ten"),
                    "stream": True, "user": "leaver"}
            with httpx.stream("POST", stack.base_url + "/chat/completions", json=body, timeout=30) as r:
                seen = []
                for line in r.iter_lines():  # the role chunk and the first words, then leave
                    seen.append(line)
                    if '"content":"one' in line:
                        break
            assert any('"content":"one' in line for line in seen) and len(seen) < 10
            deadline = time.monotonic() + 10
            while True:  # settled in the background once the gateway sees the client gone
                user = httpx.get(stack.gateway_url + "/v1/usage", params={"user": "leaver"}).json()["user"]
                if user["reserved"] == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert user["reserved"] == 0
            worst = (4096 + 100) * PRICE / 1000  # what keeping the reservation would have charged
            assert 0 < user["spent"] < 0.2 * worst  # the prompt's bound and a few relayed words
