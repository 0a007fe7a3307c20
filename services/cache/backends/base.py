"""What every cache backend offers the service: opaque bytes under (tenant, key), with a TTL."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class BackendUnavailable(Exception):
    """The store cannot be reached: the service answers 503 and the gateway bypasses the cache."""


class Backend(ABC):
    name = "?"

    @abstractmethod
    async def get(self, tenant: str, key: str) -> bytes | None:
        """The entry's bytes, or None for a miss (absent or expired)."""

    @abstractmethod
    async def put(self, tenant: str, key: str, value: bytes, ttl: float) -> None:
        """Store (or replace) an entry that expires after `ttl` seconds."""

    @abstractmethod
    async def delete(self, tenant: str, key: str) -> bool:
        """Remove one entry; whether it existed."""

    @abstractmethod
    async def purge(self, tenant: str) -> int:
        """Remove every entry of a tenant; how many."""

    @abstractmethod
    async def stats(self) -> dict[str, Any]:
        """{"entries", "bytes", "evictions"} (evictions: since the store started)."""

    async def ping(self) -> Any:
        """Raise BackendUnavailable unless the store answers."""
        return None

    async def close(self) -> None:
        return None
