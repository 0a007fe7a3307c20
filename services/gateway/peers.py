"""The gateway's two peers over HTTP: the router and the cache service.

One long-lived aiohttp session per peer, opened at start-up, with a keep-alive pool: aiohttp's
pool stays fast at 32+ concurrent connections where httpx's slows down (issue 8). Bytes are
passed through as they are; nothing here parses what it does not have to.

The cache is best effort: every failure to reach it (timeout, refused connection, 503) is a
`None` ("bypass") and the request carries on to the router.
"""

from __future__ import annotations

import asyncio
import logging
import os

import aiohttp

from services.common.logging import log_event

log = logging.getLogger("qlens.gateway.peers")

ROUTER_URL_ENV = "QLENS_ROUTER_URL"
CACHE_URL_ENV = "QLENS_CACHE_URL"
DEFAULT_ROUTER_URL = "http://127.0.0.1:8081"
DEFAULT_CACHE_URL = "http://127.0.0.1:8082"

# the cache answers from memory or one Redis round trip: a slow cache is treated as a missing one
CACHE_GET_TIMEOUT = aiohttp.ClientTimeout(total=1.0, connect=0.5)
CACHE_PUT_TIMEOUT = aiohttp.ClientTimeout(total=5.0, connect=0.5)
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=2.0)


def _session(limit: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=limit, keepalive_timeout=30, ttl_dns_cache=300)
    # no proxies from the environment, no cookies, no automatic decompression: a private hop
    return aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False,
                                 cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent",))


class Router:
    def __init__(self, base_url: str, deadline_seconds: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.completions_url = self.base_url + "/v1/chat/completions"
        # the router enforces the deadline and answers 504 itself; ours only covers a hung router
        self.timeout = aiohttp.ClientTimeout(total=deadline_seconds + 5, connect=2.0)
        self.stream_timeout = aiohttp.ClientTimeout(total=None, connect=2.0, sock_read=deadline_seconds + 5)
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = _session(limit=1000)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def post(self, body: bytes, headers: dict[str, str], stream: bool):
        """The router's response as an async context manager (the caller reads or streams it)."""
        assert self.session is not None
        return self.session.post(self.completions_url, data=body, headers=headers,
                                 timeout=self.stream_timeout if stream else self.timeout)

    async def get(self, path: str) -> tuple[int, bytes, str]:
        assert self.session is not None
        async with self.session.get(self.base_url + path, timeout=self.timeout) as resp:
            return resp.status, await resp.read(), resp.headers.get("content-type", "application/json")

    async def probe(self) -> str:
        assert self.session is not None
        async with self.session.get(self.base_url + "/health", timeout=PROBE_TIMEOUT) as resp:
            if resp.status != 200:
                raise RuntimeError(f"router /health answered {resp.status}")
        return self.base_url


class Cache:
    def __init__(self, base_url: str, ttl_seconds: int) -> None:
        self.base_url = base_url.rstrip("/")
        self.ttl = str(ttl_seconds)
        self.session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.session = _session(limit=200)

    async def close(self) -> None:
        if self._tasks:  # let pending writes finish briefly; they are only an optimisation
            await asyncio.wait(self._tasks, timeout=2)
        if self.session is not None:
            await self.session.close()

    def _url(self, tenant: str, key: str) -> str:
        return f"{self.base_url}/v1/cache/{tenant}/{key}"

    async def get(self, tenant: str, key: str) -> bytes | None | bool:
        """The entry's bytes; False for a miss; None when the cache cannot be reached (bypass)."""
        assert self.session is not None
        try:
            async with self.session.get(self._url(tenant, key), timeout=CACHE_GET_TIMEOUT) as resp:
                if resp.status == 200:
                    return await resp.read()
                if resp.status == 404:
                    return False
                log_event(log, "cache lookup failed", logging.WARNING, status=resp.status)
                return None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log_event(log, "cache unreachable", logging.WARNING, error=type(exc).__name__)
            return None

    def put_later(self, tenant: str, key: str, value: bytes) -> None:
        """Store in the background: the answer never waits for the cache."""
        task = asyncio.get_running_loop().create_task(self._put(tenant, key, value))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _put(self, tenant: str, key: str, value: bytes) -> None:
        assert self.session is not None
        try:
            async with self.session.put(self._url(tenant, key), data=value, params={"ttl": self.ttl},
                                        timeout=CACHE_PUT_TIMEOUT) as resp:
                if resp.status not in (200, 201, 204):
                    log_event(log, "cache store refused", logging.WARNING, status=resp.status)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log_event(log, "cache store failed", logging.WARNING, error=type(exc).__name__)

    async def probe(self) -> str:
        assert self.session is not None
        async with self.session.get(self.base_url + "/health", timeout=PROBE_TIMEOUT) as resp:
            if resp.status != 200:
                raise RuntimeError(f"cache /health answered {resp.status}")
        return self.base_url


def peer_urls() -> tuple[str, str]:
    return (os.environ.get(ROUTER_URL_ENV) or DEFAULT_ROUTER_URL,
            os.environ.get(CACHE_URL_ENV) or DEFAULT_CACHE_URL)
