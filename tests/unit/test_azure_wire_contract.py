"""The router calls Azure OpenAI's REST API itself (services/router/providers/azure_openai.py); the
official `openai` SDK defines what those calls must look like. Each test here sends one request
through the SDK (`AsyncAzureOpenAI`, or `AsyncOpenAI` on Azure's v1 Responses API) and the same
one through the router's provider to the strict stand-in, and compares what arrived: method, path,
api-version, content type, credentials and the JSON body. The SDK then parses the provider's
forwarded answer as its own type, so clients of the gateway read it as they read Azure."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from services.common.config import Timeouts
from services.router.providers import azure_responses
from services.router.providers.azure_openai import AzureConfig, AzureOpenAIProvider
from tests.fakes.azure_openai import FakeAzureOpenAI

KEY = "contract-key-42"
VERSION = "2024-10-21"
CONFIG = AzureConfig(enabled=True, api_version=VERSION, timeouts=Timeouts(connect=1, read=5, total=10),
                     deployments={"gpt-4o": "gpt-4o", "emb": "text-embedding-3-small",
                                  "gpt-5": {"name": "gpt-5", "api": "responses"}})
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello contract"}]
# what differs by nature between two clients, never the request itself
CLIENT_HEADERS = {"user-agent", "host", "content-length", "accept", "accept-encoding", "connection"}


@pytest.fixture
def fake():
    server = FakeAzureOpenAI(api_key=KEY, deployments=("gpt-4o", "text-embedding-3-small", "gpt-5"),
                             api_versions=(VERSION,))
    with server:
        server.wire = []
        yield server


@pytest.fixture
async def provider(fake):
    p = AzureOpenAIProvider(CONFIG, fake.url, KEY)
    yield p
    await p.aclose()


@pytest.fixture
async def sdk(fake):
    from openai import AsyncAzureOpenAI

    client = AsyncAzureOpenAI(azure_endpoint=fake.url, api_key=KEY, api_version=VERSION, max_retries=0)
    yield client
    await client.close()


def request_parts(seen: dict[str, Any]) -> dict[str, Any]:
    """A request as the service reads it: the JSON body parsed, client-specific headers left out."""
    headers = {k: v for k, v in seen["headers"].items()
               if k not in CLIENT_HEADERS and not k.startswith("x-stainless")}
    return {"method": seen["method"], "path": seen["path"], "query": seen["query"], "headers": headers,
            "body": orjson.loads(seen["body"])}


def assert_same_wire(fake: FakeAzureOpenAI) -> None:
    assert fake.wire is not None and len(fake.wire) == 2, fake.wire
    by_sdk, by_router = (request_parts(w) for w in fake.wire)
    assert by_router == by_sdk
    assert by_router["query"] == {"api-version": [VERSION]}
    assert by_router["headers"]["api-key"] == KEY
    assert by_router["headers"]["content-type"] == "application/json"


async def test_chat_completion_is_sent_as_the_sdk_sends_it(fake, provider, sdk):
    from openai.types.chat import ChatCompletion

    by_sdk = await sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, temperature=0.2,
                                               max_tokens=7, user="u-1")
    got = await provider.complete("gpt-4o", {"model": "gpt-4o", "messages": MESSAGES, "temperature": 0.2,
                                             "max_tokens": 7, "user": "u-1"})
    assert_same_wire(fake)
    assert fake.wire[1]["path"] == "/openai/deployments/gpt-4o/chat/completions"
    parsed = ChatCompletion.model_validate_json(got.body)
    assert parsed.choices[0].message == by_sdk.choices[0].message
    assert parsed.usage == by_sdk.usage and got.usage.completion_tokens == by_sdk.usage.completion_tokens


async def test_tools_are_sent_as_the_sdk_sends_them(fake, provider, sdk):
    tools = [{"type": "function", "function": {"name": "weather", "description": "the weather",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    await sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=tools, tool_choice="auto")
    await provider.complete("gpt-4o", {"model": "gpt-4o", "messages": MESSAGES, "tools": tools,
                                       "tool_choice": "auto"})
    assert_same_wire(fake)


async def test_stream_is_asked_for_as_the_sdk_asks_with_usage(fake, provider, sdk):
    from openai.types.chat import ChatCompletionChunk

    chunks = [c async for c in await sdk.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True})]
    items = [i async for i in provider.stream("gpt-4o", {"model": "gpt-4o", "messages": MESSAGES,
                                                           "stream": True,
                                                           "stream_options": {"include_usage": True}})]
    assert_same_wire(fake)
    ours = [ChatCompletionChunk.model_validate_json(i[len(b"data: "):]) for i in items[:-1]]
    assert [c.choices for c in ours] == [c.choices for c in chunks]
    assert ours[-1].usage == chunks[-1].usage
    assert items[-1].completion_tokens == chunks[-1].usage.completion_tokens


async def test_embeddings_are_sent_as_the_sdk_sends_them(fake, provider, sdk):
    from openai.types import CreateEmbeddingResponse

    by_sdk = await sdk.embeddings.create(model="text-embedding-3-small", input=["one", "two"],
                                         encoding_format="float", dimensions=8)
    got = await provider.embed("text-embedding-3-small", {"model": "emb", "input": ["one", "two"],
                                                          "encoding_format": "float", "dimensions": 8})
    assert_same_wire(fake)
    assert fake.wire[1]["path"] == "/openai/deployments/text-embedding-3-small/embeddings"
    assert CreateEmbeddingResponse.model_validate_json(got.body).data == by_sdk.data


async def test_responses_api_call_is_what_the_sdk_sends_to_azures_v1_api(fake, provider):
    """Azure's v1 API is OpenAI's own client pointed at `{endpoint}/openai/v1/`, no api-version.
    The SDK is given the very request the provider builds, as typed keyword arguments: one it did
    not know would be a TypeError."""
    from openai import AsyncOpenAI

    chat = {"model": "gpt-5", "messages": MESSAGES, "max_tokens": 32, "temperature": 0.5}
    built = azure_responses.responses_request(chat, "gpt-5")
    client = AsyncOpenAI(base_url=f"{fake.url}/openai/v1/", api_key="unused",
                         default_headers={"api-key": KEY}, max_retries=0)
    try:
        await client.responses.create(**built)
    finally:
        await client.close()
    got = await provider.complete("gpt-5", chat)
    by_sdk, by_router = (request_parts(w) for w in fake.wire)
    by_sdk["headers"].pop("authorization")  # the v1 client's own bearer of its placeholder key
    assert by_router == by_sdk
    assert by_router["path"] == "/openai/v1/responses" and by_router["query"] == {}
    assert by_router["body"]["store"] is False and by_router["body"]["max_output_tokens"] == 32
    assert orjson.loads(got.body)["choices"][0]["message"]["content"] == "[gpt-5] hello contract"


async def test_over_tls_with_the_endpoint_verified(tmp_path, monkeypatch):
    """Azure is https: the pool verifies the certificate (here a test CA's, trusted through
    SSL_CERT_FILE as OpenSSL reads it) and reuses the connection for the next call."""
    server = FakeAzureOpenAI(api_key=KEY, deployments=("gpt-4o",), api_versions=(VERSION,))
    ca = server.use_tls(tmp_path / "tls")
    with server:
        assert server.url.startswith("https://")
        untrusted = AzureOpenAIProvider(CONFIG, server.url, KEY)
        try:
            from services.router.providers.base import ProviderError
            from services.router.retry import FailureKind

            with pytest.raises(ProviderError) as err:
                await untrusted.complete("gpt-4o", {"messages": MESSAGES})
            assert err.value.kind is FailureKind.CONNECT and "CERTIFICATE_VERIFY_FAILED" in err.value.message
        finally:
            await untrusted.aclose()
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        trusted = AzureOpenAIProvider(CONFIG, server.url, KEY)
        try:
            for _ in range(2):
                got = await trusted.complete("gpt-4o", {"messages": MESSAGES})
                assert orjson.loads(got.body)["choices"][0]["message"]["content"] == "[gpt-4o] hello contract"
            streamed = [i async for i in trusted.stream("gpt-4o", {"messages": MESSAGES, "stream": True})]
            assert streamed[-1].completion_tokens > 0
            assert len(trusted._pool._idle) == 1, "one kept-alive connection served all three calls"
        finally:
            await trusted.aclose()


async def test_entra_token_is_renewed_in_the_background_before_it_expires(fake, monkeypatch):
    """No API key: the first call waits for a token from DefaultAzureCredential (the stand-in's
    managed-identity endpoint). A call inside the renewal window goes out at once with the current
    token while the renewal runs: here the renewal is held until that call has been answered."""
    import asyncio

    for var in ("AZURE_OPENAI_API_KEY", "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET",
                "AZURE_FEDERATED_TOKEN_FILE", "MSI_ENDPOINT", "IMDS_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{fake.url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", fake.identity_header)
    fake.token_lifetime = 200  # shorter than the renewal window: every token is due for renewal
    p = AzureOpenAIProvider(CONFIG, fake.url, None)
    token = p._token
    assert token is not None
    real_get_token, held, calls = token._credential.get_token, asyncio.Event(), []

    async def get_token(*scopes: str, **kw: Any) -> Any:  # the real credential, held on renewals
        calls.append(scopes)
        if len(calls) > 1:
            await held.wait()
        return await real_get_token(*scopes, **kw)

    monkeypatch.setattr(token._credential, "get_token", get_token)
    body = {"messages": MESSAGES}
    try:
        await p.complete("gpt-4o", body)
        first = fake.wire[-1]["headers"]["authorization"]
        assert first.startswith("Bearer fake-entra-token-")
        assert calls == [("https://cognitiveservices.azure.com/.default",)]
        await asyncio.wait_for(p.complete("gpt-4o", body), 5)  # answered while the renewal is held
        assert fake.wire[-1]["headers"]["authorization"] == first and len(calls) == 2
        assert token._renewal is not None and not token._renewal.done()
        held.set()
        await token._renewal
        assert token._expires_on > time.time() + 100 and fake.auth_kinds == {"bearer"}
    finally:
        await p.aclose()
