"""POST /v1/chat/completions (and the other model APIs): the gateway's hot path, served as plain ASGI.

auth -> read the body (size-capped) -> validate -> cache lookup (tenant-scoped key) -> hit: answer
at cost 0 -> miss: reserve the worst-case cost -> router -> settle to the actual usage (release
on failure) -> store in the cache in the background -> metrics and one JSON log line (never a
prompt or a key).

Plain ASGI rather than a FastAPI route because every layer costs on every request (issue 8:
FastAPI's middleware, routing and dependency machinery were ~20% of the gateway's CPU): headers,
metrics and the log line are done here, once. The client's JSON bytes go to the router unchanged
unless the gateway has to add to them, the router's answer comes back as bytes (parsed only for
its usage), and streams are relayed event by event as they arrive.

Every model API takes this one path: an `Api` says only what differs (how its request is validated,
what it may cost, which router route serves it, and how the router's answer looks to its client):
chat completions here, embeddings (embeddings.py) and the Responses API (responses.py), which is
translated into a chat completion on the way in and back on the way out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, Protocol
from urllib.parse import quote

import orjson

from services.common import tracing
from services.common.asgi import BodyTooLarge, ClientGone, Receive, Send, read_body
from services.common.config import CatalogModel, ServiceConfig
from services.common.errors import APIError
from services.common.http11 import PeerBroken, PeerError, PeerTimeout, PeerUnavailable, StreamReply
from services.common.logging import log_event, log_line, request_id
from services.common.metrics import (
    CACHE_REQUESTS,
    GATEWAY_OVERHEAD,
    REQUEST_DURATION,
    REQUESTS,
    TENANT_COST,
    TENANT_TOKENS,
    TOKENS,
    TenantLabel,
)
from services.gateway.auth import Authenticator, Caller
from services.gateway.budget import (
    DEFAULT_MAX_COMPLETION_TOKENS,
    Budget,
    BudgetExceeded,
    BudgetUnavailable,
    Reservation,
    actual_cost,
    estimate_prompt_tokens,
    worst_case_cost,
)
from services.gateway.cachekey import cache_key, cacheable
from services.gateway.catalog import Catalog
from services.gateway.peers import Cache, Router
from services.gateway.schema import ChatCompletionRequest, json_error, validate_request
from services.gateway.streams import (
    SSESplitter,
    StreamRelay,
    decode_entry,
    encode_entry,
    error_event,
    replay_chunks,
)

SERVICE = "gateway"
ROUTE = "/v1/chat/completions"
TOKEN_PARAMS = ("max_tokens", "max_completion_tokens")
# router headers the client sees too: which model served, and whether it was a fallback
_PASSED_HEADERS = ("x-qlens-model", "x-qlens-fallback", "x-qlens-fallback-reason")
_JSON = b"application/json"
_SSE = b"text/event-stream"
_SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]

_NO_FIELDS: dict[str, Any] = {}

log = logging.getLogger("qlens.gateway")

INTERNAL_ERROR = APIError(500, "The server had an error while processing your request.",
                          code="internal_error")


class Answered(Enum):
    """The cache lookup answered the request itself (a hit)."""

    ANSWERED = "answered"


ANSWERED = Answered.ANSWERED


@dataclass(slots=True)
class Exchange:
    """What one request has learned so far: for its headers, metrics and log line."""

    rid: str
    start: float
    tenant: str = "-"
    user: str = "-"
    model: str | None = None
    provider: str | None = None
    cache: str = "bypass"
    upstream: float = 0.0  # seconds in the provider (for a stream: until the router's headers)
    stream: bool = False
    fixed_overhead: float | None = None  # a stream's overhead, fixed when its headers go out
    started: bool = False  # response headers sent: an error can no longer become a response

    def overhead(self) -> float:
        if self.fixed_overhead is not None:
            return self.fixed_overhead
        return max(time.perf_counter() - self.start - self.upstream, 0.0)

    def headers(self, content_type: bytes, extra: list[tuple[bytes, bytes]] | None = None,
                ) -> list[tuple[bytes, bytes]]:
        h = [(b"content-type", content_type), (b"x-request-id", self.rid.encode()),
             (b"x-qlens-cache", self.cache.encode()),
             (b"x-qlens-overhead-ms", f"{self.overhead() * 1000:.3f}".encode())]
        if self.provider:
            h.append((b"x-qlens-provider", self.provider.encode("latin-1")))
        if extra:
            h.extend(extra)
        return h


@dataclass(frozen=True, slots=True)
class Plan:
    """What a request may cost at worst, and the body to forward when it is not the client's own."""

    prompt_tokens: int
    completion_tokens: int
    body: dict[str, Any] | None = None


class StreamView(Protocol):
    """Turns the chat-completion SSE events the gateway relays into the client's API's events."""

    def head(self) -> bytes: ...

    async def feed(self, event: bytes) -> bytes: ...


class Api(Protocol):
    """What one model API adds to the shared path."""

    route: str  # the client's route: metrics label and log field
    router_path: str  # the router's route that serves it
    kind: str  # the model kind it serves (CatalogModel.kind)

    def validate(self, data: Any) -> Any:
        """The request model (with .model, .user, .stream, .n, .wants_usage_chunk), or APIError 400."""

    async def prepare(self, data: dict[str, Any], req: Any, caller: Caller) -> dict[str, Any]:
        """The body in the router's shape (what is cached, priced and forwarded)."""

    def plan(self, req: Any, data: dict[str, Any], model: CatalogModel) -> Plan: ...

    async def present(self, req: Any, body: bytes, caller: Caller) -> bytes:
        """The router's (or the cache's) answer as the client's."""

    def view(self, req: Any, caller: Caller) -> StreamView | None:
        """None: the router's events are the client's."""


def output_plan(data: dict[str, Any], n: int | None, model: CatalogModel, prompt_tokens: int) -> Plan:
    """The output cap of a generating request: the client's, bounded by the model's
    `maxOutputTokens`, else that cap (or the gateway default). The body forwarded carries it, so
    the provider cannot answer past what was reserved (the router names it as each model wants)."""
    asked = next((v for v in (data.get("max_completion_tokens"), data.get("max_tokens"))
                  if isinstance(v, int) and v > 0), None)
    ceiling = model.max_output_tokens
    cap = asked if asked is not None else (ceiling or DEFAULT_MAX_COMPLETION_TOKENS)
    forward = None
    if asked is None or (ceiling is not None and asked > ceiling):
        cap = min(cap, ceiling) if ceiling else cap
        forward = {k: v for k, v in data.items() if k not in TOKEN_PARAMS}
        forward[model.token_parameter] = cap
    return Plan(prompt_tokens, cap * (n or 1), forward)


class ChatApi:
    route = router_path = ROUTE
    kind = "chat"

    def validate(self, data: Any) -> ChatCompletionRequest:
        return validate_request(data)

    async def prepare(self, data: dict[str, Any], req: Any, caller: Caller) -> dict[str, Any]:
        return data

    def plan(self, req: ChatCompletionRequest, data: dict[str, Any], model: CatalogModel) -> Plan:
        prompt = estimate_prompt_tokens(data["messages"], data.get("tools"))
        return output_plan(data, req.n, model, prompt)

    async def present(self, req: Any, body: bytes, caller: Caller) -> bytes:
        return body

    def view(self, req: Any, caller: Caller) -> None:
        return None


class Endpoint:
    """The ASGI handler of one model API; one instance per API, sharing the gateway's peers and budget."""

    def __init__(self, config: ServiceConfig, catalog: Catalog, auth: Authenticator, router: Router,
                 cache: Cache, budget: Callable[[], Budget], api: Api | None = None) -> None:
        self.api: Api = api or ChatApi()
        self.route = self.api.route
        self.config = config
        self.catalog = catalog
        self.auth = auth
        self.router = router
        self.cache = cache
        self._budget = budget
        self.cache_on = config.cache.enabled
        self.max_body = config.gateway.max_body_bytes
        self._tasks: set[asyncio.Task] = set()
        # metric children looked up once, not per request
        self._cache_metric = {r: CACHE_REQUESTS.labels(r) for r in ("hit", "miss", "bypass")}
        self._duration = REQUEST_DURATION.labels(SERVICE, self.route)
        self._requests: dict[int, Any] = {}
        self._tenant_label = TenantLabel(config.observability.tenant_labels)
        self._span = ("POST " + self.route, {"http.request.method": "POST", "http.route": self.route})

    @property
    def budget(self) -> Budget:
        return self._budget()

    async def drain(self, timeout: float = 5.0) -> None:
        """Let background settles and stream bookkeeping finish (at shutdown)."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the request -------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        ex = Exchange(request_id(headers.get("x-request-id")), time.perf_counter())
        if not tracing.ENABLED:
            await self._serve_safely(headers, receive, send, ex)
            return
        with tracing.server_span(self._span[0], headers, self._span[1]):
            await self._serve_safely(headers, receive, send, ex)

    async def _serve_safely(self, headers: dict[str, str], receive: Receive, send: Send,
                            ex: Exchange) -> None:
        try:
            await self._serve(headers, receive, send, ex)
        except APIError as exc:
            if not ex.started:
                extra = [(k.encode(), v.encode("latin-1")) for k, v in exc.headers.items()]
                await self._answer(send, ex, exc.status, exc.to_bytes(), extra)
        except ClientGone:
            self._record(ex, 499)
        except Exception:
            log.exception("unhandled error", extra={"fields": {"request_id": ex.rid, "route": self.route}})
            if not ex.started:
                await self._answer(send, ex, 500, INTERNAL_ERROR.to_bytes())

    async def _serve(self, headers: dict[str, str], receive: Receive, send: Send, ex: Exchange) -> None:
        with tracing.span("gateway.auth"):
            entry = self.auth.check(headers.get("authorization"))
        try:  # refused past gateway.maxBodyBytes, by Content-Length or while reading a chunked body
            raw = await read_body(receive, self.max_body, headers.get("content-length"))
        except BodyTooLarge:
            raise self._too_large() from None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise json_error(exc, raw) from None
        req = self.api.validate(data)
        caller = self.auth.caller_for(entry, req.user)
        ex.tenant, ex.user, ex.model, ex.stream = caller.tenant, caller.user, req.model, bool(req.stream)
        if req.model not in self.catalog:
            raise unknown_model(req.model)
        self.auth.check_model(entry, req.model)
        model = self.catalog.model(req.model)
        if model.kind != self.api.kind:
            raise wrong_kind(req.model, model.kind, self.route)
        prepared = await self.api.prepare(data, req, caller)
        if prepared is not data:
            data, raw = prepared, b""  # forwarded re-encoded

        key = await self._lookup(send, ex, req, data, headers, caller)
        if key is ANSWERED:
            return  # answered from the cache
        reservation, body, plan = await self._reserve(req, data, raw, caller, model)
        rheaders = {"content-type": "application/json", "x-request-id": ex.rid,
                    "x-qlens-tenant": caller.tenant}
        if req.stream:
            await self._stream(receive, send, ex, req, body, rheaders, reservation, key, caller, plan)
        else:
            await self._complete(send, ex, req, body, rheaders, reservation, key, caller)

    def _too_large(self) -> APIError:
        return APIError(413, f"Request body too large: the limit is {self.max_body} bytes "
                             "(gateway.maxBodyBytes).", code="request_too_large")

    async def _lookup(self, send: Send, ex: Exchange, req: Any, data: dict[str, Any],
                      headers: dict[str, str], caller: Caller) -> str | None | Literal[Answered.ANSWERED]:
        """The cache key to store under after a miss (None: do not store), or ANSWERED (a hit)."""
        if not (self.cache_on and cacheable(data, headers, self.config.cache)):
            self._cache_metric["bypass"].inc()
            return None
        key = cache_key(caller.tenant, data)
        with tracing.span("gateway.cache.get", kind="client") as span:
            got = await self.cache.get(quote(caller.tenant, safe=""), key)
            if span is not None:
                span.set_attribute("qlens.cache", "bypass" if got is None else "hit" if got else "miss")
        if got is None:  # unreachable: keep serving without it, and do not try to store either
            self._cache_metric["bypass"].inc()
            return None
        entry = decode_entry(got) if got else None
        if entry is None:
            ex.cache = "miss"
            self._cache_metric["miss"].inc()
            return key
        ex.cache = "hit"
        self._cache_metric["hit"].inc()
        self._background(self.budget.record_hit(caller.tenant, caller.user, req.model))
        meta, body = entry
        ex.provider = meta.get("provider") or None
        extra = [(b"x-qlens-model", str(meta.get("model") or req.model).encode("latin-1"))]
        if req.stream:
            events = replay_chunks(orjson.loads(body), req.wants_usage_chunk)
            view = self.api.view(req, caller)
            if view is not None:
                events = [view.head()] + [await view.feed(e) for e in events]
            await self._answer(send, ex, 200, b"".join(events), extra + _SSE_HEADERS, _SSE)
        else:
            await self._answer(send, ex, 200, await self.api.present(req, body, caller), extra)
        return ANSWERED

    async def _reserve(self, req: Any, data: dict[str, Any], raw: bytes, caller: Caller,
                       model: CatalogModel) -> tuple[Reservation, bytes, Plan]:
        """Reserve the worst case; the body to forward (carrying the output cap the reservation
        assumed, so the provider cannot answer past what was reserved)."""
        plan = self.api.plan(req, data, model)
        forward = plan.body
        if req.stream:
            # the budget settles from the usage chunk: always ask for it (dropped later if unasked)
            forward = forward or dict(data)
            forward["stream_options"] = {**(data.get("stream_options") or {}), "include_usage": True}
        # the client's own bytes unless something was added (raw is empty when prepare rewrote it)
        body = raw if forward is None and raw else orjson.dumps(forward if forward is not None else data)
        pricing = self.catalog.reservation_pricing(req.model)
        prompt, completion = plan.prompt_tokens, plan.completion_tokens
        worst = worst_case_cost(pricing, prompt, completion)
        try:
            with tracing.span("gateway.budget.reserve"):
                reservation = await self.budget.reserve(
                    caller.tenant, caller.user, worst, tokens=prompt + completion, key=caller.key,
                    key_limits=caller.key_limits, model=req.model)
        except BudgetExceeded as exc:
            what = "Budget exceeded" if exc.code == "budget_exceeded" else "Rate limit reached"
            raise APIError(429, f"{what}: {exc}.", code=exc.code, headers=exc.headers) from None
        except BudgetUnavailable:
            raise APIError(503, "The budget store is unavailable and this environment refuses requests "
                                "it cannot account for (costControls.onStoreFailure: failClosed). "
                                "Retry shortly.", code="budget_unavailable") from None
        return reservation, body, plan

    async def _complete(self, send: Send, ex: Exchange, req: Any, body: bytes, rheaders: dict[str, str],
                        reservation: Reservation, key: str | None, caller: Caller) -> None:
        t0 = time.perf_counter()
        try:
            with tracing.span("gateway.router", kind="client"):
                tracing.inject(rheaders)
                reply = await self.router.complete(body, rheaders, self.api.router_path)
        except BaseException as exc:
            self._background(self._release(reservation))
            if isinstance(exc, PeerError):
                raise upstream_error(exc) from None
            raise
        uh = reply.headers
        ex.provider = uh.get("x-qlens-provider")
        ex.upstream = upstream_seconds(uh.get("x-qlens-upstream-ms"), time.perf_counter() - t0)
        extra = passed_headers(uh, reservation)
        if reply.status != 200:
            await self._release(reservation)
            status, rbody = router_error(reply.status, reply.body)
            await self._answer(send, ex, status, rbody, extra)
            return
        served = uh.get("x-qlens-model") or req.model
        await self._settle(reservation, served, usage_of(reply.body))
        if key is not None:
            self.cache.put_later(quote(ex.tenant, safe=""), key,
                                 encode_entry(ex.provider or "", served, reply.body))
        await self._answer(send, ex, 200, await self.api.present(req, reply.body, caller), extra)

    async def _stream(self, receive: Receive, send: Send, ex: Exchange, req: Any, body: bytes,
                      rheaders: dict[str, str], reservation: Reservation, key: str | None,
                      caller: Caller, plan: Plan) -> None:
        t0 = time.perf_counter()
        try:
            with tracing.span("gateway.router", kind="client"):
                tracing.inject(rheaders)
                up = await self.router.stream(body, rheaders, self.api.router_path)
        except BaseException as exc:
            self._background(self._release(reservation))
            if isinstance(exc, PeerError):
                raise upstream_error(exc) from None
            raise
        # the router sends a stream's headers once the provider has started: until then it is
        # provider time; what the gateway did before and does after is the overhead
        ex.upstream = time.perf_counter() - t0
        ex.provider = up.headers.get("x-qlens-provider")
        extra = passed_headers(up.headers, reservation)
        if up.status != 200:
            try:
                rbody = await up.read()
            except PeerError:
                rbody = b""
            up.release()
            await self._release(reservation)
            status, rbody = router_error(up.status, rbody)
            await self._answer(send, ex, status, rbody, extra)
            return
        served = up.headers.get("x-qlens-model") or req.model
        relay = StreamRelay(forward_usage=req.wants_usage_chunk, collect=key is not None)
        ex.fixed_overhead = ex.overhead()
        GATEWAY_OVERHEAD.observe(ex.fixed_overhead)
        ex.started = True
        headers = ex.headers(_SSE, extra + _SSE_HEADERS)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        status = await self._relay(receive, send, up, relay, self.api.view(req, caller))
        # a stream without usage (the client left, the provider broke off) is charged for what was
        # relayed: the prompt's bound and the relayed text's bytes (each at most a token), capped
        usage = relay.usage or {"prompt_tokens": plan.prompt_tokens,
                                "completion_tokens": min(relay.relayed, plan.completion_tokens)}
        self._background(self._settle(reservation, served, usage))
        if key is not None and status == 200:
            completion = relay.completion()
            if completion is not None:
                self.cache.put_later(quote(ex.tenant, safe=""), key,
                                     encode_entry(ex.provider or "", served, orjson.dumps(completion)))
        self._record(ex, status)

    async def _relay(self, receive: Receive, send: Send, up: StreamReply, relay: StreamRelay,
                     view: StreamView | None) -> int:
        """Forward the router's events as they arrive; the status for the log (499: client left)."""
        gone = asyncio.Event()

        async def emit(events: list[bytes]) -> None:
            if view is not None:
                events = [await view.feed(e) for e in events]
            await send({"type": "http.response.body", "body": b"".join(events), "more_body": True})

        async def watch() -> None:  # uvicorn drops writes to a departed client silently: listen
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            up.close()  # wakes the reader below with PeerBroken; the provider call stops too

        watcher = asyncio.get_running_loop().create_task(watch())
        status = 200
        try:
            if view is not None:
                await send({"type": "http.response.body", "body": view.head(), "more_body": True})
            splitter = SSESplitter()
            async for data in up.chunks():
                out = [b for b in map(relay.event, splitter.feed(data)) if b is not None]
                if out:
                    await emit(out)
            tail = splitter.rest.strip()
            if tail and (last := relay.event(tail)) is not None:
                await emit([last])
            if not relay.done and not relay.failed:
                status = 502
                await emit([error_event(APIError(502, "The upstream stream ended before it was complete.",
                                                 code="upstream_error").to_bytes())])
            up.release()
        except PeerError as exc:
            up.close()
            if gone.is_set():
                return 499
            err = upstream_error(exc)
            status = err.status
            await emit([error_event(err.to_bytes())])
        except BaseException:
            up.close()
            raise
        finally:
            watcher.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return 502 if relay.failed and status == 200 else status

    # --- budget ------------------------------------------------------------------------------

    async def _settle(self, reservation: Reservation, served: str, usage: dict[str, Any] | None) -> None:
        """Charge the actual cost (at the served model's price); without usage, keep the reservation."""
        try:
            with tracing.span("gateway.budget.settle"):
                known = served in self.catalog
                model = served if known else "other"
                if usage is None:
                    await self.budget.settle(reservation, reservation.usd, model=model)
                    return
                prompt = int(usage.get("prompt_tokens") or 0)
                completion = int(usage.get("completion_tokens") or 0)
                pricing = self.catalog.pricing(served) if known else self.catalog.reservation_pricing(served)
                cost = actual_cost(pricing, prompt, completion)
                await self.budget.settle(reservation, cost, input_tokens=prompt, output_tokens=completion,
                                         model=model)
            TOKENS.labels(model, "prompt").inc(prompt)
            TOKENS.labels(model, "completion").inc(completion)
            tenant = self._tenant_label(reservation.tenant)
            TENANT_TOKENS.labels(tenant, "prompt").inc(prompt)
            TENANT_TOKENS.labels(tenant, "completion").inc(completion)
            TENANT_COST.labels(tenant).inc(cost)
        except Exception as exc:  # the answer is already served: never fail it over bookkeeping
            log_event(log, "budget settle failed", logging.WARNING, error=type(exc).__name__)

    async def _release(self, reservation: Reservation) -> None:
        try:
            await self.budget.release(reservation)
        except Exception as exc:
            log_event(log, "budget release failed", logging.WARNING, error=type(exc).__name__)

    # --- answers, metrics, log line ------------------------------------------------------------

    async def _answer(self, send: Send, ex: Exchange, status: int, body: bytes,
                      extra: list[tuple[bytes, bytes]] | None = None, content_type: bytes = _JSON) -> None:
        headers = ex.headers(content_type, extra)
        headers.append((b"content-length", str(len(body)).encode()))
        if status == 200:
            GATEWAY_OVERHEAD.observe(ex.overhead())
        ex.started = True
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self._record(ex, status)

    def _record(self, ex: Exchange, status: int) -> None:
        elapsed = time.perf_counter() - ex.start
        counter = self._requests.get(status)
        if counter is None:
            counter = self._requests[status] = REQUESTS.labels(SERVICE, self.route, str(status))
        counter.inc()
        self._duration.observe(elapsed)
        overhead = min(ex.overhead(), elapsed)
        traced = _NO_FIELDS
        if tracing.ENABLED:  # the trace id beside the request id: from a log line to its trace
            traced = {"trace_id": tracing.trace_id()}
            tracing.set_attributes({"http.response.status_code": status, "qlens.request_id": ex.rid,
                                    "qlens.cache": ex.cache, "qlens.model": ex.model or ""})
        log_line(log, "request", request_id=ex.rid, route=self.route, tenant=ex.tenant, user=ex.user,
                 model=ex.model, provider=ex.provider, status=status, cache=ex.cache, stream=ex.stream,
                 latency_ms=round(elapsed * 1000, 3), overhead_ms=round(overhead * 1000, 3), **traced)


# --- what the router's answers and failures become for the client ----------------------------------


def unknown_model(model: str) -> APIError:
    return APIError(404, f"The model '{model}' does not exist or you do not have access to it.",
                    param="model", code="model_not_found")


def wrong_kind(model: str, kind: str, route: str) -> APIError:
    served_by = "/v1/embeddings" if kind == "embedding" else "/v1/chat/completions or /v1/responses"
    return APIError(400, f"The model '{model}' is {'an embedding' if kind == 'embedding' else 'a chat'} "
                         f"model and is not supported on {route}: use {served_by}.",
                    param="model", code="model_not_supported")


def passed_headers(headers: Any, reservation: Reservation | None = None) -> list[tuple[bytes, bytes]]:
    """The router's headers the client sees, and the x-ratelimit-* of the caller's limits."""
    out = [(h.encode(), headers[h].encode("latin-1")) for h in _PASSED_HEADERS if h in headers]
    if reservation is not None and reservation.headers:
        out += [(k.encode(), v.encode()) for k, v in reservation.headers.items()]
    return out


def upstream_seconds(header: str | None, waited: float) -> float:
    """Provider time as the router reports it (never more than the whole wait for the router)."""
    if header:
        try:
            return min(max(float(header) / 1000, 0.0), waited)
        except ValueError:
            pass
    return waited


def usage_of(body: bytes) -> dict[str, Any] | None:
    try:
        usage = orjson.loads(body).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return usage if isinstance(usage, dict) else None


def router_error(status: int, body: bytes) -> tuple[int, bytes]:
    """The router's error as the client's: OpenAI bodies pass through; anything else becomes 502."""
    try:
        parsed = orjson.loads(body)
        ok = isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)
    except orjson.JSONDecodeError:
        ok = False
    if status == 500 or not ok or status < 400:
        return 502, APIError(502, f"The router answered HTTP {status} without a usable error.",
                             code="upstream_error").to_bytes()
    return status, body


def upstream_error(exc: PeerError) -> APIError:
    if isinstance(exc, PeerTimeout):
        return APIError(504, "The router did not answer in time.", code="upstream_timeout")
    if isinstance(exc, PeerUnavailable):
        return APIError(503, "The router is unreachable; retry shortly.", code="upstream_unavailable")
    assert isinstance(exc, PeerBroken | PeerError)
    return APIError(502, "The connection to the router failed.", code="upstream_error")
