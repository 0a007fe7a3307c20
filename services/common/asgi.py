"""The services' hot routes as plain ASGI in front of FastAPI: one dispatch, one body reader.

Each service serves its few hot routes (the gateway's and the router's model APIs, the cache's
entry GETs and PUTs) as plain ASGI handlers, because FastAPI's middleware stack, routing and
Request/Response objects cost on every request (issue 8). `FastPathApp` is FastAPI with those
routes in front: its `__call__` looks the request's path up in a dict and hands a match straight
to its handler. Everything else, including another method on a fast route's path (the service's
own 405), goes to FastAPI unchanged, so the framework's 404/405/422 and error handlers still
answer it.

`read_body` is the handlers' one body reader: it raises `ClientGone` when the client leaves
(uvicorn's disconnect, or services/common/http_limits.py's read timeout) and `BodyTooLarge` past an
optional limit, judged by Content-Length before anything is read and by counting while reading (a
chunked body has none), so an oversized body is never held in memory. Each service maps
`BodyTooLarge` to its own 413. A Content-Length that disagrees with the bytes sent never gets here:
uvicorn frames the body by it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI
from starlette import types

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
# (scope, receive, send), then a template route's path parameters as strings, in path order
Handler = Callable[..., Awaitable[None]]


class ClientGone(Exception):
    """The client disconnected before its request body was read."""


class BodyTooLarge(Exception):
    """The request body is larger than the reader's limit (or its Content-Length says it is)."""


async def read_body(receive: Receive, limit: int | None = None, content_length: str | None = None) -> bytes:
    """The whole request body; `ClientGone` if the client leaves first, `BodyTooLarge` past `limit`."""
    if limit is not None and content_length and content_length.isdigit() and int(content_length) > limit:
        raise BodyTooLarge()
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone()
    body: bytes = message.get("body", b"")
    if limit is not None and len(body) > limit:
        raise BodyTooLarge()
    if not message.get("more_body", False):
        return body  # the common case: the whole body in one message, nothing joined
    chunks = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if limit is not None and size > limit:
                raise BodyTooLarge()
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class FastPathApp(FastAPI):
    """FastAPI, except that the requests of `fast_routes` go straight to their ASGI handlers.

    `fast_routes` maps (method, path) to a handler called with (scope, receive, send). A path is
    either exact ("/v1/chat/completions") or a prefix followed only by whole-segment parameters
    ("/v1/cache/{tenant}/{key}"), whose handler also gets each segment, in order, after `send`:
    non-empty and without a "/", as Starlette's `{name}` matches. A request that no fast route
    matches, another method on a fast route's path included, is FastAPI's. FastAPI never sees the
    fast routes: a service that wants them in its OpenAPI document or its 405's `allow` registers
    them with FastAPI too.

    The exact routes share one method (POST for the model APIs): the dispatch is then what each
    service's own `__call__` was, one string compare and one dict lookup on the path. Hashing the
    method too, or testing it against a tuple, costs a measurable part of that.
    """

    def __init__(self, fast_routes: Mapping[tuple[str, str], Handler], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._fast_method = ""  # the exact routes' method ("" if none: it never matches)
        self._fast_paths: dict[str, Handler] = {}
        templates: dict[tuple[str, int], dict[str, Handler]] = {}  # (prefix, parameters) -> method -> handler
        for (method, path), handler in fast_routes.items():
            if "{" in path:
                templates.setdefault(_template(path), {})[method] = handler
                continue
            if self._fast_method not in ("", method):
                raise ValueError(f"exact fast routes share one method: {path!r} is {method}, "
                                 f"not {self._fast_method}")
            self._fast_method = method
            self._fast_paths[path] = handler
        self._fast_templates = tuple((prefix, n, methods) for (prefix, n), methods in templates.items())

    async def __call__(self, scope: types.Scope, receive: types.Receive, send: types.Send) -> None:
        if scope["type"] == "http":
            if scope["method"] == self._fast_method:
                handler = self._fast_paths.get(scope["path"])
                if handler is not None:
                    await handler(scope, receive, send)
                    return
            if self._fast_templates:
                path = scope["path"]
                for prefix, count, methods in self._fast_templates:
                    if path.startswith(prefix) and (found := methods.get(scope["method"])) is not None:
                        params = path[len(prefix):].split("/", count)  # at most count + 1 parts
                        if len(params) == count and "" not in params:
                            await found(scope, receive, send, *params)
                            return
        await super().__call__(scope, receive, send)


def _template(path: str) -> tuple[str, int]:
    """("/v1/cache/", 2) for "/v1/cache/{tenant}/{key}": the prefix, and how many parameters follow."""
    prefix = path[:path.index("{")]
    params = path[len(prefix):].split("/")
    if not prefix.endswith("/") or not all(re.fullmatch(r"\{\w+\}", p) for p in params):
        raise ValueError(f"a fast route's parameters must be whole segments ending its path: {path!r}")
    return prefix, len(params)
