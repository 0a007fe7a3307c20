"""The admin API on two real gateway replicas sharing one real Redis (and one router and cache).

Replica A is the stack's gateway; replica B is a second gateway process on the same environment,
keys file, admin keys file and Redis. Client keys: alice (tenant acme) and bob (tenant beta) from
the keys file. Admin keys: ops (kept) and old (revoked by removing it from the admin keys file).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from qlensctl.local import free_port, start_service, stop_pid, wait_ready
from services.common.apikeys import dump_admin_keys, generate_key, hash_key
from tests.support.redis_server import RedisServer
from tests.support.stack import RunningStack, running_stack

pytestmark = pytest.mark.timeout(300)

CHAT = "/v1/chat/completions"
KEYS = {"alice": ("acme", "alice"), "bob": ("beta", "bob")}
ECHO_B = {"displayName": "Echo B", "pricing": {"input": 0.001, "output": 0.002},
          "deployments": [{"provider": "echo", "target": "echo-b"}]}
# every admin route, with a body where it takes one
ROUTES = [("GET", "/admin/v1/keys", None), ("POST", "/admin/v1/keys", {"tenant": "acme", "user": "x"}),
          ("GET", "/admin/v1/keys/000000000000", None), ("PATCH", "/admin/v1/keys/000000000000", {}),
          ("DELETE", "/admin/v1/keys/000000000000", None), ("GET", "/admin/v1/tenants", None),
          ("GET", "/admin/v1/tenants/acme", None), ("PUT", "/admin/v1/tenants/acme/limits", {"rpm": 1}),
          ("DELETE", "/admin/v1/tenants/acme/limits", None), ("GET", "/admin/v1/usage", None)]


@dataclass
class Replicas:
    a: RunningStack
    b_url: str
    admin_file: Path
    ops: str
    old: str

    def admin(self, method: str, path: str, body: object = None, key: str | None = None,
              url: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key or self.ops}"}
        url = url or self.a.gateway_url
        return httpx.request(method, url + path, json=body, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory) -> Iterator[Replicas]:
    root = tmp_path_factory.mktemp("admin")
    redis = RedisServer(root / "redis").start()
    ops, old = generate_key(), generate_key()
    admin_file = root / "admin-keys.json"
    admin_file.write_text(dump_admin_keys({hash_key(ops): "ops", hash_key(old): "old"}))
    env = {"auth": {"required": True}, "admin": {"enabled": True},
           "costControls": {"store": "redis", "onStoreFailure": "failClosed"},
           "cache": {"enabled": False}, "models": {"echo-b": ECHO_B}}
    extra = {"QLENS_REDIS_URL": redis.url, "QLENS_ADMIN_KEYS_FILE": str(admin_file)}
    try:
        with running_stack(root / "a", env, extra_env=extra, keys=KEYS) as a:
            b_env = {**extra, "QLENS_API_KEYS_FILE": str(a.directory / "keys.json"),
                     "QLENS_ROUTER_URL": a.url("router"), "QLENS_CACHE_URL": a.url("cache"),
                     "AZURE_OPENAI_ENDPOINT": "", "AWS_ACCESS_KEY_ID": ""}
            svc, proc = start_service("gateway", free_port(), a.directory / "environment.yaml",
                                      root / "b-logs", b_env)
            try:
                wait_ready(svc.url, 60, alive=lambda: proc.poll() is None)
                yield Replicas(a, svc.url, admin_file, ops, old)
            finally:
                stop_pid(proc.pid)
    finally:
        redis.stop()


def chat(url: str, key: str, model: str = "echo") -> httpx.Response:
    payload = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
    return httpx.post(url + CHAT, json=payload, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def within(seconds: float, check) -> bool:
    """Poll `check` until it holds or `seconds` pass (a promise under test, so a bounded wait)."""
    deadline = time.monotonic() + seconds
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def test_every_route_refuses_no_key_and_client_keys(replicas: Replicas):
    alice = replicas.a.keys["alice"]
    for method, path, body in ROUTES:
        r = httpx.request(method, replicas.a.gateway_url + path, json=body, timeout=30)
        assert r.status_code == 401, (method, path)
        err = r.json()["error"]
        assert err["type"] == "authentication_error" and err["code"] == "missing_api_key"
        r = replicas.admin(method, path, body, key=alice)
        assert r.status_code == 403, (method, path)
        assert r.json()["error"] == {"message": "Client API keys cannot use the admin API; use an admin key.",
                                     "type": "permission_error", "param": None, "code": "admin_key_required"}
        r = replicas.admin(method, path, body, key="qlk-never-issued")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    # nothing of that changed anything: no runtime key, no override
    assert all(k["source"] == "file" for k in replicas.admin("GET", "/admin/v1/keys").json()["data"])
    assert replicas.admin("GET", "/admin/v1/tenants/acme").json()["overrides"] is None


def test_a_revoked_admin_key_is_refused_on_every_route(replicas: Replicas):
    assert replicas.admin("GET", "/admin/v1/keys", key=replicas.old).status_code == 200
    replicas.admin_file.write_text(dump_admin_keys({hash_key(replicas.ops): "ops"}))
    for url in (replicas.a.gateway_url, replicas.b_url):
        assert within(5, lambda u=url: replicas.admin("GET", "/admin/v1/keys", key=replicas.old,
                                                      url=u).status_code == 401)
    for method, path, body in ROUTES:
        r = replicas.admin(method, path, body, key=replicas.old)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (method, path)
    assert replicas.admin("GET", "/admin/v1/keys").status_code == 200  # ops still works


def test_create_returns_the_key_once_and_it_works_on_both_replicas(replicas: Replicas):
    r = replicas.admin("POST", "/admin/v1/keys", {"tenant": "gamma", "user": "gus", "description": "ci"})
    assert r.status_code == 201
    created = r.json()
    key, fp = created["key"], created["fingerprint"]
    assert key.startswith("qlk-") and fp == hash_key(key)[:12]
    assert {k: created[k] for k in ("tenant", "user", "description", "revoked", "source", "models")} == {
        "tenant": "gamma", "user": "gus", "description": "ci", "revoked": False, "source": "admin",
        "models": None}
    listing = replicas.admin("GET", "/admin/v1/keys?tenant=gamma")
    assert [k["fingerprint"] for k in listing.json()["data"]] == [fp]
    assert key not in listing.text
    # replica B sees A's write within a second (its snapshot polls the store), not at once
    assert within(1.0, lambda: replicas.admin("GET", f"/admin/v1/keys/{fp}", url=replicas.b_url).status_code
                  == 200)
    got = replicas.admin("GET", f"/admin/v1/keys/{fp}", url=replicas.b_url)
    assert "key" not in got.json() and got.json()["tenant"] == "gamma"
    r = chat(replicas.a.gateway_url, key)
    assert r.status_code == 200, r.text
    assert within(1.0, lambda: chat(replicas.b_url, key).status_code == 200)
    assert key not in replicas.a.log("gateway")


def test_revoke_on_a_is_enforced_by_b_within_a_second(replicas: Replicas):
    key = replicas.admin("POST", "/admin/v1/keys", {"tenant": "gamma", "user": "rev"}).json()["key"]
    assert within(1.0, lambda: chat(replicas.b_url, key).status_code == 200)
    r = replicas.admin("DELETE", f"/admin/v1/keys/{hash_key(key)[:12]}")
    assert r.status_code == 200 and r.json()["revoked"] is True
    assert within(1.0, lambda: chat(replicas.b_url, key).status_code == 401)
    r = chat(replicas.b_url, key)
    assert r.json()["error"] == {"message": "This API key has been revoked.", "type": "authentication_error",
                                 "param": None, "code": "invalid_api_key"}
    assert chat(replicas.a.gateway_url, key).status_code == 401


def test_a_file_key_can_be_revoked_at_runtime(replicas: Replicas):
    key = generate_key()  # a key added to the file later, then revoked through the API
    keys_file = replicas.a.directory / "keys.json"
    data = json.loads(keys_file.read_text())
    data["keys"][hash_key(key)] = {"tenant": "delta", "user": "dan", "created": ""}
    keys_file.write_text(json.dumps(data))
    for url in (replicas.a.gateway_url, replicas.b_url):  # both re-read the file
        assert within(5, lambda u=url: chat(u, key).status_code == 200)
    assert replicas.admin("DELETE", f"/admin/v1/keys/{hash_key(key)[:12]}").status_code == 200
    assert within(1.0, lambda: chat(replicas.b_url, key).status_code == 401)


def test_tenant_limit_lowered_on_a_is_enforced_by_b_within_a_second(replicas: Replicas):
    bob = replicas.a.keys["bob"]
    assert chat(replicas.b_url, bob).status_code == 200
    r = replicas.admin("PUT", "/admin/v1/tenants/beta/limits", {"daily": 0.000001})
    assert r.status_code == 200
    assert r.json()["overrides"] == {"daily": 0.000001} and r.json()["limits"]["daily"] == 0.000001
    assert within(1.0, lambda: chat(replicas.b_url, bob).status_code == 429)
    err = chat(replicas.b_url, bob).json()["error"]
    assert err["code"] == "budget_exceeded" and "daily tenant budget of $0.00" in err["message"]
    assert chat(replicas.b_url, replicas.a.keys["alice"]).status_code == 200  # another tenant
    assert replicas.admin("DELETE", "/admin/v1/tenants/beta/limits").json()["overrides"] is None
    assert within(1.0, lambda: chat(replicas.b_url, bob).status_code == 200)


def test_expired_key_is_401_and_the_allow_list_is_403(replicas: Replicas):
    expired = replicas.admin("POST", "/admin/v1/keys", {"tenant": "gamma", "user": "old",
                                                        "expiresAt": "2020-01-01T00:00:00Z"}).json()["key"]
    r = chat(replicas.a.gateway_url, expired)
    assert r.status_code == 401 and r.json()["error"]["message"] == "This API key has expired."
    limited = replicas.admin("POST", "/admin/v1/keys", {"tenant": "gamma", "user": "lim",
                                                        "models": ["echo"]}).json()
    key = limited["key"]
    assert limited["models"] == ["echo"]
    assert chat(replicas.a.gateway_url, key).status_code == 200
    r = chat(replicas.a.gateway_url, key, model="echo-b")
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "model_not_allowed" and r.json()["error"]["param"] == "model"
    models = httpx.get(replicas.a.gateway_url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert [m["id"] for m in models.json()["data"]] == ["echo"]
    alice = httpx.get(replicas.a.gateway_url + "/v1/models",
                      headers={"Authorization": f"Bearer {replicas.a.keys['alice']}"})
    assert sorted(m["id"] for m in alice.json()["data"]) == ["echo", "echo-b"]
    # widen the allow-list at runtime
    r = replicas.admin("PATCH", f"/admin/v1/keys/{limited['fingerprint']}", {"models": ["echo", "echo-b"]})
    assert r.status_code == 200 and r.json()["models"] == ["echo", "echo-b"]
    assert chat(replicas.a.gateway_url, key, model="echo-b").status_code == 200


def test_per_key_limits_from_the_api(replicas: Replicas):
    body = {"tenant": "gamma", "user": "rpm", "limits": {"rpm": 2}}
    created = replicas.admin("POST", "/admin/v1/keys", body).json()
    assert created["limits"] == {"rpm": 2}
    codes = [chat(replicas.a.gateway_url, created["key"]).status_code for _ in range(3)]
    if codes != [200, 200, 429]:  # a minute boundary fell between them: the next minute is fresh
        codes = [chat(replicas.a.gateway_url, created["key"]).status_code for _ in range(3)]
    assert codes.count(429) >= 1 and codes[0] == 200


BAD_KEY_BODIES = [
    b"{not json", b"[]", b'{"user": "x"}', b'{"tenant": "acme", "user": "x", "colour": "red"}',
    b'{"tenant": "ac me", "user": "x"}', b'{"tenant": "acme", "user": "x", "expiresAt": "tomorrow"}',
    b'{"tenant": "acme", "user": "x", "models": ["gpt-99"]}',
    b'{"tenant": "acme", "user": "x", "limits": {"rpm": -1}}',
    b'{"tenant": "acme", "user": "x", "limits": {"daily": "lots"}}',
]
BAD_LIMITS = [b"", b"{}", b'{"rpm": -5}', b'{"daily": "lots"}', b'{"hourly": 5}', b'{"monthly": 1e999}']


def test_malformed_bodies_are_400_and_change_nothing(replicas: Replicas):
    before_keys = replicas.admin("GET", "/admin/v1/keys").json()
    before_tenant = replicas.admin("GET", "/admin/v1/tenants/acme").json()
    headers = {"Authorization": f"Bearer {replicas.ops}", "content-type": "application/json"}
    url = replicas.a.gateway_url
    for raw in BAD_KEY_BODIES:
        r = httpx.post(url + "/admin/v1/keys", content=raw, headers=headers)
        assert r.status_code == 400, raw
        assert r.json()["error"]["type"] == "invalid_request_error", raw
    for raw in BAD_LIMITS:
        r = httpx.put(url + "/admin/v1/tenants/acme/limits", content=raw, headers=headers)
        assert r.status_code == 400, raw
    fp = before_keys["data"][0]["fingerprint"]
    for raw in (b'{"expiresAt": "soon"}', b'{"models": "echo"}', b'{"tenant": "other"}'):
        r = httpx.patch(url + f"/admin/v1/keys/{fp}", content=raw, headers=headers)
        assert r.status_code == 400, raw
    assert replicas.admin("GET", "/admin/v1/keys/NOTHEX").status_code == 400
    assert replicas.admin("GET", "/admin/v1/keys/abcdefabcdef").status_code == 404
    assert replicas.admin("GET", "/admin/v1/usage?from=yesterday").status_code == 400
    assert replicas.admin("GET", "/admin/v1/usage?by=colour").status_code == 400
    assert replicas.admin("GET", "/admin/v1/keys").json() == before_keys
    assert replicas.admin("GET", "/admin/v1/tenants/acme").json() == before_tenant


def test_usage_by_tenant_and_a_client_never_reads_another_tenant(replicas: Replicas):
    alice, bob = replicas.a.keys["alice"], replicas.a.keys["bob"]
    assert chat(replicas.a.gateway_url, alice).status_code == 200
    assert chat(replicas.b_url, bob).status_code == 200
    report = replicas.admin("GET", "/admin/v1/usage?by=tenant").json()
    tenants = {row["tenant"]: row for row in report["data"]}
    assert {"acme", "beta"} <= set(tenants)
    assert tenants["acme"]["requests"] >= 1 and tenants["acme"]["cost_micros"] > 0
    assert report["total"]["requests"] == sum(row["requests"] for row in report["data"])
    auth = {"Authorization": f"Bearer {alice}"}
    own = httpx.get(replicas.a.gateway_url + "/v1/usage?from=2026-01-01&by=tenant", headers=auth).json()
    assert own["tenant_id"] == "acme" and [row["tenant"] for row in own["data"]] == ["acme"]
    assert own["data"][0] == tenants["acme"]  # the same ledger, only its own tenant
    r = httpx.get(replicas.a.gateway_url + "/v1/usage?from=2026-01-01&tenant=beta", headers=auth)
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    r = httpx.get(replicas.a.gateway_url + "/admin/v1/usage?tenant=beta", headers=auth)
    assert r.status_code == 403
