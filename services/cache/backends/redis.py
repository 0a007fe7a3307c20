"""Redis cache backend (production): every gateway replica shares one store.

Entries are plain strings `qlens:cache:{tenant}:{key}` set with a millisecond TTL, so Redis expires
them itself and purging a tenant is a SCAN + UNLINK of its prefix (tenant names cannot contain
`:` or glob characters, see services.common.apikeys.NAME_RE). Values are the gateway's bytes, as is.

Failure behaviour: short socket timeouts and no retry beyond one immediate reconnect, so a dead
Redis turns into BackendUnavailable (HTTP 503, the gateway bypasses) within about a second instead
of hanging requests; redis-py reconnects on the next command, so the service recovers by itself
when Redis is back. Redis's own memory limit and eviction policy bound it (`maxmemory`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any, TypeVar, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from services.cache.backends.base import Backend, BackendUnavailable

PREFIX = "qlens:cache:"
PURGE_BATCH = 500
# stats walk the keyspace: do it at most this often, and stop counting after this many keys
STATS_MAX_AGE = 30.0
STATS_MAX_KEYS = 200_000

T = TypeVar("T")


class RedisBackend(Backend):
    name = "redis"

    def __init__(self, url: str, *, max_connections: int = 128, socket_timeout: float = 0.5) -> None:
        self._pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=1.0, socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout, retry=Retry(NoBackoff(), 1),
        )
        self._redis = Redis(connection_pool=self._pool)
        self._stats: dict[str, Any] | None = None
        self._stats_at = -STATS_MAX_AGE

    @staticmethod
    def _key(tenant: str, key: str) -> str:
        return f"{PREFIX}{tenant}:{key}"

    async def _call(self, op: Awaitable[T]) -> T:
        try:
            return await op
        except (TimeoutError, RedisError, OSError) as exc:
            raise BackendUnavailable(f"redis: {type(exc).__name__}") from exc

    async def get(self, tenant: str, key: str) -> bytes | None:
        # redis-py types a reply as bytes | str; this client never decodes replies, so it is bytes
        return cast(bytes | None, await self._call(self._redis.get(self._key(tenant, key))))

    async def put(self, tenant: str, key: str, value: bytes, ttl: float) -> None:
        await self._call(self._redis.set(self._key(tenant, key), value, px=max(int(ttl * 1000), 1)))

    async def delete(self, tenant: str, key: str) -> bool:
        return bool(await self._call(self._redis.unlink(self._key(tenant, key))))

    async def purge(self, tenant: str) -> int:
        return await self._call(self._purge(f"{PREFIX}{tenant}:*"))

    async def _purge(self, pattern: str) -> int:
        deleted = 0
        batch: list[bytes] = []
        async for k in self._redis.scan_iter(match=pattern, count=1000):
            batch.append(k)
            if len(batch) >= PURGE_BATCH:
                deleted += await self._redis.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await self._redis.unlink(*batch)
        return deleted

    async def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._stats is None or now - self._stats_at >= STATS_MAX_AGE:
            self._stats = await self._call(self._collect())
            self._stats_at = now
        return self._stats

    async def _collect(self) -> dict[str, Any]:
        entries = size = 0
        keys: list[bytes] = []
        async for k in self._redis.scan_iter(match=f"{PREFIX}*", count=1000):
            keys.append(k)
            if len(keys) >= 1000:
                size += await self._sizes(keys)
                entries += len(keys)
                keys = []
            if entries >= STATS_MAX_KEYS:
                break
        if keys:
            size += await self._sizes(keys)
            entries += len(keys)
        info = await self._redis.info("stats")
        return {"entries": entries, "bytes": size, "evictions": int(info.get("evicted_keys", 0)),
                "approximate": entries >= STATS_MAX_KEYS}

    async def _sizes(self, keys: list[bytes]) -> int:
        async with self._redis.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.strlen(k)
            return sum(int(n) for n in await pipe.execute())

    async def ping(self) -> Any:
        await self._call(self._redis.ping())
        return None

    async def close(self) -> None:
        await self._redis.aclose()
        await self._pool.disconnect()
