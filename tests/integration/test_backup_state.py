"""`backup --state` / `restore --state` against a real redis-server: every qlens:* key comes back
with its value, type and remaining time; nothing else is touched; bad files change nothing. (An
unreachable Redis: tests/unit/test_backup_state.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from qlensctl.backup import backup_state, read_state, restore_state, state_file_for
from qlensctl.errors import ConfigError, OperationError

pytestmark = pytest.mark.redis


def _seed(r: redis.Redis) -> None:
    r.set("qlens:budget:2026-03-14:total", "12.5", ex=3600)
    r.hset("qlens:budget:2026-03-14:tenant:acme", mapping={"spent": "3.25", "reserved": "0"})
    r.set("qlens:cache:acme:" + "ab" * 32, b"\x00\x01binary answer\xff", ex=600)
    r.set("qlens:no-ttl", "forever")
    r.set("other-app:key", "not ours")


def test_state_round_trip(tmp_path: Path, redis_server) -> None:
    r = redis.Redis.from_url(redis_server.url)
    _seed(r)
    values_file = tmp_path / "values-20260314.yaml"
    path, count = backup_state(redis_server.url, values_file)
    assert path == state_file_for(values_file) == tmp_path / "state-20260314.json"
    assert count == 4
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(OperationError, match="not overwriting"):
        backup_state(redis_server.url, values_file)

    r.flushall()
    r.set("qlens:budget:2026-03-14:total", "999")  # restore replaces what is there
    restored, expired = restore_state(redis_server.url, path)
    assert (restored, expired) == (4, 0)
    assert r.get("qlens:budget:2026-03-14:total") == b"12.5"
    assert r.hgetall("qlens:budget:2026-03-14:tenant:acme") == {b"spent": b"3.25", b"reserved": b"0"}
    assert r.get("qlens:cache:acme:" + "ab" * 32) == b"\x00\x01binary answer\xff"
    assert 0 < r.ttl("qlens:budget:2026-03-14:total") <= 3600
    assert 0 < r.ttl("qlens:cache:acme:" + "ab" * 32) <= 600
    assert r.ttl("qlens:no-ttl") == -1
    assert r.get("other-app:key") is None  # never ours to save
    r.close()


def test_keys_that_expired_since_the_backup_stay_gone(tmp_path: Path, redis_server) -> None:
    r = redis.Redis.from_url(redis_server.url)
    r.set("qlens:cache:t:k", "v", ex=600)
    path, _ = backup_state(redis_server.url, tmp_path / "values-20260314.yaml")
    doc = json.loads(path.read_text())
    doc["keys"][0]["expiresAtMs"] = 1_000  # long ago
    path.write_text(json.dumps(doc))
    r.flushall()
    assert restore_state(redis_server.url, path) == (0, 1)
    assert r.exists("qlens:cache:t:k") == 0
    r.close()


@pytest.mark.parametrize("text", ["not json", json.dumps({"format": "other"}),
                                  json.dumps({"format": "qlens-state-backup/1", "keys": [{"key": "!!"}]})])
def test_bad_state_files_are_refused_and_change_nothing(tmp_path: Path, redis_server, text: str) -> None:
    r = redis.Redis.from_url(redis_server.url)
    r.set("qlens:keep", "me")
    path = tmp_path / "state-20260314.json"
    path.write_text(text)
    with pytest.raises(ConfigError):
        read_state(path)
    with pytest.raises(ConfigError):
        restore_state(redis_server.url, path)
    assert r.keys("*") == [b"qlens:keep"]
    r.close()
