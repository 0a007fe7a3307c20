"""In-process LRU cache bounded by entries and bytes, with a TTL per entry (local and staging).

One OrderedDict in least-recently-used order; a hit moves the entry to the end, a put evicts from
the front until both bounds hold again. Expired entries are dropped when read, and swept when stats
are taken (every metrics scrape), so they neither answer nor linger long. An entry's size is its
value plus its tenant and key. No operation awaits, so each is atomic on the event loop.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from services.cache.backends.base import Backend

Entry = tuple[bytes, float, int]  # value, expires at (clock), size


class MemoryBackend(Backend):
    name = "memory"

    def __init__(self, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self._entries: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def _drop(self, k: tuple[str, str]) -> None:
        _, _, size = self._entries.pop(k)
        self.bytes -= size

    async def get(self, tenant: str, key: str) -> bytes | None:
        k = (tenant, key)
        entry = self._entries.get(k)
        if entry is None:
            return None
        if entry[1] <= self.clock():
            self._drop(k)
            return None
        self._entries.move_to_end(k)
        return entry[0]

    async def put(self, tenant: str, key: str, value: bytes, ttl: float) -> None:
        k = (tenant, key)
        size = len(value) + len(tenant) + len(key)
        if k in self._entries:
            self._drop(k)
        if size > self.max_bytes:
            return  # could never fit; the service refuses such entries (413) before they get here
        self._entries[k] = (value, self.clock() + ttl, size)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, _, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted
            self.evictions += 1

    async def delete(self, tenant: str, key: str) -> bool:
        k = (tenant, key)
        if k not in self._entries:
            return False
        self._drop(k)
        return True

    async def purge(self, tenant: str) -> int:
        doomed = [k for k in self._entries if k[0] == tenant]
        for k in doomed:
            self._drop(k)
        return len(doomed)

    def sweep(self) -> int:
        now = self.clock()
        expired = [k for k, (_, expires, _) in self._entries.items() if expires <= now]
        for k in expired:
            self._drop(k)
        return len(expired)

    async def stats(self) -> dict[str, Any]:
        self.sweep()
        return {"entries": len(self._entries), "bytes": self.bytes, "evictions": self.evictions}
