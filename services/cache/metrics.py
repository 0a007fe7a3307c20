"""The cache service's own metrics (prefix qlens_cache_); shared names live in services.common.metrics.

`qlens_cache_requests_total{result}` (hit|miss|bypass) is the shared counter; the gateway counts
the same results from its side. Entries, bytes and evictions are read from the backend when
Prometheus scrapes (Redis: a bounded keyspace walk, at most every 30 s).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS

WRITES = Counter("qlens_cache_writes_total", "Cache stores by result", ["result"])
EVICTIONS = Counter("qlens_cache_evictions_total", "Entries evicted to stay within the size bounds")
ENTRIES = Gauge("qlens_cache_entries", "Entries in the cache")
BYTES = Gauge("qlens_cache_bytes", "Bytes of entries in the cache")
BACKEND_UP = Gauge("qlens_cache_backend_up", "1 when the cache backend answered its last call")
BACKEND_LATENCY = Histogram(
    "qlens_cache_backend_latency_seconds", "Cache backend call latency", ["op"], buckets=LATENCY_BUCKETS
)


class EvictionTracker:
    """Turn a backend's running eviction total into counter increments (Redis restarts reset it)."""

    def __init__(self) -> None:
        self.last = 0

    def observe(self, total: int) -> None:
        delta = total - self.last if total >= self.last else total
        if delta > 0:
            EVICTIONS.inc(delta)
        self.last = total


_children: dict[tuple[Any, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """A metric's child for these label values, cached: `labels()` validates and locks on every
    call, which shows on the hot path. All label values here are bounded (ops, routes, statuses)."""
    key = (metric, labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found
