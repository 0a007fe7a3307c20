"""The gateway: QLens's public, OpenAI-compatible API.

One chat request: auth -> read the body (size-capped) -> validate -> cache lookup (tenant-scoped
key) -> hit: answer at cost 0 -> miss: reserve the worst-case cost -> router -> settle to the
actual usage (release on failure) -> store in the cache in the background -> metrics and one JSON
log line (never a prompt or a key).

Written for speed (issue 8): no middleware (headers, metrics and the log line are done in the
handlers), the client's JSON bytes go to the router unchanged unless the gateway has to add to
them, the router's answer comes back as bytes (parsed only for its usage), streams are relayed
event by event as they arrive, and both peers are reached through long-lived aiohttp pools.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response, StreamingResponse

from services.common.config import ServiceConfig, load_service_config, secret_env
from services.common.errors import APIError, install_error_handlers
from services.common.health import liveness, readiness
from services.common.logging import log_event, request_id, setup_logging
from services.common.metrics import (
    CACHE_REQUESTS,
    GATEWAY_OVERHEAD,
    REQUEST_DURATION,
    REQUESTS,
    TOKENS,
    render_metrics,
)
from services.gateway.auth import Authenticator, Caller, KeyStore, keys_file_path
from services.gateway.budget import (
    DEFAULT_MAX_COMPLETION_TOKENS,
    Budget,
    BudgetExceeded,
    BudgetUnavailable,
    Reservation,
    actual_cost,
    estimate_prompt_tokens,
    make_budget,
    worst_case_cost,
)
from services.gateway.cachekey import cache_key, cacheable
from services.gateway.catalog import Catalog
from services.gateway.peers import Cache, Router, peer_urls
from services.gateway.schema import ChatCompletionRequest, validate_request
from services.gateway.streams import (
    SSESplitter,
    StreamRelay,
    decode_entry,
    encode_entry,
    error_event,
    replay_chunks,
)

SERVICE = "gateway"
REDIS_URL_ENV = "QLENS_REDIS_URL"
CHAT, MODELS, USAGE = "/v1/chat/completions", "/v1/models", "/v1/usage"
# router headers the client sees too: who served, and whether a fallback model did
_PASSED_HEADERS = ("x-qlens-provider", "x-qlens-model", "x-qlens-fallback")
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_JSON = "application/json"
_SSE = "text/event-stream"

log = logging.getLogger("qlens.gateway")


@dataclass(slots=True)
class Exchange:
    """What one request has learned so far: for its headers, metrics and log line."""

    rid: str
    route: str
    start: float
    tenant: str = "-"
    user: str = "-"
    model: str | None = None
    provider: str | None = None
    cache: str = "bypass"
    upstream: float = 0.0  # seconds spent in the provider (for a stream: waiting for its first event)
    stream: bool = False
    fixed_overhead: float | None = None  # a stream's overhead, fixed when its headers are sent

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"x-request-id": self.rid, "x-qlens-overhead-ms": f"{self.overhead() * 1000:.3f}"}
        if self.route == CHAT:
            h["x-qlens-cache"] = self.cache
        if self.provider:
            h["x-qlens-provider"] = self.provider
        if extra:
            h.update(extra)
        return h

    def overhead(self) -> float:
        if self.fixed_overhead is not None:
            return self.fixed_overhead
        return max(time.perf_counter() - self.start - self.upstream, 0.0)


class Gateway:
    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.catalog = Catalog(config)
        self.auth = Authenticator(KeyStore(keys_file_path(config.auth.keys_file)), config.auth.required)
        router_url, cache_url = peer_urls()
        self.router = Router(router_url, config.routing.deadline_seconds)
        self.cache = Cache(cache_url, config.cache.ttl_seconds)
        self.cache_on = config.cache.enabled
        self.max_body = config.gateway.max_body_bytes
        self.budget: Budget | None = None
        self._tasks: set[asyncio.Task] = set()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.budget = make_budget(self.config.cost_controls, secret_env(REDIS_URL_ENV))
        await self.router.start()
        await self.cache.start()
        log_event(log, "gateway started", environment=self.config.name, router=self.router.base_url,
                  cache=self.cache.base_url if self.cache_on else "disabled",
                  auth_required=self.auth.required, budget_store=self.budget.store)

    async def stop(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await self.cache.close()
        await self.router.close()
        if self.budget is not None:
            await self.budget.close()

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- POST /v1/chat/completions -------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        ex = Exchange(request_id(request.headers.get("x-request-id")), CHAT, time.perf_counter())
        try:
            return await self._chat(request, ex)
        except APIError as exc:
            return self._answer(ex, exc.to_bytes(), exc.status, exc.headers)
        except Exception:
            log.exception("unhandled error", extra={"fields": {"request_id": ex.rid, "route": CHAT}})
            return self._answer(ex, _INTERNAL.to_bytes(), 500)

    async def _chat(self, request: Request, ex: Exchange) -> Response:
        headers = request.headers
        entry = self.auth.check(headers.get("authorization"))
        raw = await self._read_body(request)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise APIError(400, "We could not parse the JSON body of your request: it must be a JSON object "
                                "(see https://platform.openai.com/docs/api-reference).",
                           code="invalid_json") from None
        req = validate_request(data)
        caller = self.auth.caller_for(entry, req.user)
        ex.tenant, ex.user, ex.model, ex.stream = caller.tenant, caller.user, req.model, bool(req.stream)
        if req.model not in self.catalog:
            raise _unknown_model(req.model)

        key = await self._lookup(ex, req, data, headers, caller)
        if isinstance(key, Response):
            return key  # a cache hit

        reservation, body, cap = await self._reserve(ex, req, data, raw, caller)
        rheaders = {"content-type": _JSON, "x-request-id": ex.rid, "x-qlens-tenant": caller.tenant}
        if req.stream:
            return await self._stream(ex, req, body, rheaders, reservation, key)
        return await self._complete(ex, req, body, rheaders, reservation, key)

    async def _read_body(self, request: Request) -> bytes:
        """The body, refused with 413 past the limit: by Content-Length before reading, and while
        reading a chunked body, so an oversized request is never held in memory."""
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise APIError(400, "Invalid Content-Length header.", code="invalid_request")
            if int(length) > self.max_body:
                raise self._too_large()
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise self._too_large()
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self) -> APIError:
        return APIError(413, f"Request body too large: the limit is {self.max_body} bytes "
                             "(gateway.maxBodyBytes).", code="request_too_large")

    async def _lookup(self, ex: Exchange, req: ChatCompletionRequest, data: dict[str, Any],
                      headers: Any, caller: Caller) -> str | None | Response:
        """The cache key to store under after a miss (None: do not store), or the hit's response."""
        if not (self.cache_on and cacheable(data, headers, self.config.cache)):
            CACHE_REQUESTS.labels("bypass").inc()
            return None
        key = cache_key(caller.tenant, data)
        got = await self.cache.get(quote(caller.tenant, safe=""), key)
        if got is None:  # unreachable: keep serving without it, and do not try to store either
            CACHE_REQUESTS.labels("bypass").inc()
            return None
        entry = decode_entry(got) if got else None
        if entry is None:
            ex.cache = "miss"
            CACHE_REQUESTS.labels("miss").inc()
            return key
        ex.cache = "hit"
        CACHE_REQUESTS.labels("hit").inc()
        meta, body = entry
        ex.provider = meta.get("provider") or None
        extra = {"x-qlens-model": str(meta.get("model") or req.model)}
        if req.stream:
            events = replay_chunks(orjson.loads(body), req.wants_usage_chunk)
            return self._answer(ex, b"".join(events), 200, {**extra, **_SSE_HEADERS}, _SSE)
        return self._answer(ex, body, 200, extra)

    async def _reserve(self, ex: Exchange, req: ChatCompletionRequest, data: dict[str, Any], raw: bytes,
                       caller: Caller) -> tuple[Reservation, bytes, int]:
        """Reserve the worst case; the body to forward (with the max_tokens the reservation assumed)."""
        cap = req.completion_limit
        forward: dict[str, Any] | None = None
        if cap is None:
            # the reservation covers this many completion tokens, so the provider must not go past it
            cap = DEFAULT_MAX_COMPLETION_TOKENS
            forward = {**data, "max_tokens": cap}
        if req.stream:
            # the budget settles from the usage chunk: always ask for it (dropped later if unasked)
            forward = forward or dict(data)
            forward["stream_options"] = {**(data.get("stream_options") or {}), "include_usage": True}
        body = orjson.dumps(forward) if forward is not None else raw
        pricing = self.catalog.reservation_pricing(req.model)
        prompt = estimate_prompt_tokens(data["messages"], data.get("tools"))
        worst = worst_case_cost(pricing, prompt, cap * (req.n or 1))
        assert self.budget is not None
        try:
            reservation = await self.budget.reserve(caller.tenant, caller.user, worst)
        except BudgetExceeded as exc:
            raise APIError(429, f"Budget exceeded: {exc}.", code="budget_exceeded") from None
        except BudgetUnavailable:
            raise APIError(503, "The budget store is unavailable and this environment refuses requests "
                                "it cannot account for (costControls.onStoreFailure: failClosed). "
                                "Retry shortly.",
                           code="budget_unavailable") from None
        return reservation, body, cap

    async def _complete(self, ex: Exchange, req: ChatCompletionRequest, body: bytes, rheaders: dict[str, str],
                        reservation: Reservation, key: str | None) -> Response:
        t0 = time.perf_counter()
        try:
            async with self.router.post(body, rheaders, stream=False) as up:
                rbody = await up.read()
                status, uh = up.status, up.headers
        except BaseException as exc:
            self._background(self._release(reservation))
            if isinstance(exc, Exception):
                raise _upstream_error(exc) from None
            raise
        waited = time.perf_counter() - t0
        ex.provider = uh.get("x-qlens-provider") or None
        ex.upstream = _upstream_seconds(uh.get("x-qlens-upstream-ms"), waited)
        extra = {h: uh[h] for h in _PASSED_HEADERS[1:] if h in uh}
        if status != 200:
            await self._release(reservation)
            status, rbody = _router_error(status, rbody)
            return self._answer(ex, rbody, status, extra)
        served = uh.get("x-qlens-model") or req.model
        usage = _usage(rbody)
        await self._settle(reservation, served, usage)
        if key is not None:
            entry = encode_entry(ex.provider or "", served, rbody)
            self.cache.put_later(quote(ex.tenant, safe=""), key, entry)
        return self._answer(ex, rbody, 200, extra)

    async def _stream(self, ex: Exchange, req: ChatCompletionRequest, body: bytes, rheaders: dict[str, str],
                      reservation: Reservation, key: str | None) -> Response:
        t0 = time.perf_counter()
        try:
            up = await self.router.post(body, rheaders, stream=True)
        except BaseException as exc:
            self._background(self._release(reservation))
            if isinstance(exc, Exception):
                raise _upstream_error(exc) from None
            raise
        # the router answers a stream's headers once the provider has started: until then it is
        # provider time; what the gateway did before and does after is the overhead
        ex.upstream = time.perf_counter() - t0
        ex.provider = up.headers.get("x-qlens-provider") or None
        extra = {h: up.headers[h] for h in _PASSED_HEADERS[1:] if h in up.headers}
        if up.status != 200:
            try:
                rbody = await up.read()
            except (TimeoutError, aiohttp.ClientError):
                rbody = b""
            finally:
                up.release()
            await self._release(reservation)
            status, rbody = _router_error(up.status, rbody)
            return self._answer(ex, rbody, status, extra)
        served = up.headers.get("x-qlens-model") or req.model
        relay = StreamRelay(forward_usage=req.wants_usage_chunk, collect=key is not None)
        ex.fixed_overhead = ex.overhead()
        headers = ex.headers({**extra, **_SSE_HEADERS})
        GATEWAY_OVERHEAD.observe(ex.fixed_overhead)
        gen = self._relay(ex, up, relay, reservation, served, key)
        return StreamingResponse(gen, status_code=200, headers=headers, media_type=_SSE)

    async def _relay(self, ex: Exchange, up: aiohttp.ClientResponse, relay: StreamRelay,
                     reservation: Reservation, served: str, key: str | None) -> AsyncIterator[bytes]:
        """Forward the router's events as they arrive; settle, store and log when the stream ends."""
        status = 200
        finished = False
        try:
            splitter = SSESplitter()
            async for data in up.content.iter_any():
                out = [b for b in map(relay.event, splitter.feed(data)) if b is not None]
                if out:
                    yield out[0] if len(out) == 1 else b"".join(out)
            if splitter.rest.strip():
                tail = relay.event(splitter.rest.strip())
                if tail is not None:
                    yield tail
            if not relay.done and not relay.failed:
                status = 502
                yield error_event(APIError(502, "The upstream stream ended before it was complete.",
                                           code="upstream_error").to_bytes())
            finished = True
        except (TimeoutError, aiohttp.ClientError) as exc:
            err = _upstream_error(exc)
            status = err.status
            finished = True
            yield error_event(err.to_bytes())
        finally:
            if finished:
                up.release()
            else:  # the client went away: drop the upstream connection so the provider stops too
                status = 499
                up.close()
            status = 502 if relay.failed and status == 200 else status
            # after the first byte the provider may have billed: without usage, keep the worst case
            self._background(self._settle(reservation, served, relay.usage, keep_if_unknown=True))
            if key is not None and status == 200:
                completion = relay.completion()
                if completion is not None:
                    self.cache.put_later(quote(ex.tenant, safe=""), key,
                                         encode_entry(ex.provider or "", served, orjson.dumps(completion)))
            self._record(ex, status)

    # --- budget ------------------------------------------------------------------------------

    async def _settle(self, reservation: Reservation, served: str, usage: dict[str, Any] | None,
                      keep_if_unknown: bool = True) -> None:
        assert self.budget is not None
        try:
            if usage is None:
                if keep_if_unknown:
                    await self.budget.settle(reservation, reservation.usd)
                else:
                    await self.budget.release(reservation)
                return
            prompt = int(usage.get("prompt_tokens") or 0)
            completion = int(usage.get("completion_tokens") or 0)
            pricing = (self.catalog.pricing(served) if served in self.catalog
                       else self.catalog.reservation_pricing(served))
            await self.budget.settle(reservation, actual_cost(pricing, prompt, completion))
            model = served if served in self.catalog else "other"
            TOKENS.labels(model, "prompt").inc(prompt)
            TOKENS.labels(model, "completion").inc(completion)
        except Exception as exc:  # the answer is already served: never fail it over bookkeeping
            log_event(log, "budget settle failed", logging.WARNING, error=type(exc).__name__)

    async def _release(self, reservation: Reservation) -> None:
        assert self.budget is not None
        try:
            await self.budget.release(reservation)
        except Exception as exc:
            log_event(log, "budget release failed", logging.WARNING, error=type(exc).__name__)

    # --- answers, metrics, log line ------------------------------------------------------------

    def _answer(self, ex: Exchange, body: bytes, status: int, extra: dict[str, str] | None = None,
                media_type: str = _JSON) -> Response:
        headers = ex.headers(extra)
        if ex.route == CHAT and status == 200:
            GATEWAY_OVERHEAD.observe(ex.overhead())
        response = Response(body, status_code=status, headers=headers, media_type=media_type)
        self._record(ex, status)
        return response

    def _record(self, ex: Exchange, status: int) -> None:
        elapsed = time.perf_counter() - ex.start
        REQUESTS.labels(SERVICE, ex.route, str(status)).inc()
        REQUEST_DURATION.labels(SERVICE, ex.route).observe(elapsed)
        log_event(log, "request", request_id=ex.rid, route=ex.route, tenant=ex.tenant, user=ex.user,
                  model=ex.model, provider=ex.provider, status=status, cache=ex.cache, stream=ex.stream,
                  latency_ms=round(elapsed * 1000, 3), overhead_ms=round(ex.overhead() * 1000, 3))

    # --- GET /v1/models, GET /v1/usage ---------------------------------------------------------

    async def models(self, request: Request) -> Response:
        """The router's catalog, as OpenAI's model list."""
        ex = Exchange(request_id(request.headers.get("x-request-id")), MODELS, time.perf_counter())
        try:
            self.auth.check(request.headers.get("authorization"))
            status, body = await self._router_models()
            return self._answer(ex, body, status)
        except APIError as exc:
            return self._answer(ex, exc.to_bytes(), exc.status, exc.headers)

    async def model(self, request: Request) -> Response:
        """One model of the router's catalog (`client.models.retrieve`)."""
        ex = Exchange(request_id(request.headers.get("x-request-id")), MODELS, time.perf_counter())
        try:
            self.auth.check(request.headers.get("authorization"))
            model_id = request.path_params["model_id"]
            status, body = await self._router_models()
            if status == 200:
                found = [m for m in orjson.loads(body).get("data", []) if m.get("id") == model_id]
                if not found:
                    raise _unknown_model(model_id)
                body = orjson.dumps(found[0])
            return self._answer(ex, body, status)
        except APIError as exc:
            return self._answer(ex, exc.to_bytes(), exc.status, exc.headers)

    async def _router_models(self) -> tuple[int, bytes]:
        try:
            status, body, _ = await self.router.get(MODELS)
        except Exception as exc:
            raise _upstream_error(exc) from None
        return (status, body) if status == 200 else _router_error(status, body)

    async def usage(self, request: Request) -> Response:
        """The caller's spend and remaining budget today (tenant and user scopes).

        Without a key (auth off) the caller is tenant `default` and `?user=` names the user.
        """
        ex = Exchange(request_id(request.headers.get("x-request-id")), USAGE, time.perf_counter())
        try:
            entry = self.auth.check(request.headers.get("authorization"))
            caller = self.auth.caller_for(entry, request.query_params.get("user"))
            ex.tenant, ex.user = caller.tenant, caller.user
            assert self.budget is not None
            try:
                report = await self.budget.usage(caller.tenant, caller.user)
            except BudgetUnavailable:
                raise APIError(503, "The budget store is unavailable; retry shortly.",
                               code="budget_unavailable") from None
            body = {"object": "usage", "tenant_id": caller.tenant, "user_id": caller.user, **report}
            return self._answer(ex, orjson.dumps(body), 200)
        except APIError as exc:
            return self._answer(ex, exc.to_bytes(), exc.status, exc.headers)

    # --- health and metrics --------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return Response(orjson.dumps(liveness(SERVICE)), media_type=_JSON)

    async def ready(self, request: Request) -> Response:
        checks = {"router": self.router.probe}
        if self.cache_on:
            checks["cache"] = self.cache.probe
        optional = {"budget_store": self._budget_ping}
        status, body = await readiness(SERVICE, checks, optional=optional)
        return Response(orjson.dumps(body), status_code=status, media_type=_JSON)

    async def _budget_ping(self) -> str:
        assert self.budget is not None
        await self.budget.ping()
        return self.budget.store

    async def metrics(self, request: Request) -> Response:
        body, content_type = render_metrics()
        return Response(body, media_type=content_type)


# --- helpers: what the router's answers and failures become for the client -----------------------


_INTERNAL = APIError(500, "The server had an error while processing your request.", code="internal_error")


def _unknown_model(model: str) -> APIError:
    return APIError(404, f"The model '{model}' does not exist or you do not have access to it.",
                    param="model", code="model_not_found")


def _upstream_seconds(header: str | None, waited: float) -> float:
    if header:
        try:
            return min(max(float(header) / 1000, 0.0), waited)
        except ValueError:
            pass
    return waited


def _usage(body: bytes) -> dict[str, Any] | None:
    try:
        usage = orjson.loads(body).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return usage if isinstance(usage, dict) else None


def _router_error(status: int, body: bytes) -> tuple[int, bytes]:
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


def _upstream_error(exc: BaseException) -> APIError:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return APIError(504, "The router did not answer in time.", code="upstream_timeout")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return APIError(503, "The router is unreachable; retry shortly.", code="upstream_unavailable")
    return APIError(502, "The connection to the router failed.", code="upstream_error")


# --- the app -------------------------------------------------------------------------------------


def create_app(config: ServiceConfig | None = None) -> FastAPI:
    setup_logging(SERVICE)
    gw = Gateway(config or load_service_config())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    # no interactive docs on a public endpoint; the API is OpenAI's, documented there
    app = FastAPI(title="QLens gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = gw

    def request_id_header(request: Request) -> dict[str, str]:
        return {"x-request-id": request_id(request.headers.get("x-request-id"))}

    install_error_handlers(app, extra_headers=request_id_header, logger=log)
    app.add_api_route(CHAT, gw.chat, methods=["POST"])
    app.add_api_route(MODELS, gw.models, methods=["GET"])
    app.add_api_route(MODELS + "/{model_id:path}", gw.model, methods=["GET"])
    app.add_api_route(USAGE, gw.usage, methods=["GET"])
    app.add_api_route("/health", gw.health, methods=["GET"])
    app.add_api_route("/health/ready", gw.ready, methods=["GET"])
    app.add_api_route("/metrics", gw.metrics, methods=["GET"])
    return app
