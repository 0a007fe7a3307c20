"""The gateway's two peers over HTTP: the router and the cache service.

One keep-alive pool per peer (services/common/http11.py), opened at start-up. Bytes are passed
through as they are; nothing here parses what it does not have to.

The cache is best effort: every failure to reach it (timeout, refused connection, 503) is a
`None` ("bypass") and the request carries on to the router. After a failure the cache is skipped
for CACHE_RETRY_SECONDS, then one request tries it again: while a cache pod is gone (scaled to 0,
its old IP black-holed) no request waits its timeout, and the gateway's latency stays the router's.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Literal

from services.common import tracing
from services.common.http11 import PeerError, Pool, Reply, StreamReply
from services.common.logging import log_event

log = logging.getLogger("qlens.gateway.peers")

ROUTER_URL_ENV = "QLENS_ROUTER_URL"
CACHE_URL_ENV = "QLENS_CACHE_URL"
DEFAULT_ROUTER_URL = "http://127.0.0.1:8081"
DEFAULT_CACHE_URL = "http://127.0.0.1:8082"

# the cache answers from memory or one Redis round trip: a slow cache is treated as a missing one
CACHE_GET_TIMEOUT = 1.0
CACHE_PUT_TIMEOUT = 5.0
CACHE_RETRY_SECONDS = 1.0
PROBE_TIMEOUT = 2.0
# the router enforces the request deadline itself (answering 504); ours only covers a hung router
ROUTER_GRACE_SECONDS = 5.0


class Router:
    def __init__(self, base_url: str, deadline_seconds: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = deadline_seconds + ROUTER_GRACE_SECONDS
        self.pool = Pool(self.base_url, limit=1000)

    async def close(self) -> None:
        await self.pool.close()

    async def complete(self, body: bytes, headers: Mapping[str, str],
                       path: str = "/v1/chat/completions") -> Reply:
        return await self.pool.request("POST", path, body, headers, timeout=self.timeout)

    async def stream(self, body: bytes, headers: Mapping[str, str],
                     path: str = "/v1/chat/completions") -> StreamReply:
        """The open stream once the router answered its headers (it does so when the provider started)."""
        return await self.pool.stream("POST", path, body, headers, timeout=self.timeout,
                                      read_timeout=self.timeout)

    async def get(self, path: str) -> Reply:
        return await self.pool.request("GET", path, timeout=self.timeout)

    async def probe(self) -> str:
        reply = await self.pool.request("GET", "/health", timeout=PROBE_TIMEOUT)
        if reply.status != 200:
            raise RuntimeError(f"router /health answered {reply.status}")
        return self.base_url


class Cache:
    def __init__(self, base_url: str, ttl_seconds: int) -> None:
        self.base_url = base_url.rstrip("/")
        self.ttl = str(ttl_seconds)
        self.pool = Pool(self.base_url, limit=200, connect_timeout=0.5)
        self._tasks: set[asyncio.Task] = set()
        self._skip_until = 0.0  # loop time until which the cache counts as unreachable

    def _skipping(self) -> bool:
        return self._skip_until > asyncio.get_running_loop().time()

    def _unreachable(self) -> None:
        self._skip_until = asyncio.get_running_loop().time() + CACHE_RETRY_SECONDS

    async def close(self) -> None:
        if self._tasks:  # let pending writes finish briefly; they are only an optimisation
            await asyncio.wait(self._tasks, timeout=2)
        await self.pool.close()

    async def get(self, tenant: str, key: str) -> bytes | Literal[False] | None:
        """The entry's bytes; False for a miss; None when the cache cannot be reached (bypass)."""
        if self._skipping():
            return None
        try:
            reply = await self.pool.request("GET", f"/v1/cache/{tenant}/{key}", headers=_traced(),
                                            timeout=CACHE_GET_TIMEOUT)
        except PeerError as exc:
            self._unreachable()
            log_event(log, "cache unreachable", logging.WARNING, error=type(exc).__name__,
                      retry_in_s=CACHE_RETRY_SECONDS)
            return None
        if reply.status == 200:
            return reply.body
        if reply.status == 404:
            return False
        log_event(log, "cache lookup failed", logging.WARNING, status=reply.status)
        return None

    def put_later(self, tenant: str, key: str, value: bytes, ttl: int | None = None) -> None:
        """Store in the background: the answer never waits for the cache."""
        task = asyncio.get_running_loop().create_task(self._put(tenant, key, value, ttl))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def put(self, tenant: str, key: str, value: bytes, ttl: int | None = None) -> bool:
        """Store now (what a later request must find, e.g. a stored response); whether it was stored."""
        return await self._put(tenant, key, value, ttl)

    async def _put(self, tenant: str, key: str, value: bytes, ttl: int | None) -> bool:
        with tracing.span("gateway.cache.put", kind="client"):
            return await self._store(tenant, key, value, ttl)

    async def _store(self, tenant: str, key: str, value: bytes, ttl: int | None) -> bool:
        if self._skipping():
            return False
        try:
            reply = await self.pool.request("PUT", f"/v1/cache/{tenant}/{key}?ttl={ttl or self.ttl}", value,
                                            headers=_traced(), timeout=CACHE_PUT_TIMEOUT)
        except PeerError as exc:
            self._unreachable()
            log_event(log, "cache store failed", logging.WARNING, error=type(exc).__name__)
            return False
        if reply.status not in (200, 201, 204):
            log_event(log, "cache store refused", logging.WARNING, status=reply.status)
            return False
        return True

    async def probe(self) -> str:
        reply = await self.pool.request("GET", "/health", timeout=PROBE_TIMEOUT)
        if reply.status != 200:
            raise RuntimeError(f"cache /health answered {reply.status}")
        self._skip_until = 0.0  # it answers again: no need to wait out the retry interval
        return self.base_url


def _traced() -> dict[str, str] | None:
    """The current span's traceparent for a call to the cache (None, no headers, when tracing is off)."""
    if not tracing.ENABLED:
        return None
    headers: dict[str, str] = {}
    tracing.inject(headers)
    return headers


def peer_urls() -> tuple[str, str]:
    return (os.environ.get(ROUTER_URL_ENV) or DEFAULT_ROUTER_URL,
            os.environ.get(CACHE_URL_ENV) or DEFAULT_CACHE_URL)
