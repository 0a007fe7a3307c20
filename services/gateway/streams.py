"""Server-sent events between router and client, and the one shape cache entries take.

A stream is forwarded event by event as it arrives (never buffered whole). On the way the relay
picks out the usage chunk (the gateway always asks the router for one, to settle the budget) and
drops it when the client did not ask for it, and, when the answer is cacheable, folds the chunks
into the equivalent non-streamed completion.

Cache entries always hold that non-streamed completion (JSON), because the cache key ignores
`stream`: the same question asked with and without streaming shares one entry. A JSON request
gets the stored bytes as they are; a streaming request gets them replayed as chunks.
"""

from __future__ import annotations

from typing import Any

import orjson

from services.common.sse import SSESplitter as SSESplitter  # re-exported: the relay's splitter

DONE = b"data: [DONE]\n\n"
_DATA = b"data: "


def sse(payload: bytes) -> bytes:
    return _DATA + payload + b"\n\n"


def error_event(body: bytes) -> bytes:
    """An error after the stream started: the openai SDK raises on a `data:` event with `error`."""
    return sse(body)


class StreamRelay:
    """Decides what each upstream event becomes for the client, and remembers usage and chunks."""

    def __init__(self, forward_usage: bool, collect: bool) -> None:
        self.forward_usage = forward_usage
        self.collect = collect
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.failed = False
        self.chunks: list[dict[str, Any]] = []
        self.relayed = 0  # bytes of text and tool-call arguments relayed: bounds their tokens

    def event(self, event: bytes) -> bytes | None:
        """The bytes to send for one upstream event, or None to drop it."""
        if not event.startswith(_DATA):
            return event + b"\n\n"  # comments / keep-alives pass through untouched
        payload = event[len(_DATA):]
        if payload == b"[DONE]":
            self.done = True
            return DONE
        self.relayed += text_bytes(payload)
        if not self.collect and b'"usage"' not in payload and b'"error"' not in payload:
            return event + b"\n\n"  # the hot path: a content chunk forwarded as it came
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.collect = False
            return event + b"\n\n"
        if not isinstance(chunk, dict):
            return event + b"\n\n"
        if "error" in chunk:
            self.failed = True
            return event + b"\n\n"
        usage = chunk.get("usage")
        if self.collect:
            self.chunks.append(chunk)
        if usage:
            self.usage = usage
            if not self.forward_usage:
                if not chunk.get("choices"):
                    return None
                return sse(orjson.dumps({**chunk, "usage": None}))
        return event + b"\n\n"

    def completion(self) -> dict[str, Any] | None:
        """The non-streamed completion this stream amounts to, or None when it must not be cached."""
        if not (self.collect and self.done and not self.failed and self.usage and self.chunks):
            return None
        return completion_from_chunks(self.chunks, self.usage)


_TEXT_FIELDS = (b'"content":"', b'"arguments":"')


def text_bytes(payload: bytes) -> int:
    """The bytes of a chunk's delta text and tool-call arguments (JSON escapes included: an upper
    bound, like every token bound here, since no token is shorter than a byte); a scan, not a parse."""
    n = 0
    for field in _TEXT_FIELDS:
        i = payload.find(field)
        if i < 0:
            continue
        start = end = i + len(field)
        while (end := payload.find(b'"', end)) > 0 and payload[end - 1] == 0x5C:  # an escaped quote
            end += 1
        n += (end if end > 0 else len(payload)) - start
    return n


def completion_from_chunks(chunks: list[dict[str, Any]], usage: dict[str, Any]) -> dict[str, Any] | None:
    first = chunks[0]
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for ch in chunk.get("choices") or ():
            delta = ch.get("delta") or {}
            if delta.get("tool_calls") or delta.get("function_call"):
                return None  # tool calls are not cached (and cannot be merged reliably)
            slot = choices.setdefault(ch.get("index", 0), {"role": "assistant", "content": "",
                                                            "finish": None})
            if delta.get("role"):
                slot["role"] = delta["role"]
            if delta.get("content"):
                slot["content"] += delta["content"]
            if ch.get("finish_reason"):
                slot["finish"] = ch["finish_reason"]
    if not choices or any(c["finish"] is None for c in choices.values()):
        return None  # an unfinished answer is not an answer to replay
    out = {
        "id": first.get("id", ""),
        "object": "chat.completion",
        "created": first.get("created", 0),
        "model": first.get("model", ""),
        "choices": [
            {"index": i, "message": {"role": c["role"], "content": c["content"]},
             "finish_reason": c["finish"], "logprobs": None}
            for i, c in sorted(choices.items())
        ],
        "usage": usage,
    }
    if first.get("system_fingerprint"):
        out["system_fingerprint"] = first["system_fingerprint"]
    return out


def replay_chunks(completion: dict[str, Any], include_usage: bool) -> list[bytes]:
    """A stored completion as SSE events: content per choice, finish, usage if asked, [DONE]."""
    base = {k: completion.get(k) for k in ("id", "created", "model")}
    base["object"] = "chat.completion.chunk"
    if completion.get("system_fingerprint"):
        base["system_fingerprint"] = completion["system_fingerprint"]
    events = []
    for ch in completion.get("choices") or ():
        msg = ch.get("message") or {}
        delta = {"role": msg.get("role", "assistant"), "content": msg.get("content") or ""}
        i = ch.get("index", 0)
        finish = ch.get("finish_reason") or "stop"
        for d, f in ((delta, None), ({}, finish)):
            choice = {"index": i, "delta": d, "finish_reason": f}
            events.append(sse(orjson.dumps({**base, "choices": [choice]})))
    if include_usage and completion.get("usage"):
        events.append(sse(orjson.dumps({**base, "choices": [], "usage": completion["usage"]})))
    events.append(DONE)
    return events


# --- cache entries: one JSON header line (who served it) + the completion's bytes -----------------

ENTRY_VERSION = 1


def encode_entry(provider: str, model: str, body: bytes) -> bytes:
    return orjson.dumps({"v": ENTRY_VERSION, "provider": provider, "model": model}) + b"\n" + body


def decode_entry(raw: bytes) -> tuple[dict[str, Any], bytes] | None:
    """(header, completion bytes), or None for anything this gateway did not write."""
    head, sep, body = raw.partition(b"\n")
    if not sep or not body:
        return None
    try:
        meta = orjson.loads(head)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(meta, dict) or meta.get("v") != ENTRY_VERSION:
        return None
    return meta, body
