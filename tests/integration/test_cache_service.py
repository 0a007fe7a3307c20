"""The cache service as a real process (`python -m services.cache`), on both backends.

The same behaviour tests run against the memory backend and against a real redis-server; the
Redis-only tests kill Redis under the running service and bring it back.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis as redis_sync
import yaml

from qlensctl.local import free_port, start_service, wait_ready
from tests.support.redis_server import RedisServer

MAX_ENTRIES = 5
MAX_BYTES = 4096
MEMORY_MAX_ENTRY = MAX_BYTES // 2
REDIS_MAX_ENTRY = 8 * 1024 * 1024
KEY = "a" * 64


@dataclass
class CacheProcess:
    url: str
    backend: str
    proc: subprocess.Popen[bytes]
    log: Path
    client: httpx.Client
    redis: RedisServer | None = None

    def entry(self, tenant: str, key: str = KEY) -> str:
        return f"/v1/cache/{tenant}/{key}"

    def put(self, tenant: str, key: str, value: bytes, ttl: float | None = None) -> httpx.Response:
        params = {} if ttl is None else {"ttl": ttl}
        return self.client.put(self.entry(tenant, key), content=value, params=params)

    def get(self, tenant: str, key: str = KEY) -> httpx.Response:
        return self.client.get(self.entry(tenant, key))


def start_cache(tmp_path: Path, backend: str, redis: RedisServer | None, **cache: object) -> CacheProcess:
    config = tmp_path / "env.yaml"
    config.write_text(yaml.safe_dump({"name": "test", "cache": {
        "backend": backend, "ttlSeconds": 60, "maxEntries": MAX_ENTRIES, "maxBytes": MAX_BYTES, **cache}}))
    port = free_port()
    env = {"QLENS_REDIS_URL": redis.url if redis else ""}
    svc, proc = start_service("cache", port, config, tmp_path / "logs", extra_env=env)
    try:
        wait_ready(svc.url, timeout=30, alive=lambda: proc.poll() is None)
    except Exception:
        proc.kill()
        proc.wait()
        raise
    client = httpx.Client(base_url=svc.url, timeout=5.0, trust_env=False)
    return CacheProcess(svc.url, backend, proc, Path(svc.log), client, redis)


def stop_cache(cache: CacheProcess) -> None:
    cache.client.close()
    cache.proc.terminate()
    try:
        cache.proc.wait(10)
    except subprocess.TimeoutExpired:
        cache.proc.kill()
        cache.proc.wait()


@pytest.fixture(params=["memory", "redis"])
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CacheProcess]:
    redis = request.getfixturevalue("redis_server") if request.param == "redis" else None
    proc = start_cache(tmp_path, request.param, redis)
    try:
        yield proc
    finally:
        stop_cache(proc)


@pytest.fixture
def redis_cache(redis_server: RedisServer, tmp_path: Path) -> Iterator[CacheProcess]:
    proc = start_cache(tmp_path, "redis", redis_server)
    try:
        yield proc
    finally:
        stop_cache(proc)


def stats(cache: CacheProcess) -> dict:
    r = cache.client.get("/v1/cache/stats")
    assert r.status_code == 200
    return r.json()


# --- behaviour on both backends --------------------------------------------------------------------


def test_miss_then_hit_returns_the_exact_bytes(cache: CacheProcess):
    value = bytes(range(256)) + b'{"not": "re-encoded" }'
    miss = cache.get("acme")
    assert miss.status_code == 404 and miss.json()["error"]["code"] == "cache_miss"
    assert cache.put("acme", KEY, value).status_code == 204
    hit = cache.get("acme")
    assert hit.status_code == 200 and hit.content == value
    s = stats(cache)
    assert s["backend"] == cache.backend and s["hits"] == 1 and s["misses"] == 1 and s["entries"] == 1
    metrics = cache.client.get("/metrics").text
    assert 'qlens_cache_requests_total{result="hit"} 1.0' in metrics
    assert "qlens_cache_entries 1.0" in metrics


def test_put_replaces_an_entry(cache: CacheProcess):
    cache.put("acme", KEY, b"one")
    cache.put("acme", KEY, b"two")
    assert cache.get("acme").content == b"two"
    assert stats(cache)["entries"] == 1


def test_tenants_never_see_each_other(cache: CacheProcess):
    cache.put("acme", KEY, b"acme's answer")
    assert cache.get("globex").status_code == 404
    cache.put("globex", KEY, b"globex's answer")
    cache.put("globex", "b" * 64, b"more")
    assert cache.get("acme").content == b"acme's answer"

    purged = cache.client.delete("/v1/cache/globex")
    assert purged.status_code == 200 and purged.json() == {"deleted": 2}
    assert cache.get("globex").status_code == 404
    assert cache.get("acme").content == b"acme's answer"

    assert cache.client.delete(cache.entry("acme")).status_code == 204
    assert cache.get("acme").status_code == 404
    assert cache.client.delete(cache.entry("acme")).status_code == 204  # idempotent


def test_entries_expire_after_their_ttl(cache: CacheProcess):
    cache.put("acme", KEY, b"short-lived", ttl=0.3)
    cache.put("acme", "b" * 64, b"default ttl")
    deadline = time.monotonic() + 10
    while cache.get("acme").status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cache.get("acme").status_code == 404
    assert cache.get("acme", "b" * 64).status_code == 200  # the default TTL (60 s) still holds


def test_too_large_entries_are_refused_and_change_nothing(cache: CacheProcess):
    limit = MEMORY_MAX_ENTRY if cache.backend == "memory" else REDIS_MAX_ENTRY
    cache.put("acme", KEY, b"kept")
    r = cache.put("acme", KEY, b"x" * (limit + 1))
    assert r.status_code == 413 and r.json()["error"]["code"] == "entry_too_large"
    assert cache.get("acme").content == b"kept"
    assert cache.put("acme", "c" * 64, b"x" * (limit - 200)).status_code == 204


BAD_INPUT = [
    ("/v1/cache/ac:me/" + KEY, {}, "tenant"), ("/v1/cache/acme*/" + KEY, {}, "tenant"),
    ("/v1/cache/acme/" + "k" * 129, {}, "key"), ("/v1/cache/acme/" + KEY, {"ttl": "soon"}, "ttl"),
    ("/v1/cache/acme/" + KEY, {"ttl": "-1"}, "ttl"), ("/v1/cache/acme/" + KEY, {"ttl": "inf"}, "ttl"),
]


def test_bad_input_is_a_400_and_stores_nothing(cache: CacheProcess):
    for path, params, param in BAD_INPUT:
        r = cache.client.put(path, content=b"v", params=params)
        assert r.status_code == 400, (path, params)
        assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"
    assert stats(cache)["entries"] == 0
    assert cache.client.delete("/v1/cache/acme*").status_code == 400  # never a wildcard purge


def test_health_and_readiness(cache: CacheProcess):
    assert cache.client.get("/health").json()["status"] == "ok"
    ready = cache.client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["checks"]["backend"]["ok"] is True


# --- bounds -------------------------------------------------------------------------------------------


def test_memory_backend_is_lru_bounded_by_entries_and_bytes(tmp_path: Path):
    cache = start_cache(tmp_path, "memory", None)
    try:
        for i in range(MAX_ENTRIES):
            cache.put("acme", f"k{i}", b"v")
        assert cache.get("acme", "k0").status_code == 200  # k0 is now the most recently used
        cache.put("acme", "k5", b"v")
        assert cache.get("acme", "k1").status_code == 404  # the least recently used went
        assert all(cache.get("acme", f"k{i}").status_code == 200 for i in (0, 2, 3, 4, 5))
        s = stats(cache)
        assert s["entries"] == MAX_ENTRIES and s["evictions"] == 1

        big = b"x" * 1500  # three of these exceed maxBytes (4096)
        for i in range(3):
            cache.put("acme", f"big{i}", big)
        s = stats(cache)
        assert s["bytes"] <= MAX_BYTES and s["entries"] <= MAX_ENTRIES
        assert cache.get("acme", "big2").content == big and cache.get("acme", "big0").status_code == 404
        assert "qlens_cache_evictions_total" in cache.client.get("/metrics").text
    finally:
        stop_cache(cache)


def test_redis_backend_is_bounded_by_redis_maxmemory(redis_cache: CacheProcess):
    r = redis_sync.Redis.from_url(redis_cache.redis.url)
    used = int(r.info("memory")["used_memory"])
    r.config_set("maxmemory", used + 256 * 1024)
    r.config_set("maxmemory-policy", "allkeys-lru")
    value = b"x" * 8192
    for i in range(100):  # ~800 KiB into a 256 KiB allowance
        assert redis_cache.put("acme", f"k{i}", value).status_code == 204
    assert redis_cache.get("acme", "k99").content == value  # the newest entry is there
    s = stats(redis_cache)
    assert s["evictions"] > 0 and s["entries"] < 100
    r.close()


# --- Redis specifics ------------------------------------------------------------------------------------


def test_redis_layout_is_per_tenant_prefixes_with_ttl(redis_cache: CacheProcess):
    r = redis_sync.Redis.from_url(redis_cache.redis.url)
    r.set("qlens:budget:2026-01-01:total:all", b"untouched")
    redis_cache.put("acme", KEY, b"v", ttl=120)
    redis_cache.put("acme2", KEY, b"v")
    assert r.get(f"qlens:cache:acme:{KEY}") == b"v"
    assert 0 < r.pttl(f"qlens:cache:acme:{KEY}") <= 120_000
    assert redis_cache.client.delete("/v1/cache/acme").json() == {"deleted": 1}
    assert r.exists(f"qlens:cache:acme2:{KEY}") and r.exists("qlens:budget:2026-01-01:total:all")
    r.close()


def test_redis_killed_mid_test_answers_503_then_recovers(redis_cache: CacheProcess):
    cache = redis_cache
    assert cache.put("acme", KEY, b"before").status_code == 204
    assert cache.get("acme").content == b"before"

    cache.redis.stop()
    for response in (cache.get("acme"), cache.put("acme", KEY, b"during"),
                     cache.client.delete(cache.entry("acme")), cache.client.delete("/v1/cache/acme"),
                     cache.client.get("/v1/cache/stats")):
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "cache_unavailable"
    assert cache.client.get("/health").status_code == 200  # alive, so not restarted by Kubernetes
    ready = cache.client.get("/health/ready")
    assert ready.status_code == 503 and ready.json()["checks"]["backend"]["ok"] is False
    assert 'qlens_cache_requests_total{result="bypass"}' in cache.client.get("/metrics").text

    cache.redis.start()  # same port, empty (no persistence): the service reconnects by itself
    deadline = time.monotonic() + 15
    while cache.get("acme").status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cache.get("acme").status_code == 404
    assert cache.put("acme", KEY, b"after").status_code == 204
    assert cache.get("acme").content == b"after"
    assert cache.client.get("/health/ready").status_code == 200
    log = cache.log.read_text()
    assert "cache backend unreachable" in log and "cache backend reachable again" in log
    assert "Traceback" not in log


def test_redis_backend_without_a_url_is_a_clear_start_error(tmp_path: Path):
    config = tmp_path / "env.yaml"
    config.write_text(yaml.safe_dump({"name": "test", "cache": {"backend": "redis"}}))
    _, proc = start_service("cache", free_port(), config, tmp_path / "logs",
                            extra_env={"QLENS_REDIS_URL": ""})
    try:
        assert proc.wait(30) == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (tmp_path / "logs" / "cache.log").read_text()
    assert "QLENS_REDIS_URL is not set" in log and "Traceback" not in log
