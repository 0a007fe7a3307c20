"""What the load generators send: one request shape shared by the Python client and wrk's Lua.

Bodies are built from a fixed prefix, a request id and a fixed suffix, so the miss path can make
every request unique (the id lands in the user message, which is part of the cache key) while the
hit path repeats one id. The same bytes go to the fake provider directly and through QLens.
"""

from __future__ import annotations

MODEL = "gpt-4"
MAX_TOKENS = 16
BODY_PREFIX = '{"model":"' + MODEL + '","messages":[{"role":"user","content":"bench request '
BODY_SUFFIX = ': answer briefly"}],"max_tokens":' + str(MAX_TOKENS)
STREAM_FLAG = ',"stream":true'
PAD_WORD = " context"


def body(request_id: str, stream: bool = False, size: int = 0) -> bytes:
    """One request. `size` > 0 pads the user message with words so the body is `size` bytes (a
    long RAG-style prompt; bench.growth). The request id may carry the fake provider's
    `bench-chunks=N` / `bench-gap-ms=G` markers."""
    out = (BODY_PREFIX + request_id + BODY_SUFFIX + (STREAM_FLAG if stream else "") + "}").encode()
    if size > len(out):
        pad = size - len(out)
        words = (PAD_WORD * (pad // len(PAD_WORD) + 1))[:pad]
        out = body(request_id + words, stream)
    return out


def suffix(stream: bool) -> str:
    """Everything after the request id: what wrk appends to its own ids."""
    return BODY_SUFFIX + (STREAM_FLAG if stream else "") + "}"


def headers(api_key: str | None) -> dict[str, str]:
    out = {"Content-Type": "application/json"}
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    return out
