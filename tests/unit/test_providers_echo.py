"""The echo provider: deterministic answers, realistic usage, streams in several chunks."""

from __future__ import annotations

import asyncio
import time

import orjson

from services.router.providers.base import Usage
from services.router.providers.echo import (
    EchoConfig,
    EchoProvider,
    count_tokens,
    echo_answer,
    prompt_tokens,
    split_for_stream,
)


def body(text="hello there, how are you today?", **extra):
    return {
        "model": "echo",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
        **extra,
    }


async def test_same_request_same_answer_and_usage():
    echo = EchoProvider()
    a, b = await echo.complete("echo", body()), await echo.complete("echo", body())
    ja, jb = orjson.loads(a.body), orjson.loads(b.body)
    assert ja["choices"] == jb["choices"]
    assert ja["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Echo: hello there, how are you today?",
    }
    assert ja["object"] == "chat.completion" and ja["model"] == "echo"
    # 3 a request, 4 a message, 4 characters a token: 3 + (4 + 2) + (4 + 8); the answer has 37 characters
    assert ja["usage"] == {"prompt_tokens": 21, "completion_tokens": 10, "total_tokens": 31}
    assert a.usage == b.usage == Usage(21, 10)


def test_usage_grows_with_the_prompt_like_a_tokenizer():
    short = prompt_tokens(body("hi")["messages"])
    long = prompt_tokens(body("hi " * 400)["messages"])
    assert long - short >= 250  # ~4 characters a token
    assert count_tokens("x" * 40) == 10


def test_multi_part_content_counts_text_parts():
    b = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "one "},
                    {"type": "image_url", "image_url": {"url": "http://x"}},
                    {"type": "text", "text": "two"},
                ],
            }
        ]
    }
    assert echo_answer(b) == ("Echo: one two", "stop")


def test_max_tokens_truncates_with_finish_length():
    text, finish = echo_answer(body("a" * 100, max_tokens=5))
    assert finish == "length" and count_tokens(text) == 5
    text, finish = echo_answer(body("a" * 100, max_completion_tokens=3))
    assert finish == "length" and count_tokens(text) == 3


def test_stop_sequence_cuts_the_answer():
    assert echo_answer(body("one two STOP three", stop=["STOP"])) == ("Echo: one two ", "stop")


def test_split_for_stream_keeps_text_and_bounds_chunks():
    text = " ".join(f"w{i}" for i in range(100))
    pieces = split_for_stream(text, max_chunks=16)
    assert "".join(pieces) == text and 1 < len(pieces) <= 16


async def collect(provider, b):
    return [item async for item in provider.stream("echo", b)]


async def test_stream_chunks_then_usage_chunk_then_usage():
    items = await collect(EchoProvider(), body(stream=True, stream_options={"include_usage": True}))
    events, usage = items[:-1], items[-1]
    assert isinstance(usage, Usage) and usage.completion_tokens > 0
    chunks = [orjson.loads(e[len(b"data: ") :]) for e in events]
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in events)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len(chunks) >= 5  # role, several content pieces, finish, usage
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Echo: hello there, how are you today?"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == usage.completion_tokens


async def test_stream_without_include_usage_has_no_usage_chunk():
    items = await collect(EchoProvider(), body(stream=True))
    chunks = [orjson.loads(e[len(b"data: ") :]) for e in items[:-1]]
    assert all(c["choices"] for c in chunks)
    assert all("usage" not in c for c in chunks)
    assert isinstance(items[-1], Usage)  # the router still learns the usage


async def test_the_configured_delay_holds_the_answer_back():
    """Measured on the event loop's clock, which is what asyncio.sleep waits on (a lower bound; the
    loop may run a timer up to its clock resolution early, so that much is allowed)."""
    loop = asyncio.get_running_loop()
    slack = time.get_clock_info("monotonic").resolution
    echo = EchoProvider(EchoConfig(enabled=True, delay_ms=50))
    start = loop.time()
    answer = await echo.complete("echo", body())
    assert loop.time() - start >= 0.050 - slack
    text = orjson.loads(answer.body)["choices"][0]["message"]["content"]
    assert text == "Echo: hello there, how are you today?"
    start = loop.time()
    stream = echo.stream("echo", body(stream=True))
    first = await anext(stream)
    assert loop.time() - start >= 0.050 - slack  # the first chunk waits too
    assert b'"role":"assistant"' in first
    await stream.aclose()
