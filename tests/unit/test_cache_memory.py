"""The memory backend's LRU, byte and TTL bounds, and the service's input policy (no processes)."""

from __future__ import annotations

import pytest

from services.cache.backends.memory import MemoryBackend
from services.cache.metrics import EVICTIONS, EvictionTracker
from services.cache.policy import MAX_ENTRY_BYTES, check_key, check_tenant, max_entry_bytes, parse_ttl
from services.common.config import Cache
from services.common.errors import APIError


class Clock:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


async def test_lru_order_decides_what_is_evicted():
    b = MemoryBackend(max_entries=3, max_bytes=10_000)
    for k in ("a", "b", "c"):
        await b.put("t", k, b"v", 60)
    await b.get("t", "a")
    await b.put("t", "d", b"v", 60)
    assert await b.get("t", "b") is None
    assert [await b.get("t", k) for k in ("a", "c", "d")] == [b"v"] * 3
    assert (await b.stats())["evictions"] == 1


async def test_bytes_bound_counts_value_tenant_and_key():
    b = MemoryBackend(max_entries=100, max_bytes=1000)
    for i in range(5):
        await b.put("acme", f"k{i}", b"x" * 294, 60)  # 300 bytes each with tenant and key
    s = await b.stats()
    assert s["bytes"] == 900 and s["entries"] == 3 and s["evictions"] == 2
    await b.put("acme", "k4", b"y", 60)  # replacing shrinks
    assert (await b.stats())["bytes"] == 600 + 4 + 2 + 1


async def test_ttl_expiry_and_sweep():
    clock = Clock()
    b = MemoryBackend(max_entries=10, max_bytes=10_000, clock=clock)
    await b.put("t", "short", b"1", 5)
    await b.put("t", "long", b"2", 50)
    clock.t += 6
    assert await b.get("t", "short") is None
    await b.put("t", "other", b"3", 1)
    clock.t += 2
    s = await b.stats()  # sweeps "other" without it being read
    assert s["entries"] == 1 and s["evictions"] == 0
    assert await b.get("t", "long") == b"2"


async def test_delete_and_purge_touch_one_tenant():
    b = MemoryBackend(max_entries=10, max_bytes=10_000)
    for tenant in ("a", "a2", "b"):
        await b.put(tenant, "k", b"v", 60)
        await b.put(tenant, "j", b"v", 60)
    assert await b.delete("a", "k") is True and await b.delete("a", "k") is False
    assert await b.purge("a") == 1
    assert (await b.stats())["entries"] == 4


def test_eviction_tracker_handles_a_restarted_redis():
    before = EVICTIONS._value.get()
    tracker = EvictionTracker()
    tracker.observe(5)
    tracker.observe(7)
    tracker.observe(2)  # Redis restarted: its counter began again
    assert EVICTIONS._value.get() - before == 9


def test_policy():
    assert check_tenant("acme.eu-1@x") == "acme.eu-1@x"
    for bad in ("", "ac:me", "a*", "a/b", "x" * 65):
        with pytest.raises(APIError):
            check_tenant(bad)
    with pytest.raises(APIError):
        check_key("a:b")
    assert parse_ttl(None, 60) == 60 and parse_ttl("0.5", 60) == 0.5
    for bad in ("0", "-1", "nan", "inf", "x", str(31 * 86400)):
        with pytest.raises(APIError) as exc:
            parse_ttl(bad, 60)
        assert exc.value.status == 400 and exc.value.param == "ttl"
    assert max_entry_bytes(Cache(max_bytes=4096)) == 2048
    assert max_entry_bytes(Cache(backend="redis")) == MAX_ENTRY_BYTES
