"""The keys file store: create stores only the hash, list shows fingerprints, revoke removes,
and the file stays readable by the gateway's parser (services/common/apikeys.py) at every step.
The Secret store is exercised against the real control plane in tests/integration/ops."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from qlensctl.apikeys_store import FileKeyStore, create_key, list_keys, revoke_keys
from qlensctl.errors import ConfigError
from services.common.apikeys import KEY_PREFIX, hash_key, load_keys_file


def test_create_stores_only_the_hash(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys.json")
    key, info = create_key(store, "acme", "alice")
    assert key.startswith(KEY_PREFIX)
    text = store.path.read_text()
    assert key not in text and key[len(KEY_PREFIX):] not in text
    keys = load_keys_file(store.path)
    assert list(keys) == [hash_key(key)]
    assert (keys[hash_key(key)].tenant, keys[hash_key(key)].user) == ("acme", "alice")
    assert info.fingerprint == hash_key(key)[:12]
    assert store.path.stat().st_mode & 0o777 == 0o600


def test_list_filters_and_never_shows_keys(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys.json")
    k1, _ = create_key(store, "acme", "alice")
    create_key(store, "acme", "bob")
    create_key(store, "globex", "carol")
    rows = list_keys(store)
    assert [(r.tenant, r.user) for r in rows] == [("acme", "alice"), ("acme", "bob"), ("globex", "carol")]
    assert k1 not in json.dumps([r.as_dict() for r in rows])
    assert [r.user for r in list_keys(store, tenant="acme")] == ["alice", "bob"]


def test_revoke_by_fingerprint_and_by_tenant_user(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys.json")
    k1, i1 = create_key(store, "acme", "alice")
    k2, _ = create_key(store, "acme", "bob")
    k3, _ = create_key(store, "globex", "carol")
    removed = revoke_keys(store, fingerprint_prefix=i1.fingerprint)
    assert [r.user for r in removed] == ["alice"]
    assert hash_key(k1) not in load_keys_file(store.path)
    removed = revoke_keys(store, tenant="acme", user="bob")
    assert [r.user for r in removed] == ["bob"]
    assert list(load_keys_file(store.path)) == [hash_key(k3)]


def test_revoke_refuses_vague_or_unmatched_requests_and_changes_nothing(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys.json")
    create_key(store, "acme", "alice")
    before = store.path.read_text()
    with pytest.raises(ConfigError, match="say which keys"):
        revoke_keys(store)
    with pytest.raises(ConfigError, match="not a key fingerprint"):
        revoke_keys(store, fingerprint_prefix="abc")
    with pytest.raises(ConfigError, match="no API key matches"):
        revoke_keys(store, tenant="nobody")
    assert store.path.read_text() == before


@pytest.mark.parametrize("tenant", ["", "a b", "../etc", "x" * 65, "-lead"])
def test_bad_names_are_refused(tmp_path: Path, tenant: str) -> None:
    store = FileKeyStore(tmp_path / "keys.json")
    with pytest.raises(ConfigError, match="not a valid tenant"):
        create_key(store, tenant, "alice")
    assert not store.path.exists()


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not a QLens API keys table"):
        list_keys(FileKeyStore(path))
    with pytest.raises(ConfigError):
        create_key(FileKeyStore(path), "acme", "alice")
    assert path.read_text() == "{not json"


def test_concurrent_creates_lose_nothing(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys.json")
    made: list[str] = []

    def worker() -> None:
        for _ in range(5):
            made.append(create_key(FileKeyStore(store.path), "acme", "alice")[0])

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert set(load_keys_file(store.path)) == {hash_key(k) for k in made}
    assert len(made) == 20
