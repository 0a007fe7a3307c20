"""Bedrock: the OpenAI <-> Converse translation, and the real boto3 client against the local stand-in."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from services.common.config import Timeouts
from services.router.providers.base import ChunkWriter, ProviderError, Usage
from services.router.providers.bedrock import (
    LEADING_USER_TURN,
    BedrockConfig,
    BedrockProvider,
    from_converse,
    stream_items,
    to_converse,
)
from services.router.retry import FailureKind
from tests.fakes.bedrock import FakeBedrock

MODEL = "anthropic.claude-3-sonnet-20240229-v1:0"


# --- translation ---------------------------------------------------------------------------------


def test_system_user_assistant_and_parameters():
    req = to_converse(
        MODEL,
        {
            "model": "claude-3-sonnet",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}],
                },
            ],
            "max_tokens": 50,
            "temperature": 0.2,
            "top_p": 0.9,
            "stop": "END",
        },
    )
    assert req == {
        "modelId": MODEL,
        "system": [{"text": "be brief"}],
        "messages": [
            {"role": "user", "content": [{"text": "hi"}]},
            {"role": "assistant", "content": [{"text": "hello"}]},
            {"role": "user", "content": [{"text": "part one"}, {"text": "part two"}]},
        ],
        "inferenceConfig": {"maxTokens": 50, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]},
    }


def test_consecutive_same_role_messages_are_merged():
    req = to_converse(
        MODEL,
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
                {"role": "developer", "content": "rules"},
            ]
        },
    )
    assert req["messages"] == [{"role": "user", "content": [{"text": "a"}, {"text": "b"}]}]
    assert req["system"] == [{"text": "rules"}]
    assert "inferenceConfig" not in req


def test_a_leading_assistant_turn_gets_a_user_turn_before_it():
    req = to_converse(
        MODEL,
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "assistant", "content": "How can I help?"},
                {"role": "assistant", "content": [{"type": "text", "text": "Ask away."}]},
                {"role": "user", "content": "what is 2+2?"},
                {"role": "tool", "tool_call_id": "c1", "content": "4"},
            ]
        },
    )
    assert req["messages"] == [
        {"role": "user", "content": [{"text": "(conversation start)"}]},
        {"role": "assistant", "content": [{"text": "How can I help?"}, {"text": "Ask away."}]},
        {"role": "user", "content": [{"text": "what is 2+2?"},
                                     {"toolResult": {"toolUseId": "c1", "content": [{"text": "4"}]}}]},
    ]
    assert LEADING_USER_TURN == "(conversation start)"


def test_turns_without_text_leave_no_blank_block_and_their_neighbours_merge():
    req = to_converse(
        MODEL,
        {
            "messages": [
                {"role": "user", "content": "one"},
                {"role": "assistant", "content": "  "},
                {"role": "assistant", "content": None, "tool_calls": []},
                {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "two"}]},
            ]
        },
    )
    assert req["messages"] == [{"role": "user", "content": [{"text": "one"}, {"text": "two"}]}]


def test_non_text_parts_are_a_client_error():
    with pytest.raises(ProviderError) as err:
        to_converse(
            MODEL, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}
        )
    assert err.value.kind is FailureKind.CLIENT


def test_no_conversation_is_a_client_error():
    with pytest.raises(ProviderError) as err:
        to_converse(MODEL, {"messages": [{"role": "system", "content": "only rules"}]})
    assert err.value.kind is FailureKind.CLIENT


def test_converse_answer_to_openai():
    c = from_converse(
        {
            "output": {"message": {"role": "assistant", "content": [{"text": "Hel"}, {"text": "lo"}]}},
            "stopReason": "max_tokens",
            "usage": {"inputTokens": 7, "outputTokens": 2, "totalTokens": 9},
        },
        "claude-3-sonnet",
    )
    body = orjson.loads(c.body)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello"}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    assert body["model"] == "claude-3-sonnet" and c.usage == Usage(7, 2)


def test_stream_events_to_chunks():
    events = [
        {"messageStart": {"role": "assistant"}},
        {"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"text": "Hi"}}},
        {"contentBlockStop": {"contentBlockIndex": 0}},
        {"messageStop": {"stopReason": "end_turn"}},
        {"metadata": {"usage": {"inputTokens": 3, "outputTokens": 1, "totalTokens": 4}, "metrics": {}}},
    ]
    items = list(stream_items(iter(events), ChunkWriter("m", include_usage=True)))
    assert items[-1] == Usage(3, 1)
    chunks = [orjson.loads(i[6:]) for i in items[:-1]]
    assert [c["choices"][0]["delta"] if c["choices"] else None for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Hi"},
        {},
        None,
    ]
    assert chunks[2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[3]["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}


# --- real boto3 against the stand-in ------------------------------------------------------------


@pytest.fixture
def fake(monkeypatch, tmp_path):
    with FakeBedrock(access_key="AKIDTESTTESTTEST", secret_key="bedrock-unit-secret") as server:
        for name, value in server.client_env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        yield server


@pytest.fixture
async def provider(fake):
    p = BedrockProvider(BedrockConfig(enabled=True, timeouts=Timeouts(connect=1, read=0.5, total=5)))
    yield p
    await p.aclose()


def request(**extra):
    return {
        "model": "claude-3-sonnet",
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hello bedrock"}],
        **extra,
    }


async def test_converse_through_boto3(fake, provider):
    c = await provider.complete(MODEL, request(max_tokens=100))
    body = orjson.loads(c.body)
    assert body["choices"][0]["message"]["content"] == f"[{MODEL}] hello bedrock"
    assert body["model"] == "claude-3-sonnet"
    # the stand-in counts 4 characters a token: "sys hello bedrock" (17), the answer (55)
    assert c.usage == Usage(5, 14) and body["usage"] == {"prompt_tokens": 5, "completion_tokens": 14,
                                                         "total_tokens": 19}
    assert fake.last_request["system"] == [{"text": "sys"}]
    assert fake.last_request["inferenceConfig"] == {"maxTokens": 100}
    assert fake.calls(MODEL) == 1


async def test_converse_stream_through_boto3(fake, provider):
    items = [
        i async for i in provider.stream(MODEL, request(stream=True, stream_options={"include_usage": True}))
    ]
    usage = items[-1]
    chunks = [orjson.loads(i[6:]) for i in items[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == f"[{MODEL}] hello bedrock"
    assert usage == Usage(5, 14)
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 14, "total_tokens": 19}


@pytest.mark.parametrize("stream", [False, True])
async def test_an_assistant_first_conversation_is_accepted_by_the_strict_stand_in(fake, provider, stream):
    """Converse refuses a conversation that starts with the assistant or repeats a role (the
    stand-in does too, see test_fakes_bedrock.py): the translation makes one it accepts."""
    body = {
        "model": "claude-3-sonnet",
        "messages": [
            {"role": "assistant", "content": "Hello! What can I do for you?"},
            {"role": "user", "content": "tell me"},
            {"role": "user", "content": "a joke"},
        ],
        "stream": stream,
    }
    if stream:
        items = [i async for i in provider.stream(MODEL, body)]
        text = "".join(
            c["choices"][0]["delta"].get("content", "")
            for c in (orjson.loads(i[6:]) for i in items[:-1])
            if c["choices"]
        )
    else:
        text = orjson.loads((await provider.complete(MODEL, body)).body)["choices"][0]["message"]["content"]
    assert text == f"[{MODEL}] tell mea joke"
    assert [m["role"] for m in fake.last_request["messages"]] == ["user", "assistant", "user"]
    assert [s.status for s in fake.seen] == [200]


async def test_stream_chunks_arrive_while_the_model_is_still_writing(fake, provider):
    fake.slow(chunk_delay=0.2)
    stream = provider.stream(MODEL, request(stream=True))
    first_content = None
    async for item in stream:
        if isinstance(item, bytes) and b'"content":"[' in item:
            first_content = item
            break
    assert first_content is not None
    assert fake.streams_finished == 0  # the rest is still being written upstream
    await stream.aclose()


@pytest.mark.parametrize(
    "status,kind",
    [
        (429, FailureKind.RATE_LIMITED),
        (500, FailureKind.SERVER),
        (503, FailureKind.SERVER),
        (400, FailureKind.CLIENT),
        (403, FailureKind.DEPLOYMENT),
    ],
)
async def test_errors_map_to_retry_kinds(fake, provider, status, kind):
    fake.fail(status, times=1)
    with pytest.raises(ProviderError) as err:
        await provider.complete(MODEL, request())
    assert err.value.kind is kind and err.value.status == status
    assert fake.calls() == 1  # botocore did not retry on its own


async def test_stream_open_failure_raises_before_any_chunk(fake, provider):
    fake.fail(429, times=1)
    with pytest.raises(ProviderError) as err:
        await anext(provider.stream(MODEL, request(stream=True)))
    assert err.value.kind is FailureKind.RATE_LIMITED


async def test_failure_inside_the_stream_after_chunks(fake, provider):
    fake.break_streams()
    got = []
    with pytest.raises(ProviderError) as err:
        async for item in provider.stream(MODEL, request(stream=True)):
            got.append(item)
    assert got  # the first chunks were delivered before the failure
    assert err.value.kind is FailureKind.SERVER


async def test_read_timeout(fake, provider):
    fake.slow(delay=1.5)
    with pytest.raises(ProviderError) as err:
        await provider.complete(MODEL, request())
    assert err.value.kind is FailureKind.TIMEOUT


async def test_wrong_credentials_are_a_deployment_error(fake, provider, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSOMEONEELSE")
    other = BedrockProvider(BedrockConfig(enabled=True))
    try:
        with pytest.raises(ProviderError) as err:
            await other.complete(MODEL, request())
        assert err.value.kind is FailureKind.DEPLOYMENT
    finally:
        await other.aclose()


async def test_unreachable_endpoint_is_a_connect_error(monkeypatch, tmp_path):
    from qlensctl.local import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTTESTTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")
    p = BedrockProvider(BedrockConfig(enabled=True, timeouts=Timeouts(connect=0.5, read=1, total=2)))
    try:
        with pytest.raises(ProviderError) as err:
            await asyncio.wait_for(p.complete(MODEL, request()), 10)
        assert err.value.kind is FailureKind.CONNECT
    finally:
        await p.aclose()
