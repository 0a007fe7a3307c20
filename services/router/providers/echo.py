"""The echo provider: answers locally, deterministically, without network or credentials.

For `qlensctl up` on a laptop, demos and tests. The answer repeats the last user message, so the
same request always gets the same answer (it is marked deterministic in /v1/models). Token counts
are estimated like a real tokenizer would roughly count them (about 4 characters per token plus
a few per message), so budgets and cost reports behave as they would with a real model.
`max_tokens` truncates the answer (finish_reason "length") and `stop` sequences cut it.

Embeddings are unit vectors derived from the input alone (SHAKE-256 of the text or token ids), so
the same input always has the same vector and different inputs almost surely differ;
`dimensions` sets their length (default 256).

Tools: when the request offers function tools (and `tool_choice` is not "none") and the last
message is the user's, echo calls one tool (the one `tool_choice` names, else the first) with
arguments `{"input": <the user's text>}` (finish_reason "tool_calls"); after a tool result it
answers `Echo: <the tool's output>`. Enough for an agent loop to run end to end.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import struct
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import orjson
from pydantic import Field

from services.common.config import Timeouts
from services.router.providers.base import (
    ChunkWriter,
    Completion,
    StreamItem,
    Usage,
    completion_body,
    embedding_body,
    embedding_inputs,
    max_tokens,
    message_text,
    new_completion_id,
    stop_sequences,
    tool_call,
    wants_usage,
)
from services.router.providers.spec import ProviderConfig, ProviderSpec


class EchoConfig(ProviderConfig):
    """`providers.echo`: the built-in deterministic provider (no network); for local use and tests."""

    enabled: bool = False
    delay_ms: float = Field(0.0, ge=0, description="wait this long before answering")


CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4  # role and separators, as chat formats add them
TOKENS_PER_REQUEST = 3
MAX_STREAM_CHUNKS = 16
EMBEDDING_DIMENSIONS = 256


def count_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def prompt_tokens(messages: list[Any]) -> int:
    total = TOKENS_PER_REQUEST
    for m in messages:
        if isinstance(m, dict):
            total += TOKENS_PER_MESSAGE + count_tokens(message_text(m.get("content")))
    return total


def echo_tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool call echo makes for this request, if any (see the module's docstring)."""
    tools = [t for t in body.get("tools") or ()
             if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    choice = body.get("tool_choice", "auto")
    messages = body.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    if not tools or choice == "none" or last.get("role") != "user":
        return None
    named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    name = str(named or tools[0]["function"].get("name") or "tool")
    text = message_text(last.get("content"))
    digest = hashlib.sha256(f"{name}\n{text}".encode()).hexdigest()[:24]
    return tool_call(f"call_{digest}", name, orjson.dumps({"input": text}).decode())


def echo_answer(body: dict[str, Any]) -> tuple[str, str]:
    """The answer text and its finish reason."""
    messages = body.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    last_user = next(
        (
            message_text(m.get("content"))
            for m in reversed(messages)
            if isinstance(m, dict) and m.get("role") == "user"
        ),
        "",
    )
    if last.get("role") == "tool":
        text = f"Echo: {message_text(last.get('content'))}"
    else:
        text = f"Echo: {last_user}" if last_user else "Echo: (no user message)"
    finish = "stop"
    for stop in stop_sequences(body):
        if stop and stop in text:
            text = text[: text.index(stop)]
    limit = max_tokens(body)
    if limit is not None and count_tokens(text) > limit:
        text = text[: limit * CHARS_PER_TOKEN]
        finish = "length"
    return text, finish


def split_for_stream(text: str, max_chunks: int = MAX_STREAM_CHUNKS) -> list[str]:
    """Word-sized pieces (at most `max_chunks`) that join back to `text`."""
    words = text.split(" ")
    pieces = [w + " " for w in words[:-1]] + [words[-1]]
    per_chunk = max(1, math.ceil(len(pieces) / max_chunks))
    chunks = ["".join(pieces[i : i + per_chunk]) for i in range(0, len(pieces), per_chunk)]
    return [c for c in chunks if c] or [""]


def unit_vector(item: str | list[int], dimensions: int) -> list[float]:
    """A deterministic unit vector for one input: hash bytes as uint32s mapped to [-1, 1), normalized."""
    seed = item.encode() if isinstance(item, str) else b"t:" + b",".join(str(t).encode() for t in item)
    raw = struct.unpack(f"<{dimensions}I", hashlib.shake_256(seed).digest(4 * dimensions))
    vector = [v / 2**31 - 1.0 for v in raw]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


class EchoProvider:
    name = "echo"
    gen_ai_system = "echo"  # not a GenAI semconv value: the local stand-in
    deterministic = True

    def __init__(self, config: EchoConfig | None = None) -> None:
        self.delay = (config.delay_ms if config else 0.0) / 1000.0
        self.timeouts = Timeouts()

    def _usage(self, body: dict[str, Any], text: str) -> Usage:
        return Usage(prompt_tokens(body.get("messages") or []), count_tokens(text))

    async def complete(self, target: str, body: dict[str, Any]) -> Completion:
        if self.delay:
            await asyncio.sleep(self.delay)
        model = str(body.get("model") or target)
        call = echo_tool_call(body)
        if call is not None:
            usage = self._usage(body, call["function"]["arguments"])
            answer = completion_body(id=new_completion_id(), model=model, text="", finish_reason="tool_calls",
                                     usage=usage, tool_calls=[call])
            return Completion(answer, usage)
        text, finish = echo_answer(body)
        usage = self._usage(body, text)
        return Completion(
            completion_body(
                id=new_completion_id(), model=model, text=text, finish_reason=finish, usage=usage
            ),
            usage,
        )

    async def stream(self, target: str, body: dict[str, Any]) -> AsyncGenerator[StreamItem, None]:
        if self.delay:
            await asyncio.sleep(self.delay)
        out = ChunkWriter(str(body.get("model") or target), wants_usage(body))
        yield out.role()
        call = echo_tool_call(body)
        if call is not None:
            args = call["function"]["arguments"]
            usage = self._usage(body, args)
            half = len(args) // 2  # in two fragments, as real models stream arguments
            yield out.tool_call(0, args[:half], id=call["id"], name=call["function"]["name"])
            yield out.tool_call(0, args[half:])
            finish = "tool_calls"
        else:
            text, finish = echo_answer(body)
            usage = self._usage(body, text)
            for piece in split_for_stream(text):
                yield out.content(piece)
        yield out.finish(finish)
        if out.include_usage:
            yield out.usage(usage)
        yield usage

    async def embed(self, target: str, body: dict[str, Any]) -> Completion:
        if self.delay:
            await asyncio.sleep(self.delay)
        items = embedding_inputs(body)
        dims = body.get("dimensions")
        dims = dims if isinstance(dims, int) and dims > 0 else EMBEDDING_DIMENSIONS
        tokens = sum(count_tokens(i) if isinstance(i, str) else len(i) for i in items)
        vectors = [unit_vector(item, dims) for item in items]
        model = str(body.get("model") or target)
        body_bytes = embedding_body(vectors, model, tokens, body.get("encoding_format"))
        return Completion(body_bytes, Usage(tokens, 0))

    async def aclose(self) -> None:
        return None


def create(config: EchoConfig, env: Mapping[str, str]) -> EchoProvider:
    return EchoProvider(config)


PROVIDER = ProviderSpec(name="echo", config=EchoConfig, create=create)
