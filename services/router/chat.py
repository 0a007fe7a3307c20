"""POST /v1/chat/completions and /v1/embeddings: the router's hot path, served as plain ASGI.

Plain ASGI rather than a Starlette route because every layer costs on every request (issue 8):
FastAPI's middleware stack, the Request object and Starlette's StreamingResponse (a task group and
a disconnect listener per stream) are skipped. The body is parsed with orjson, answers are sent as
the bytes the provider produced, and metrics and the one log line are written here, once.

The gateway has validated the request; the router only checks what it needs (a JSON object with a
`model` and `messages`), so a malformed body is still a 400 and never a 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from services.common import tracing
from services.common.asgi import ClientGone, Receive, Send, read_body
from services.common.errors import APIError
from services.common.logging import log_line
from services.common.metrics import REQUEST_DURATION, REQUESTS
from services.router.routing import Relay, Router, Served
from services.router.telemetry import child

SERVICE = "router"
CHAT_ROUTE = "/v1/chat/completions"
EMBEDDINGS_ROUTE = "/v1/embeddings"
_JSON = b"application/json"
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]

INTERNAL_ERROR = APIError(500, "internal error in the router", code="internal_error")


class ChatCompletions:
    """The ASGI handler of a model route (chat, or with `embeddings` the embeddings route); one per route."""

    def __init__(self, router: Router, logger: logging.Logger, embeddings: bool = False) -> None:
        self.router = router
        self.logger = logger
        self.route = EMBEDDINGS_ROUTE if embeddings else CHAT_ROUTE
        self._parse = parse_embeddings if embeddings else parse_body
        self._complete = router.embed if embeddings else router.complete

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if not tracing.ENABLED:
            await self._handle(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        with tracing.server_span("POST " + self.route, headers,
                                 {"http.request.method": "POST", "http.route": self.route}):
            await self._handle(scope, receive, send)

    async def _handle(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = tenant = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")
            elif name == b"x-qlens-tenant":
                tenant = value.decode("latin-1")
        model = None
        streaming = False  # response headers sent: an error can no longer become a response
        try:
            body = self._parse(await read_body(receive))
            model = body["model"]
            deadline = self.router.deadline()
            if body.get("stream") is True and self.route == CHAT_ROUTE:
                relay = await self.router.stream(body, deadline)
                relay.on_close = lambda r: self._done(
                    200, started, request_id, tenant, model, r.served, None, r.outcome
                )
                headers = _SSE_HEADERS + served_headers(relay.served, request_id)
                streaming = True
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await _relay(relay, receive, send)
                return
            completion, served = await self._complete(body, deadline)
            headers = served_headers(served, request_id)
            headers.append((b"x-qlens-upstream-ms", f"{served.upstream_seconds * 1000:.3f}".encode()))
            self._done(200, started, request_id, tenant, model, served)
            await _answer(send, 200, completion.body, headers)
        except APIError as exc:
            self._done(exc.status, started, request_id, tenant, model, None, exc.code)
            await _answer(send, exc.status, exc.to_bytes(), error_headers(exc, request_id))
        except ClientGone:
            self._done(499, started, request_id, tenant, model, None, "client_gone")
        except Exception as exc:
            self.logger.error("unhandled error", exc_info=exc, extra={"fields": {"path": self.route}})
            if streaming:
                raise  # uvicorn closes the connection: the client sees a broken stream
            self._done(500, started, request_id, tenant, model, None, INTERNAL_ERROR.code)
            await _answer(send, 500, INTERNAL_ERROR.to_bytes(), [])

    def _done(
        self,
        status: int,
        started: float,
        request_id: str,
        tenant: str,
        model: str | None,
        served: Served | None,
        error: str | None = None,
        stream_outcome: str | None = None,
    ) -> None:
        """Metrics and the one log line of a request (never the prompt, never a key)."""
        seconds = time.perf_counter() - started
        child(REQUESTS, SERVICE, self.route, str(status)).inc()
        child(REQUEST_DURATION, SERVICE, self.route).observe(seconds)
        fields: dict[str, Any] = {
            "request_id": request_id,
            "tenant": tenant,
            "model": model,
            "status": status,
            "latency_ms": round(seconds * 1000, 3),
        }
        if served is not None:
            fields.update(
                provider=served.deployment.label, served_model=served.model, attempts=served.attempts
            )
            if served.fallback:
                fields["fallback_from"] = served.requested
        if error:
            fields["error"] = error
        if stream_outcome:
            fields["stream"] = stream_outcome
        if tracing.ENABLED:
            fields["trace_id"] = tracing.trace_id()
            tracing.set_attributes({"http.response.status_code": status, "qlens.model": model or ""})
        log_line(self.logger, "request", **fields)  # one write(2), not the logging machinery


async def _relay(relay: Relay, receive: Receive, send: Send) -> None:
    """Send the stream's events as they arrive; stop the provider's stream if the client leaves.

    uvicorn drops writes to a departed client silently, so a task listens for its disconnect
    (one task per stream, where StreamingResponse starts a task group and two).
    """

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        relay.abort()

    async def event(chunk: bytes) -> None:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        await relay.pump(event)
    finally:
        watcher.cancel()  # before the last send: completing the response wakes its receive() too
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"content-type", _JSON), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _parse_model(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise APIError(400, "the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_request")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise APIError(400, "`model` is required and must be a string", code="invalid_request", param="model")
    return body


def parse_embeddings(raw: bytes) -> dict[str, Any]:
    body = _parse_model(raw)
    if not isinstance(body.get("input"), str | list) or not body["input"]:
        raise APIError(400, "`input` must be a string or a non-empty array", code="invalid_request",
                       param="input")
    return body


def parse_body(raw: bytes) -> dict[str, Any]:
    body = _parse_model(raw)
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise APIError(400, "`messages` must be a non-empty array", code="invalid_request", param="messages")
    return body


def served_headers(served: Served, request_id: str) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"x-qlens-provider", served.deployment.label.encode("latin-1")),
        (b"x-qlens-model", served.model.encode("latin-1")),
    ]
    if served.fallback:
        headers.append((b"x-qlens-fallback", served.requested.encode("latin-1")))
        if served.reason:  # a context-window or content-policy fallback
            headers.append((b"x-qlens-fallback-reason", served.reason.encode("latin-1")))
    if request_id:
        headers.append((b"x-request-id", request_id.encode("latin-1")))
    return headers


def error_headers(exc: APIError, request_id: str) -> list[tuple[bytes, bytes]]:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    if request_id:
        headers.append((b"x-request-id", request_id.encode("latin-1")))
    return headers
