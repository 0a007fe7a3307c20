"""The cache service: opaque bytes under (tenant, key) for the gateway, in memory or in Redis.

    GET    /v1/cache/{tenant}/{key}          200 raw bytes | 404 miss | 503 backend down
    PUT    /v1/cache/{tenant}/{key}?ttl=S    204 | 413 too large | 503
    DELETE /v1/cache/{tenant}/{key}          204
    DELETE /v1/cache/{tenant}                200 {"deleted": n}
    GET    /v1/cache/stats                   {"backend", "entries", "bytes", "hits", "misses", "evictions"}

Written for speed (issue 8): values go in and out as raw bytes (never JSON-decoded), no middleware
(metrics are recorded in the handlers), one backend call per request. A backend that cannot be
reached answers 503 at once so the gateway bypasses the cache; it is logged at most once a
minute, and its return is logged too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from services.cache import metrics
from services.cache.backends import Backend, BackendUnavailable, make_backend
from services.cache.policy import check_key, check_tenant, max_entry_bytes, parse_ttl
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
        metrics.BACKEND_LATENCY.labels(op).observe(time.perf_counter() - start)
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

    async def get_entry(self, tenant: str, key: str) -> Response:
        check_tenant(tenant)
        check_key(key)
        try:
            value = await self.call("get", self.backend.get(tenant, key))
        except APIError:
            CACHE_REQUESTS.labels("bypass").inc()
            raise
        if value is None:
            self.misses += 1
            CACHE_REQUESTS.labels("miss").inc()
            raise APIError(404, "No such cache entry.", code="cache_miss")
        self.hits += 1
        CACHE_REQUESTS.labels("hit").inc()
        return Response(value, media_type="application/octet-stream")

    async def put_entry(self, request: Request, tenant: str, key: str) -> Response:
        check_tenant(tenant)
        check_key(key)
        ttl = parse_ttl(request.query_params.get("ttl"), self.config.cache.ttl_seconds)
        value = await self._read_body(request)
        try:
            await self.call("put", self.backend.put(tenant, key, value, ttl))
        except APIError:
            metrics.WRITES.labels("bypass").inc()
            raise
        metrics.WRITES.labels("stored").inc()
        return Response(status_code=204)

    async def _read_body(self, request: Request) -> bytes:
        too_large = APIError(413, f"Cache entry larger than {self.max_entry} bytes.", code="entry_too_large")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_entry:
            metrics.WRITES.labels("too_large").inc()
            raise too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_entry:
                metrics.WRITES.labels("too_large").inc()
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    async def delete_entry(self, tenant: str, key: str) -> Response:
        check_tenant(tenant)
        check_key(key)
        await self.call("delete", self.backend.delete(tenant, key))
        return Response(status_code=204)

    async def purge_tenant(self, tenant: str) -> Response:
        check_tenant(tenant)
        deleted = await self.call("purge", self.backend.purge(tenant))
        log_event(log, "tenant purged", tenant=tenant, deleted=deleted)
        return Response(orjson.dumps({"deleted": deleted}), media_type=_JSON)

    async def backend_stats(self) -> dict[str, Any]:
        stats = await self.call("stats", self.backend.stats())
        self.evictions.observe(stats["evictions"])
        metrics.ENTRIES.set(stats["entries"])
        metrics.BYTES.set(stats["bytes"])
        return stats

    async def stats(self) -> Response:
        stats = await self.backend_stats()
        body = {"backend": self.backend.name, "entries": stats["entries"], "bytes": stats["bytes"],
                "hits": self.hits, "misses": self.misses, "evictions": stats["evictions"]}
        return Response(orjson.dumps(body), media_type=_JSON)

    async def metrics_text(self) -> Response:
        try:  # refresh the size gauges; a down backend still gets its other metrics scraped
            await asyncio.wait_for(self.backend_stats(), 2.0)
        except (APIError, TimeoutError):
            pass
        body, content_type = render_metrics()
        return Response(body, media_type=content_type)

    async def ready(self) -> Response:
        async def backend() -> str:
            await self.call("ping", self.backend.ping())
            return self.backend.name

        status, body = await readiness(SERVICE, {"backend": backend})
        return Response(orjson.dumps(body), status_code=status, media_type=_JSON)


def _record(route: str, start: float, status: int) -> None:
    REQUESTS.labels(SERVICE, route, str(status)).inc()
    REQUEST_DURATION.labels(SERVICE, route).observe(time.perf_counter() - start)


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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics.BACKEND_UP.set(1)
        log_event(log, "cache service started", backend=backend.name, env=config.name,
                  max_entry_bytes=svc.max_entry)
        yield
        await backend.close()

    app = FastAPI(title="qlens-cache", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.cache = svc
    install_error_handlers(app, logger=log)

    def timed(route: str, handler: Any) -> Any:
        async def run(*args: Any, **kwargs: Any) -> Response:
            start = time.perf_counter()
            try:
                response = await handler(*args, **kwargs)
            except APIError as exc:
                _record(route, start, exc.status)
                return error_response(exc)
            _record(route, start, response.status_code)
            return response

        return run

    get_entry = timed("GET " + ENTRY, svc.get_entry)
    put_entry = timed("PUT " + ENTRY, svc.put_entry)
    delete_entry = timed("DELETE " + ENTRY, svc.delete_entry)
    purge_tenant = timed("DELETE " + TENANT, svc.purge_tenant)
    stats = timed("GET " + STATS, svc.stats)

    @app.get("/health")
    async def health() -> Response:
        return Response(orjson.dumps(liveness(SERVICE)), media_type=_JSON)

    @app.get("/health/ready")
    async def health_ready() -> Response:
        return await svc.ready()

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return await svc.metrics_text()

    @app.get(STATS)
    async def stats_endpoint() -> Response:
        return await stats()

    @app.get(ENTRY)
    async def get_endpoint(tenant: str, key: str) -> Response:
        return await get_entry(tenant, key)

    @app.put(ENTRY)
    async def put_endpoint(request: Request, tenant: str, key: str) -> Response:
        return await put_entry(request, tenant, key)

    @app.delete(ENTRY)
    async def delete_endpoint(tenant: str, key: str) -> Response:
        return await delete_entry(tenant, key)

    @app.delete(TENANT)
    async def purge_endpoint(tenant: str) -> Response:
        return await purge_tenant(tenant)

    return app
