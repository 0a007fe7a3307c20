"""Azure OpenAI: the real openai SDK (AsyncAzureOpenAI) against the local stand-in."""

from __future__ import annotations

import orjson
import pytest

from qlensctl.local import free_port
from services.common.config import Timeouts
from services.router.providers.azure_openai import AzureConfig, AzureOpenAIProvider
from services.router.providers.base import ProviderError, Usage
from services.router.retry import FailureKind
from tests.fakes.azure_openai import FakeAzureOpenAI

KEY = "test-key-123"
CONFIG = AzureConfig(enabled=True, timeouts=Timeouts(connect=1, read=0.5, total=5))


@pytest.fixture
def fake():
    with FakeAzureOpenAI(api_key=KEY, deployments=("gpt-4", "gpt-35-turbo")) as server:
        yield server


@pytest.fixture
async def provider(fake):
    p = AzureOpenAIProvider(CONFIG, fake.url, KEY)
    yield p
    await p.aclose()


def request(**extra):
    return {"model": "gpt-4", "messages": [{"role": "user", "content": "hello azure"}], **extra}


async def test_completion_bytes_are_forwarded_with_usage(fake, provider):
    c = await provider.complete("gpt-35-turbo", request(temperature=0.1))
    body = orjson.loads(c.body)
    assert body["choices"][0]["message"]["content"] == "[gpt-35-turbo] hello azure"  # deployment from the URL
    assert c.usage == Usage(body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"])
    assert c.usage.completion_tokens > 0
    assert fake.calls("gpt-35-turbo") == 1 and fake.auth_kinds == {"api-key"}


async def collect(provider, body):
    return [i async for i in provider.stream("gpt-4", body)]


async def test_stream_with_usage_for_the_client(provider):
    items = await collect(provider, request(stream=True, stream_options={"include_usage": True}))
    usage, chunks = items[-1], [orjson.loads(i[6:]) for i in items[:-1]]
    assert isinstance(usage, Usage) and usage.completion_tokens > 0
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        == "[gpt-4] hello azure"
    )
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == usage.completion_tokens
    assert not any(i == b"data: [DONE]\n\n" for i in items)  # the router adds it


async def test_stream_usage_is_learned_but_not_sent_unless_asked(provider):
    items = await collect(provider, request(stream=True))
    usage, chunks = items[-1], [orjson.loads(i[6:]) for i in items[:-1]]
    assert usage.completion_tokens > 0
    assert all(c["choices"] for c in chunks)  # no usage-only chunk


@pytest.mark.parametrize(
    "status,kind",
    [
        (429, FailureKind.RATE_LIMITED),
        (500, FailureKind.SERVER),
        (503, FailureKind.SERVER),
        (400, FailureKind.CLIENT),
    ],
)
async def test_errors_map_to_retry_kinds_without_sdk_retries(fake, provider, status, kind):
    fake.fail(status, times=1)
    with pytest.raises(ProviderError) as err:
        await provider.complete("gpt-4", request())
    assert err.value.kind is kind and err.value.status == status
    assert f"fake failure {status}" in err.value.message
    assert fake.calls() == 1  # max_retries=0: the SDK did not retry on its own


async def test_unknown_deployment_and_bad_key_are_deployment_errors(fake, provider):
    with pytest.raises(ProviderError) as err:
        await provider.complete("gpt-5", request())
    assert err.value.kind is FailureKind.DEPLOYMENT and err.value.status == 404
    wrong = AzureOpenAIProvider(CONFIG, fake.url, "wrong-key")
    try:
        with pytest.raises(ProviderError) as err:
            await wrong.complete("gpt-4", request())
        assert err.value.kind is FailureKind.DEPLOYMENT and err.value.status == 401
        assert "wrong-key" not in err.value.message
    finally:
        await wrong.aclose()


async def test_stream_open_failure_is_raised_before_any_chunk(fake, provider):
    fake.fail(503, times=1)
    with pytest.raises(ProviderError) as err:
        await anext(provider.stream("gpt-4", request(stream=True)))
    assert err.value.kind is FailureKind.SERVER


async def test_stream_error_event_after_chunks(fake, provider):
    fake.break_streams()
    got = []
    with pytest.raises(ProviderError) as err:
        async for item in provider.stream("gpt-4", request(stream=True)):
            got.append(item)
    assert got and err.value.kind is FailureKind.SERVER


async def test_read_timeout(fake, provider):
    fake.slow(delay=1.5)
    with pytest.raises(ProviderError) as err:
        await provider.complete("gpt-4", request())
    assert err.value.kind is FailureKind.TIMEOUT


async def test_unreachable_endpoint_is_a_connect_error():
    p = AzureOpenAIProvider(CONFIG, f"http://127.0.0.1:{free_port()}", KEY)
    try:
        with pytest.raises(ProviderError) as err:
            await p.complete("gpt-4", request())
        assert err.value.kind is FailureKind.CONNECT
    finally:
        await p.aclose()


async def test_entra_id_token_when_no_key(fake, monkeypatch):
    """No API key: DefaultAzureCredential gets a token (here from an App Service managed identity
    endpoint served by the stand-in) and the SDK sends it as a bearer token."""
    for var in (
        "AZURE_OPENAI_API_KEY",
        "AZURE_OPENAI_AD_TOKEN",
        "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "MSI_ENDPOINT",
        "IMDS_ENDPOINT",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{fake.url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", fake.identity_header)
    p = AzureOpenAIProvider(RESPONSES, fake.url, None)
    try:
        c = await p.complete("gpt-4", request())
        assert orjson.loads(c.body)["choices"][0]["message"]["content"] == "[gpt-4] hello azure"
        native = await p.complete("gpt-35-turbo", request())  # the Responses API, same bearer token
        assert orjson.loads(native.body)["choices"][0]["message"]["content"] == "[gpt-35-turbo] hello azure"
        assert fake.auth_kinds == {"bearer"} and fake.responses_calls == 1
    finally:
        await p.aclose()


# --- deployments served by Azure's Responses API (`api: responses`) --------------------------------

RESPONSES = AzureConfig(enabled=True, timeouts=Timeouts(connect=1, read=0.5, total=5),
                        deployments={"gpt-35": {"name": "gpt-35-turbo", "api": "responses"},
                                     "gpt-4": "gpt-4"})


@pytest.fixture
async def native(fake):
    p = AzureOpenAIProvider(RESPONSES, fake.url, KEY)
    yield p
    await p.aclose()


def test_config_names_the_api_per_deployment():
    from services.router.providers.azure_openai import resolve_target

    assert RESPONSES.responses_deployments() == {"gpt-35-turbo"}
    assert resolve_target(RESPONSES, "gpt-35") == "gpt-35-turbo"
    assert resolve_target(RESPONSES, "gpt-4") == "gpt-4"
    with pytest.raises(ValueError, match="listed with api chat and api responses"):
        AzureConfig(deployments={"a": "gpt-4", "b": {"name": "gpt-4", "api": "responses"}})
    with pytest.raises(ValueError):
        AzureConfig(deployments={"a": {"name": "gpt-4", "api": "assistants"}})


async def test_responses_deployment_answers_as_a_chat_completion(fake, native):
    c = await native.complete("gpt-35-turbo", request(max_tokens=32, temperature=0.2, user="u1"))
    body = orjson.loads(c.body)
    assert body["object"] == "chat.completion" and body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"] == "[gpt-35-turbo] hello azure"
    assert c.usage == Usage(body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"])
    assert c.usage.completion_tokens == 7 and fake.responses_calls == 1 and fake.stored == 0
    plain = await native.complete("gpt-4", request())  # a chat deployment next to it: the chat path
    assert orjson.loads(plain.body)["choices"][0]["message"]["content"] == "[gpt-4] hello azure"
    assert fake.responses_calls == 1


async def test_responses_deployment_streams_chat_chunks_and_tool_calls(fake, native):
    tools = [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}]
    items = [i async for i in native.stream("gpt-35-turbo", request(stream=True, tools=tools,
                                                                     stream_options={"include_usage": True}))]
    *events, usage = items
    chunks = [orjson.loads(e[len(b"data: "):]) for e in events]
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if c["choices"]
             and c["choices"][0]["delta"].get("tool_calls")]
    assert calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "look"
    assert orjson.loads("".join(c["function"]["arguments"] for c in calls)) == {"input": "hello azure"}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == usage.completion_tokens
    assert usage.completion_tokens > 0


async def test_responses_failures_keep_their_retry_kinds(fake, native):
    fake.fail(429, times=1)
    fake.behaviour.retry_after_ms = 1500
    with pytest.raises(ProviderError) as err:
        await native.complete("gpt-35-turbo", request())
    assert err.value.kind is FailureKind.RATE_LIMITED and err.value.retry_after == 1.5
    fake.reset()
    fake.break_streams()
    got = []
    with pytest.raises(ProviderError) as err:
        async for item in native.stream("gpt-35-turbo", request(stream=True)):
            got.append(item)
    assert got and err.value.kind is FailureKind.SERVER and "mid-stream" in err.value.message
    with pytest.raises(ProviderError) as err:
        await native.complete("gpt-35-turbo", request(n=2))
    assert err.value.kind is FailureKind.CLIENT and err.value.status == 400 and "'n'" in err.value.message
