"""The cache service: opaque bytes under (tenant, key) for the gateway, in memory or in Redis.

    GET    /v1/cache/{tenant}/{key}          200 raw bytes | 404 miss | 503 backend down
    PUT    /v1/cache/{tenant}/{key}?ttl=S    204 | 413 too large | 503
    DELETE /v1/cache/{tenant}/{key}          204
    DELETE /v1/cache/{tenant}                200 {"deleted": n}
    GET    /v1/cache/stats                   {"backend", "entries", "bytes", "hits", "misses", "evictions"}

Written for speed (issue 8): values go in and out as raw bytes (never JSON-decoded), entry GETs
and PUTs (the gateway's calls) served as plain ASGI in front of FastAPI, no middleware (metrics are
recorded in the handlers through cached metric children), one backend call per request. A
backend that cannot be reached answers 503 at once so the gateway bypasses the cache; it is
logged at most once a minute, and its return is logged too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from services.cache import metrics
from services.cache.backends import Backend, BackendUnavailable, make_backend
from services.cache.metrics import child
from services.cache.policy import check_key, check_tenant, max_entry_bytes, parse_ttl
from services.common import tracing
from services.common.asgi import BodyTooLarge, ClientGone, FastPathApp, Receive, read_body
from services.common.config import ServiceConfig, load_service_config, secret_env
from services.common.errors import APIError, error_response, install_error_handlers
from services.common.health import liveness, readiness
from services.common.logging import log_event, setup_logging
from services.common.metrics import CACHE_REQUESTS, REQUEST_DURATION, REQUESTS, render_metrics

SERVICE = "cache"
REDIS_URL_ENV = "QLENS_REDIS_URL"
ENTRY = "/v1/cache/{tenant}/{key}"
TENANT = "/v1/cache/{tenant}"
STATS = "/v1/cache/stats"
WARN_INTERVAL_SECONDS = 60.0
_JSON = "application/json"

log = logging.getLogger("qlens.cache")
T = TypeVar("T")


class CacheService:
    """The handlers' state: config, backend, hit/miss counts, backend health for the log."""

    def __init__(self, config: ServiceConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.max_entry = max_entry_bytes(config.cache)
        self.hits = 0
        self.misses = 0
        self.evictions = metrics.EvictionTracker()
        self._down_since: float | None = None
        self._last_warning = -WARN_INTERVAL_SECONDS

    # --- backend calls: latency, up/down ----------------------------------------------------------

    async def call(self, op: str, aw: Awaitable[T]) -> T:
        start = time.perf_counter()
        try:
            result = await aw
        except BackendUnavailable as exc:
            self._down(op, exc)
            raise APIError(503, "The cache backend is unavailable.", code="cache_unavailable") from None
        child(metrics.BACKEND_LATENCY, op).observe(time.perf_counter() - start)
        if self._down_since is not None:
            log_event(log, "cache backend reachable again", backend=self.backend.name,
                      down_seconds=round(time.monotonic() - self._down_since, 1))
            self._down_since = None
            metrics.BACKEND_UP.set(1)
        return result

    def _down(self, op: str, exc: BaseException) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            metrics.BACKEND_UP.set(0)
        if now - self._last_warning >= WARN_INTERVAL_SECONDS:
            self._last_warning = now
            log_event(log, "cache backend unreachable: answering 503, the gateway bypasses the cache",
                      logging.WARNING, backend=self.backend.name, op=op, error=str(exc))

    # --- handlers ------------------------------------------------------------------------------

    @staticmethod
    def _entry_path(request: Request) -> tuple[str, str]:
        params = request.path_params
        return check_tenant(params["tenant"]), check_key(params["key"])

    async def get_value(self, tenant: str, key: str) -> bytes:
        """GET's answer: the stored bytes, or APIError 400 (bad name), 404 (miss), 503 (backend down)."""
        tenant, key = check_tenant(tenant), check_key(key)
        try:
            value = await self.call("get", self.backend.get(tenant, key))
        except APIError:
            child(CACHE_REQUESTS, "bypass").inc()
            raise
        if value is None:
            self.misses += 1
            child(CACHE_REQUESTS, "miss").inc()
            raise APIError(404, "No such cache entry.", code="cache_miss")
        self.hits += 1
        child(CACHE_REQUESTS, "hit").inc()
        return value

    async def put_value(self, tenant: str, key: str, ttl: str | None, content_length: str | None,
                        receive: Receive) -> None:
        """PUT: store the body's bytes, or APIError 400 (bad name or ttl), 413 (too large), 503;
        ClientGone if the client leaves before its body is read."""
        tenant, key = check_tenant(tenant), check_key(key)
        seconds = parse_ttl(ttl, self.config.cache.ttl_seconds)
        try:
            value = await read_body(receive, self.max_entry, content_length)
        except BodyTooLarge:
            child(metrics.WRITES, "too_large").inc()
            raise APIError(413, f"Cache entry larger than {self.max_entry} bytes.",
                           code="entry_too_large") from None
        try:
            await self.call("put", self.backend.put(tenant, key, value, seconds))
        except APIError:
            child(metrics.WRITES, "bypass").inc()
            raise
        child(metrics.WRITES, "stored").inc()

    async def delete_entry(self, request: Request) -> Response:
        tenant, key = self._entry_path(request)
        await self.call("delete", self.backend.delete(tenant, key))
        return Response(status_code=204)

    async def purge_tenant(self, request: Request) -> Response:
        tenant = check_tenant(request.path_params["tenant"])
        deleted = await self.call("purge", self.backend.purge(tenant))
        log_event(log, "tenant purged", tenant=tenant, deleted=deleted)
        return Response(orjson.dumps({"deleted": deleted}), media_type=_JSON)

    async def backend_stats(self) -> dict[str, Any]:
        stats = await self.call("stats", self.backend.stats())
        self.evictions.observe(stats["evictions"])
        metrics.ENTRIES.set(stats["entries"])
        metrics.BYTES.set(stats["bytes"])
        return stats

    async def stats(self, request: Request) -> Response:
        stats = await self.backend_stats()
        body = {"backend": self.backend.name, "entries": stats["entries"], "bytes": stats["bytes"],
                "hits": self.hits, "misses": self.misses, "evictions": stats["evictions"]}
        return Response(orjson.dumps(body), media_type=_JSON)

    async def metrics_text(self, request: Request) -> Response:
        try:  # refresh the size gauges; a down backend still gets its other metrics scraped
            await asyncio.wait_for(self.backend_stats(), 2.0)
        except (APIError, TimeoutError):
            pass
        body, content_type = render_metrics()
        return Response(body, media_type=content_type)

    async def ready(self, request: Request) -> Response:
        async def backend() -> str:
            await self.call("ping", self.backend.ping())
            return self.backend.name

        status, body = await readiness(SERVICE, {"backend": backend})
        return Response(orjson.dumps(body), status_code=status, media_type=_JSON)


class Entries:
    """GET and PUT /v1/cache/{tenant}/{key} as plain ASGI: the gateway's two calls per request
    (FastPathApp hands them here, with the path's tenant and key).

    FastAPI's middleware stack, routing and Request/Response objects were about a third of the
    cache's CPU per call (issue 8); the answers are the same as the routes' would be.
    """

    def __init__(self, svc: CacheService) -> None:
        self.svc = svc

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any, tenant: str, key: str) -> None:
        if not tracing.ENABLED:
            await self._serve(scope, receive, send, tenant, key)
            return
        # the gateway's cache hop continued here: a server span, child of gateway.cache.get/put
        # (route and status only: never the tenant's key or the entry)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        route = PUT_ROUTE if scope["method"] == "PUT" else GET_ROUTE
        with tracing.server_span(route, headers, {"http.request.method": scope["method"],
                                                  "http.route": ENTRY}) as span:
            status = await self._serve(scope, receive, send, tenant, key)
            span.set_attribute("http.response.status_code", status)
            if route == GET_ROUTE:
                result = "hit" if status == 200 else "miss" if status == 404 else "error"
                span.set_attribute("qlens.cache", result)
            if status >= 500:
                tracing.fail(span, str(status))

    async def _serve(self, scope: dict[str, Any], receive: Any, send: Any, tenant: str, key: str) -> int:
        """Serve the call; its status (0 when the client went away)."""
        start = time.perf_counter()
        put = scope["method"] == "PUT"
        route = PUT_ROUTE if put else GET_ROUTE
        try:
            if put:
                await self.svc.put_value(tenant, key, _query_param(scope, "ttl"),
                                         _header(scope, b"content-length"), receive)
                status, body, headers = 204, b"", []
            else:
                value = await self.svc.get_value(tenant, key)
                status, body, headers = 200, value, [(b"content-length", str(len(value)).encode()),
                                                     (b"content-type", b"application/octet-stream")]
        except APIError as exc:
            status, body = exc.status, exc.to_bytes()
            headers = [*((k.encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()),
                       (b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
        except ClientGone:
            return 0
        except Exception as exc:
            log.error("unhandled error", exc_info=exc, extra={"fields": {"path": scope["path"]}})
            body = APIError(500, "The server had an error while processing your request.",
                            code="internal_error").to_bytes()
            await _send(send, 500, body, [(b"content-length", str(len(body)).encode()),
                                          (b"content-type", b"application/json")])
            return 500
        _record(route, start, status)
        await _send(send, status, body, headers)
        return status


GET_ROUTE = "GET " + ENTRY
PUT_ROUTE = "PUT " + ENTRY


async def _send(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None


def _query_param(scope: dict[str, Any], name: str) -> str | None:
    """The last value of `name` in the query string, as Starlette's `query_params.get` gives it."""
    raw = scope.get("query_string", b"")
    if not raw:
        return None
    found = None
    for k, v in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if k == name:
            found = v
    return found


def _record(route: str, start: float, status: int) -> None:
    child(REQUESTS, SERVICE, route, str(status)).inc()
    child(REQUEST_DURATION, SERVICE, route).observe(time.perf_counter() - start)


def create_app(config: ServiceConfig | None = None, backend: Backend | None = None) -> FastAPI:
    """The ASGI app (uvicorn's factory). Config from $QLENS_CONFIG, Redis from $QLENS_REDIS_URL."""
    setup_logging(SERVICE)
    try:
        config = config or load_service_config()
        backend = backend or make_backend(config.cache, secret_env(REDIS_URL_ENV))
    except Exception as exc:  # a bad environment is one clear line, not a traceback
        log_event(log, "cannot start the cache service", logging.ERROR, error=str(exc))
        raise SystemExit(2) from None
    svc = CacheService(config, backend)
    tracing.setup(SERVICE, config.observability.tracing)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics.BACKEND_UP.set(1)
        log_event(log, "cache service started", backend=backend.name, env=config.name,
                  max_entry_bytes=svc.max_entry)
        yield
        await backend.close()
        tracing.shutdown()

    entries = Entries(svc)
    app = FastPathApp({(method, ENTRY): entries for method in ("GET", "HEAD", "PUT")},
                      title="qlens-cache", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.cache = svc
    install_error_handlers(app, logger=log)

    def timed(route: str, handler: Any) -> Any:
        async def run(request: Request) -> Response:
            start = time.perf_counter()
            try:
                response = await handler(request)
            except APIError as exc:
                response = error_response(exc)
            _record(route, start, response.status_code)
            return response

        return run

    async def health(request: Request) -> Response:
        return Response(orjson.dumps(liveness(SERVICE)), media_type=_JSON)

    async def served_by_entries(request: Request) -> Response:
        raise RuntimeError("entry GETs and PUTs are served by FastPathApp.__call__")

    # plain Starlette routes: handlers take the Request and return bytes, so FastAPI's parameter
    # machinery stays off the path. Entry GETs and PUTs never get here (FastPathApp.__call__).
    app.add_route("/health", health, methods=["GET"])
    app.add_route("/health/ready", svc.ready, methods=["GET"])
    app.add_route("/metrics", svc.metrics_text, methods=["GET"])
    app.add_route(STATS, timed("GET " + STATS, svc.stats), methods=["GET"])
    app.add_route(ENTRY, served_by_entries, methods=["GET", "PUT"])  # so a 405 lists them in `allow`
    app.add_route(ENTRY, timed("DELETE " + ENTRY, svc.delete_entry), methods=["DELETE"])
    app.add_route(TENANT, timed("DELETE " + TENANT, svc.purge_tenant), methods=["DELETE"])
    return app
