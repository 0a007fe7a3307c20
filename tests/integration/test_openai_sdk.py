"""The official openai SDK, unmodified, against a real local stack (gateway, router, cache; echo).

This is the product promise: point any OpenAI client at the gateway and it works, streaming
included. Each test uses its own prompt so the shared stack's cache does not mix them up.
"""

from __future__ import annotations

import re
import time

import httpx
import openai
import pytest

from services.gateway.cachekey import cache_key
from tests.support.stack import RunningStack

pytestmark = pytest.mark.timeout(120)


def ask(text: str) -> list[dict]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


def test_sync_completion(shared_stack: RunningStack):
    client = shared_stack.openai()
    raw = client.chat.completions.with_raw_response.create(model="echo", messages=ask("sync hello"))
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Echo: sync hello"
    assert completion.choices[0].finish_reason == "stop"
    # echo counts 3 a request, 4 a message and 4 characters a token: 3 + (4 + 2) + (4 + 3), and
    # "Echo: sync hello" (16 characters)
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens,
            completion.usage.total_tokens) == (16, 4, 20)
    assert raw.headers["x-qlens-provider"] == "echo/echo"
    assert raw.headers["x-qlens-cache"] == "miss"
    assert re.fullmatch(r"\d+\.\d{3}", raw.headers["x-qlens-overhead-ms"])  # ms, three decimals
    assert re.fullmatch(r"[0-9a-f]{32}", raw.headers["x-request-id"])  # a fresh random 128-bit id


async def test_async_completion(shared_stack: RunningStack):
    async with shared_stack.async_openai() as client:
        completion = await client.chat.completions.create(model="echo", messages=ask("async hello"),
                                                          max_tokens=50, temperature=0)
    assert completion.choices[0].message.content == "Echo: async hello"


def test_content_part_messages(shared_stack: RunningStack):
    client = shared_stack.openai()
    completion = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": [{"type": "text", "text": "parts work"}]}])
    assert completion.choices[0].message.content == "Echo: parts work"


def test_stream_without_usage(shared_stack: RunningStack):
    client = shared_stack.openai()
    chunks = list(client.chat.completions.create(model="echo", messages=ask("stream one two three"),
                                                 stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: stream one two three"
    assert len(chunks) > 2  # really streamed in pieces
    assert chunks[-1].choices[0].finish_reason == "stop"
    # the gateway asked the router for usage (to settle the budget) but the client did not
    assert all(c.usage is None for c in chunks)


def test_stream_with_include_usage(shared_stack: RunningStack):
    client = shared_stack.openai()
    chunks = list(client.chat.completions.create(model="echo", messages=ask("stream with usage"), stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: stream with usage"


async def test_async_stream(shared_stack: RunningStack):
    async with shared_stack.async_openai() as client:
        stream = await client.chat.completions.create(model="echo", messages=ask("async stream"), stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Echo: async stream"


def test_second_identical_request_is_a_cache_hit_with_the_same_answer(shared_stack: RunningStack):
    client = shared_stack.openai()
    first = client.chat.completions.with_raw_response.create(model="echo", messages=ask("cache me"))
    second = client.chat.completions.with_raw_response.create(model="echo", messages=ask("cache me"))
    assert first.headers["x-qlens-cache"] == "miss"
    assert second.headers["x-qlens-cache"] == "hit"
    assert second.headers["x-qlens-provider"] == "echo/echo"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content


def test_a_stored_answer_replays_as_a_stream(shared_stack: RunningStack):
    client = shared_stack.openai()
    client.chat.completions.create(model="echo", messages=ask("replay me"))
    raw = client.chat.completions.with_raw_response.create(
        model="echo", messages=ask("replay me"), stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-qlens-cache"] == "hit"
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: replay me"
    assert chunks[-1].usage is not None


def test_a_completed_stream_is_stored_and_served_to_a_json_request(shared_stack: RunningStack):
    client = shared_stack.openai()
    messages = ask("stream then json")
    list(client.chat.completions.create(model="echo", messages=messages, stream=True))
    # the entry is written in the background after the stream ended: wait for it in the cache itself
    # (asking the gateway would store the JSON answer and prove nothing about the stream)
    key = cache_key("default", {"model": "echo", "messages": messages})
    url = f"{shared_stack.url('cache')}/v1/cache/default/{key}"
    deadline = time.monotonic() + 10
    while httpx.get(url).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    raw = client.chat.completions.with_raw_response.create(model="echo", messages=messages)
    assert raw.headers["x-qlens-cache"] == "hit"
    assert raw.parse().choices[0].message.content == "Echo: stream then json"


def test_models_list_and_retrieve(shared_stack: RunningStack):
    client = shared_stack.openai()
    assert "echo" in [m.id for m in client.models.list()]
    assert client.models.retrieve("echo").id == "echo"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_sdk_sees_openai_errors(shared_stack: RunningStack):
    client = shared_stack.openai()
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=ask("x"))
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="echo", messages=[{"role": "wizard", "content": "x"}])
    assert info.value.param == "messages[0].role"
