"""Cache keys and cacheability for chat completions: plain Python, no HTTP.

A key is the SHA-256 of the tenant, the model and the request normalized to canonical JSON
(orjson, sorted keys, nulls dropped, integral floats written as integers). Every parameter takes
part except the ones that cannot change the answer's content: `stream` and `stream_options` (a
completed stream is replayed as a stream, so both shapes share an entry) and `user` (a label for
abuse tracking). Unknown parameters are included on purpose: a parameter we do not know might
change the answer, and a missed hit costs far less than a wrong one.

The tenant is hashed in, length-prefixed, so two tenants never share an entry even for identical
requests, and no tenant name can be crafted to collide with another tenant's keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from services.common.config import Cache

# parameters that do not change the answer's content
EXCLUDED_PARAMS = frozenset({"stream", "stream_options", "user"})
OPT_OUT_DIRECTIVES = frozenset({"no-cache", "no-store"})


# integral floats below this are exact integers; above it (up to 1e308) they stay floats, because
# orjson cannot write integers past 64 bits
_EXACT_INT = 2**53


def _canonical_scalar(value: Any) -> Any:
    # 1 and 1.0 are the same temperature; bool is an int subclass and must stay a bool
    if isinstance(value, float) and value.is_integer() and -_EXACT_INT < value < _EXACT_INT:
        return int(value)
    return value


def normalize(body: Mapping[str, Any]) -> bytes:
    """Canonical bytes of the answer-changing part of a request (what the key hashes)."""
    params = {
        k: _canonical_scalar(v) for k, v in body.items() if k not in EXCLUDED_PARAMS and v is not None
    }
    # OPT_SORT_KEYS sorts nested objects too (messages, tools, response_format)
    return orjson.dumps(params, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def cache_key(tenant: str, body: Mapping[str, Any]) -> str:
    """SHA-256 hex of tenant, model and the normalized request."""
    h = hashlib.sha256()
    for part in (tenant.encode(), str(body.get("model", "")).encode()):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    h.update(normalize(body))
    return h.hexdigest()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)  # starlette's Headers are case-insensitive already
    if value is None:
        for k, v in headers.items():
            if k.lower() == name:
                return v
    return value


def client_opted_out(headers: Mapping[str, str]) -> bool:
    """`Cache-Control: no-cache` or `no-store` on the request (any case, among other directives)."""
    value = _header(headers, "cache-control")
    if not value:
        return False
    directives = {d.split("=", 1)[0].strip().lower() for d in value.split(",")}
    return not directives.isdisjoint(OPT_OUT_DIRECTIVES)


def _uses_tools(body: Mapping[str, Any]) -> bool:
    # with tools offered the model may call them (default tool_choice "auto"): an answer that depends
    # on the caller's side effects is not replayed. Legacy `functions` / `function_call` likewise.
    if body.get("tools") and body.get("tool_choice", "auto") != "none":
        return True
    return bool(body.get("functions")) and body.get("function_call", "auto") != "none"


def cacheable(body: Mapping[str, Any], request_headers: Mapping[str, str], cache_cfg: Cache | None) -> bool:
    """Whether this request may be answered from, and stored in, the cache."""
    cfg = cache_cfg if cache_cfg is not None else Cache()
    if not cfg.enabled or client_opted_out(request_headers):
        return False
    if body.get("stream") and not cfg.cache_streaming:
        return False
    n = body.get("n")
    if isinstance(n, int | float) and n > 1:
        return False
    return not _uses_tools(body)
