"""The router as a real process, with the real openai SDK as its client, serving from the real
Azure OpenAI and Bedrock SDKs (pointed at local stand-ins) and from echo."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from tests.fakes._common import router_process
from tests.fakes.azure_openai import FakeAzureOpenAI
from tests.fakes.bedrock import FakeBedrock

AZURE_KEY = "azure-secret-do-not-log-0123456789"
AWS_SECRET = "aws-secret-do-not-log-9876543210"
CLAUDE = "anthropic.claude-3-sonnet-20240229-v1:0"

CONFIG = {
    "name": "router-test",
    "providers": {
        "azureOpenAI": {
            "enabled": True,
            "apiVersion": "2024-10-21",  # not the default: the stand-in serves only this one
            "deployments": {"gpt-4": "gpt-4-0613"},
            "pool": {"maxConnections": 8, "maxKeepalive": 4},
        },
        "awsBedrock": {
            "enabled": True,
            "region": "us-east-1",
            "models": [{"id": "claude-3-sonnet", "modelId": CLAUDE, "name": "Claude 3 Sonnet"}],
        },
        "echo": {"enabled": True},
    },
    "models": {
        "gpt-4": {"deployments": [{"provider": "azureOpenAI", "target": "gpt-4"}], "fallbacks": ["echo"]},
        "claude-3-sonnet": {"deployments": [{"provider": "awsBedrock", "target": "claude-3-sonnet"}]},
        "echo": {"deployments": [{"provider": "echo", "target": "echo"}]},
    },
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with FakeAzureOpenAI.for_environment(CONFIG, api_key=AZURE_KEY) as azure, \
            FakeBedrock(access_key="AKIDROUTERTEST", secret_key=AWS_SECRET) as bedrock:
        env = {**azure.client_env(), **bedrock.client_env()}
        with router_process(CONFIG, env, tmp_path_factory.mktemp("router")) as router:
            yield router, azure, bedrock


@pytest.fixture
def client(stack):
    router, azure, bedrock = stack
    azure.reset()
    bedrock.reset()
    with openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello router"}]


# (prompt, completion) tokens as each stand-in counts them: 4 characters a token over the text
# ("be brief hello router", 21 characters, and the answer); echo adds 4 a message and 3 a request
USAGE = {"gpt-4": (6, 7), "claude-3-sonnet": (6, 14), "echo": (16, 5)}


@pytest.mark.parametrize(
    "model,provider,text",
    [
        ("gpt-4", "azureOpenAI/gpt-4", "[gpt-4-0613] hello router"),
        ("claude-3-sonnet", "awsBedrock/claude-3-sonnet", f"[{CLAUDE}] hello router"),
        ("echo", "echo/echo", "Echo: hello router"),
    ],
)
def test_completion_from_each_provider(client, model, provider, text):
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == text
    prompt, answer = USAGE[model]
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens,
            completion.usage.total_tokens) == (prompt, answer, prompt + answer)
    assert raw.headers["x-qlens-provider"] == provider
    assert raw.headers["x-qlens-model"] == model
    assert "x-qlens-fallback" not in raw.headers
    # milliseconds with three decimals; a real call takes some time, so never 0.000
    assert re.fullmatch(r"\d+\.\d{3}", raw.headers["x-qlens-upstream-ms"])
    assert float(raw.headers["x-qlens-upstream-ms"]) > 0


@pytest.mark.parametrize(
    "model,text",
    [
        ("gpt-4", "[gpt-4-0613] hello router"),
        ("claude-3-sonnet", f"[{CLAUDE}] hello router"),
        ("echo", "Echo: hello router"),
    ],
)
def test_stream_from_each_provider_with_usage(client, model, text):
    chunks = list(
        client.chat.completions.create(
            model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2  # several chunks
    prompt, answer = USAGE[model]
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (prompt, answer)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


@pytest.mark.parametrize("model", ["gpt-4", "claude-3-sonnet", "echo"])
def test_stream_without_include_usage_has_no_usage_chunk(client, model):
    chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, stream=True))
    assert chunks and all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_raw_stream_ends_with_done(stack):
    router, _, _ = stack
    with httpx.stream(
        "POST",
        f"{router.url}/v1/chat/completions",
        timeout=10,
        json={"model": "claude-3-sonnet", "messages": MESSAGES, "stream": True},
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-qlens-provider"] == "awsBedrock/claude-3-sonnet"
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_models_list(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"gpt-4", "claude-3-sonnet", "echo"}
    assert models["gpt-4"].owned_by == "azureOpenAI"
    assert models["echo"].qlens["deterministic"] is True
    assert models["gpt-4"].qlens["deterministic"] is False
    assert models["claude-3-sonnet"].qlens["deployments"] == ["awsBedrock/claude-3-sonnet"]


def test_unknown_model_is_404_in_openai_format(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-7", messages=MESSAGES)
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"model": "echo"}',
        b'{"model": 3, "messages": []}',
        b'{"model": "echo", "messages": "hi"}',
    ],
)
def test_malformed_bodies_are_400_never_500(stack, body):
    router, _, _ = stack
    r = httpx.post(f"{router.url}/v1/chat/completions", content=body, timeout=10)
    assert r.status_code == 400
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_unknown_route_is_openai_404(stack):
    router, _, _ = stack
    r = httpx.get(f"{router.url}/v2/nothing", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_ready_lists_every_deployment(stack):
    router, _, _ = stack
    r = httpx.get(f"{router.url}/health/ready", timeout=10)
    assert r.status_code == 200
    detail = r.json()["checks"]["deployments"]["detail"]
    assert {k: v["state"] for k, v in detail.items()} == {
        "azureOpenAI/gpt-4": "closed",
        "awsBedrock/claude-3-sonnet": "closed",
        "echo/echo": "closed",
    }
    assert httpx.get(f"{router.url}/health", timeout=10).json()["status"] == "ok"


def test_metrics_and_logs_without_secrets(client, stack):
    router, _, _ = stack
    client.chat.completions.create(model="gpt-4", messages=MESSAGES, extra_headers={"x-request-id": "req-42"})
    text = httpx.get(f"{router.url}/metrics", timeout=10).text
    assert (
        'qlens_provider_requests_total{deployment="azureOpenAI/gpt-4",outcome="success",provider="azureOpenAI"}'
        in text
    )
    assert 'qlens_tokens_total{kind="completion",model="gpt-4"}' in text
    assert 'qlens_circuit_state{deployment="azureOpenAI/gpt-4"} 0.0' in text
    assert 'qlens_requests_total{route="/v1/chat/completions",service="router",status="200"}' in text
    log = open(router.log).read()
    assert '"request_id":"req-42"' in log
    assert AZURE_KEY not in log and AWS_SECRET not in log and "hello router" not in log
