"""Cache backends: memory (one process, local and staging) and Redis (shared, production)."""

from __future__ import annotations

from services.cache.backends.base import Backend, BackendUnavailable
from services.common.config import Cache

__all__ = ["Backend", "BackendUnavailable", "make_backend"]


def make_backend(cfg: Cache, redis_url: str | None) -> Backend:
    if cfg.backend == "redis":
        if not redis_url:
            raise ValueError("cache.backend is redis but QLENS_REDIS_URL is not set")
        from services.cache.backends.redis import RedisBackend

        return RedisBackend(redis_url)
    from services.cache.backends.memory import MemoryBackend

    return MemoryBackend(cfg.max_entries, cfg.max_bytes)
