"""What every provider adapter offers the router, and the OpenAI shapes they all produce.

A provider turns an OpenAI chat-completions request body into a call to its backend and answers
in OpenAI's format:

- `complete(target, body)` -> `Completion`: the `chat.completion` JSON as bytes, plus usage.
- `stream(target, body)` -> async iterator of SSE events (`b"data: {chunk}\\n\\n"`, no `[DONE]`,
  the router adds it), then one `Usage` object as the last item. The usage chunk is among the
  events only when the client asked for it (`stream_options.include_usage`).

A provider that serves embeddings also has `embed(target, body)` -> `Completion` (OpenAI's
embedding list as bytes, honouring `encoding_format`; usage has prompt tokens only).

Failures raise `ProviderError` with a `FailureKind` that tells the router whether to retry, try
elsewhere, or answer the client. Nothing raised before the first item has reached the client, so
the router may still retry; afterwards it may not.
"""

from __future__ import annotations

import base64
import math
import secrets
import struct
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import orjson

from services.common.config import Timeouts
from services.router.retry import FailureKind


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    def as_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass(frozen=True)
class Completion:
    body: bytes  # OpenAI chat.completion JSON, forwarded as is
    usage: Usage


class ProviderError(Exception):
    """`retry_after`: seconds the provider asked to wait (Retry-After, retry-after-ms);
    `reason`: why a CLIENT error refused the request, when a special fallback may answer it
    ("context_window": the prompt is too long for the model; "content_policy": the provider's
    content filter refused it)."""

    def __init__(self, kind: FailureKind, message: str, status: int | None = None,
                 retry_after: float | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.reason = reason


def retry_after_seconds(headers: Any) -> float | None:
    """The wait a 429/503 asks for: Azure's `retry-after-ms` / `x-ms-retry-after-ms` (milliseconds)
    or `Retry-After` (seconds, or an HTTP date); None when absent or unreadable."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("x-ms-retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if not value:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            if scale != 1.0:
                continue
            try:
                seconds = parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError):
                continue
        if math.isfinite(seconds):
            return max(seconds, 0.0)
    return None


StreamItem = bytes | Usage


class Provider(Protocol):
    name: str  # "azureOpenAI", "awsBedrock", "echo": the provider half of a deployment label
    deterministic: bool  # same request, same answer (echo): reported in /v1/models
    gen_ai_system: str  # the provider call span's gen_ai.system (OpenTelemetry GenAI conventions)
    timeouts: Timeouts

    async def complete(self, target: str, body: dict[str, Any]) -> Completion: ...

    def stream(self, target: str, body: dict[str, Any]) -> AsyncGenerator[StreamItem, None]: ...

    async def aclose(self) -> None: ...


# --- OpenAI request and response shapes ------------------------------------------------------


def message_text(content: Any) -> str:
    """The text of a message's `content`: a string, or an array of parts of which text parts count."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return str(content)


def wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return bool(isinstance(options, dict) and options.get("include_usage"))


def max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    return value if isinstance(value, int) and value > 0 else None


def stop_sequences(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list):
        return [s for s in stop if isinstance(s, str)]
    return []


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def tool_call(id: str, name: str, arguments: str) -> dict[str, Any]:
    """One entry of an assistant message's `tool_calls`."""
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def completion_body(
    *,
    id: str,
    model: str,
    text: str,
    finish_reason: str,
    usage: Usage,
    created: int | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message = {"role": "assistant", "content": text or None, "tool_calls": tool_calls}
    return orjson.dumps(
        {
            "id": id,
            "object": "chat.completion",
            "created": created or int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": usage.as_openai(),
        }
    )


def sse_event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class ChunkWriter:
    """Builds the `chat.completion.chunk` events of one streamed answer."""

    def __init__(self, model: str, include_usage: bool, id: str | None = None) -> None:
        self.id = id or new_completion_id()
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage

    def _chunk(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = usage.as_openai() if usage else None
        return sse_event(chunk)

    def role(self) -> bytes:
        return self._chunk(
            [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
        )

    def content(self, text: str) -> bytes:
        return self._chunk([{"index": 0, "delta": {"content": text}, "finish_reason": None}])

    def tool_call(self, index: int, arguments: str, id: str | None = None, name: str | None = None) -> bytes:
        """A tool call's delta: the first one of a call carries its id and name, later ones only
        more `function.arguments` text."""
        call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
        if id is not None:
            call = {"index": index, "id": id, "type": "function",
                    "function": {"name": name or "", "arguments": arguments}}
        return self._chunk([{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}])

    def finish(self, reason: str) -> bytes:
        return self._chunk([{"index": 0, "delta": {}, "finish_reason": reason}])

    def usage(self, usage: Usage) -> bytes:
        """The last chunk when the client asked for usage: no choices, usage filled in."""
        return self._chunk([], usage)


# --- embeddings --------------------------------------------------------------------------------


def embedding_inputs(body: dict[str, Any]) -> list[str | list[int]]:
    """The request's `input` as a list of items: strings, or token arrays."""
    value = body.get("input")
    if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], int)):
        return [value]
    if isinstance(value, list) and value:
        return value
    raise ProviderError(FailureKind.CLIENT, "`input` must be a string, a list of strings or token arrays")


def text_inputs(body: dict[str, Any], provider: str) -> list[str]:
    """The inputs of a provider that embeds text only (token arrays are refused, clearly)."""
    items = embedding_inputs(body)
    if not all(isinstance(item, str) for item in items):
        raise ProviderError(FailureKind.CLIENT, f"token-array inputs are not supported by {provider} models: "
                                                "send the text", status=400)
    return [str(item) for item in items]


def encode_vector(vector: list[float], encoding_format: Any) -> list[float] | str:
    """A vector as OpenAI sends it: floats, or with `encoding_format: base64` the base64 of its
    little-endian float32 bytes (what the openai SDK asks for by default, and decodes)."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def embedding_body(vectors: list[list[float]], model: str, prompt_tokens: int, encoding_format: Any) -> bytes:
    return orjson.dumps({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode_vector(v, encoding_format)}
                 for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })
