"""API keys at the gateway: hashed lookup, reload on change, required vs optional, and safe user names."""

from __future__ import annotations

import os
import time

import pytest

from services.common.apikeys import NAME_RE, KeyEntry, dump_keys, generate_key, hash_key
from services.common.errors import APIError
from services.gateway import auth
from services.gateway.auth import Authenticator, KeyStore, keys_file_path, user_from_field


def write_keys(path, keys: dict[str, tuple[str, str]]) -> None:
    path.write_text(dump_keys({hash_key(k): KeyEntry(t, u) for k, (t, u) in keys.items()}))


def test_a_known_key_maps_to_its_tenant_and_user(tmp_path):
    key = generate_key()
    write_keys(tmp_path / "keys.json", {key: ("acme", "alice")})
    a = Authenticator(KeyStore(str(tmp_path / "keys.json")), required=True)
    caller = a.caller(f"Bearer {key}", user_field="mallory")
    assert (caller.tenant, caller.user, caller.authenticated) == ("acme", "alice", True)
    assert a.caller(f"bearer   {key}  ").tenant == "acme"  # scheme is case-insensitive


@pytest.mark.parametrize(("header", "code"), [
    (None, "missing_api_key"),
    ("", "missing_api_key"),
    ("Basic dXNlcjpwYXNz", "missing_api_key"),
    ("Bearer", "missing_api_key"),
    ("Bearer qlk-not-a-real-key", "invalid_api_key"),
])
def test_required_auth_refuses_missing_and_unknown_keys_without_echoing_them(tmp_path, header, code):
    write_keys(tmp_path / "keys.json", {generate_key(): ("acme", "alice")})
    a = Authenticator(KeyStore(str(tmp_path / "keys.json")), required=True)
    with pytest.raises(APIError) as info:
        a.check(header)
    assert info.value.status == 401 and info.value.code == code
    assert "qlk-not-a-real-key" not in info.value.message


def test_optional_auth_runs_as_default_tenant_with_the_request_user(tmp_path):
    key = generate_key()
    write_keys(tmp_path / "keys.json", {key: ("acme", "alice")})
    a = Authenticator(KeyStore(str(tmp_path / "keys.json")), required=False)
    assert a.caller("Bearer anything-locally", "bob") == auth.Caller("default", "bob", False)
    assert a.caller(None, None) == auth.Caller("default", "anonymous", False)
    assert a.caller(f"Bearer {key}", "bob").tenant == "acme"  # a valid key still counts


def test_no_keys_file_at_all_with_optional_auth(tmp_path):
    a = Authenticator(KeyStore(None), required=False)
    assert a.caller("Bearer whatever").tenant == "default"


def test_revoking_a_key_in_the_file_takes_effect_without_restart(tmp_path):
    path = tmp_path / "keys.json"
    k1, k2 = generate_key(), generate_key()
    write_keys(path, {k1: ("acme", "alice"), k2: ("beta", "bob")})
    # the store re-stats at most once a second; recheck_seconds=0 spares the test that wait
    a = Authenticator(KeyStore(str(path), recheck_seconds=0), required=True)
    assert a.caller(f"Bearer {k1}").tenant == "acme"
    write_keys(path, {k2: ("beta", "bob")})
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))  # a distinct mtime even on coarse clocks
    with pytest.raises(APIError):
        a.check(f"Bearer {k1}")
    assert a.caller(f"Bearer {k2}").tenant == "beta"


def test_changes_are_checked_at_most_once_a_second(tmp_path):
    path = tmp_path / "keys.json"
    k1 = generate_key()
    write_keys(path, {k1: ("acme", "alice")})
    store = KeyStore(str(path))
    write_keys(path, {})
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert store.lookup(k1) is not None  # within the second: not re-read yet
    store._checked -= store.recheck_seconds  # a second later
    assert store.lookup(k1) is None


def test_a_broken_file_keeps_the_last_good_keys(tmp_path):
    path = tmp_path / "keys.json"
    k1 = generate_key()
    write_keys(path, {k1: ("acme", "alice")})
    store = KeyStore(str(path), recheck_seconds=0)
    path.write_text("{not json")
    assert store.lookup(k1) is not None


def test_a_missing_file_accepts_no_key_until_it_appears(tmp_path):
    path = tmp_path / "keys.json"
    store = KeyStore(str(path), recheck_seconds=0)
    k1 = generate_key()
    assert store.lookup(k1) is None
    write_keys(path, {k1: ("acme", "alice")})
    assert store.lookup(k1).tenant == "acme"


def test_keys_file_from_environment_wins_over_config(monkeypatch):
    monkeypatch.setenv("QLENS_API_KEYS_FILE", "/env/keys.json")
    assert keys_file_path("/cfg/keys.json") == "/env/keys.json"
    monkeypatch.delenv("QLENS_API_KEYS_FILE")
    assert keys_file_path("/cfg/keys.json") == "/cfg/keys.json"
    assert keys_file_path(None) is None


@pytest.mark.parametrize("value", ["alice", "a.b-c_d@example.com", "x" * 64])
def test_tame_user_fields_are_kept(value):
    assert user_from_field(value) == value


@pytest.mark.parametrize("value", ["x" * 65, "alice smith", "../etc", "line\r\nbreak", "ünïcode", "-lead"])
def test_other_user_fields_become_a_stable_safe_name(value):
    name = user_from_field(value)
    assert name != value and NAME_RE.match(name)
    assert user_from_field(value) == name  # the same user keeps the same budget scope
    assert user_from_field(value + "!") != name


def test_runtime_records_win_and_revoked_or_expired_keys_are_401_even_without_required_auth(tmp_path):
    alive, revoked, expired, limited = (generate_key() for _ in range(4))
    write_keys(tmp_path / "keys.json", {alive: ("acme", "alice"), revoked: ("acme", "bob")})
    runtime = {hash_key(revoked): KeyEntry("acme", "bob", revoked=True),
               hash_key(expired): KeyEntry("acme", "eve", expires_at="2026-01-01T00:00:00Z"),
               hash_key(limited): KeyEntry("beta", "lim", models=("echo",), limits={"rpm": 5})}
    a = Authenticator(KeyStore(str(tmp_path / "keys.json")), required=False, runtime=runtime.get,
                      clock=lambda: 1_767_225_600.0)  # 2026-01-01T00:00:00Z: the expiry itself
    assert a.caller(f"Bearer {alive}").tenant == "acme"
    for key, message in ((revoked, "This API key has been revoked."), (expired, "This API key has expired.")):
        with pytest.raises(APIError) as info:
            a.check(f"Bearer {key}")
        assert (info.value.status, info.value.code, info.value.message) == (401, "invalid_api_key", message)
    found = a.check(f"Bearer {limited}")
    caller = a.caller_for(found)
    assert (caller.tenant, caller.key, caller.key_limits) == ("beta", hash_key(limited)[:12], {"rpm": 5})
    a.check_model(found, "echo")
    with pytest.raises(APIError) as info:
        a.check_model(found, "gpt-4")
    assert (info.value.status, info.value.code, info.value.param) == (403, "model_not_allowed", "model")
    a.check_model(a.check(f"Bearer {alive}"), "gpt-4")  # no allow-list: every model


def test_key_entries_round_trip_and_bad_optional_fields_are_refused():
    from services.common.apikeys import parse_keys

    entry = KeyEntry("acme", "alice", "2026-01-01T00:00:00Z", "ci", "2027-01-01T00:00:00Z", ("echo",),
                     {"daily": 1.5})
    digest = hash_key(generate_key())
    assert parse_keys(dump_keys({digest: entry})) == {digest: entry}
    plain = dump_keys({digest: KeyEntry("acme", "alice")})
    assert "expiresAt" not in plain and "models" not in plain  # old files keep their shape
    for bad in ({"models": "echo"}, {"limits": [1]}, {"expiresAt": "someday"}):
        with pytest.raises(ValueError):
            KeyEntry.from_json({"tenant": "acme", "user": "alice", **bad})
