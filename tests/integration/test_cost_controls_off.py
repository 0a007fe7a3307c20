"""`costControls.enabled: false` through a real gateway on a real Redis: nothing is refused for
cost or rate, whatever limit the environment, a key (admin API) or a tenant override (admin API)
sets, and every request is still counted: spend and tokens in the usage ledger, exactly the sum
of the answers' usage. Access control stays on (a revoked key is still 401).
"""

from __future__ import annotations

import httpx
import pytest

from services.common.apikeys import dump_admin_keys, generate_key, hash_key
from tests.support.stack import running_stack

pytestmark = pytest.mark.timeout(120)

CHAT = "/v1/chat/completions"
TINY = 0.000001  # USD: below one request's cost


def test_disabled_cost_controls_count_but_never_refuse(tmp_path, redis_server):
    ops = generate_key()
    admin_file = tmp_path / "admin-keys.json"
    admin_file.write_text(dump_admin_keys({hash_key(ops): "ops"}))
    env = {"auth": {"required": True}, "admin": {"enabled": True}, "cache": {"enabled": False},
           "costControls": {"enabled": False, "store": "redis", "onStoreFailure": "failClosed",
                            "limits": {"total": {"daily": TINY}, "perTenant": {"rpm": 1, "monthly": TINY},
                                       "perUser": {"tpm": 1}, "perKey": {"rpm": 1}}}}
    extra = {"QLENS_REDIS_URL": redis_server.url, "QLENS_ADMIN_KEYS_FILE": str(admin_file)}
    with running_stack(tmp_path / "stack", env, extra_env=extra, keys={"alice": ("acme", "alice")}) as s:
        def admin(method: str, path: str, body: object = None) -> httpx.Response:
            return httpx.request(method, s.gateway_url + path, json=body, timeout=30,
                                 headers={"Authorization": f"Bearer {ops}"})

        assert admin("PUT", "/admin/v1/tenants/acme/limits", {"daily": TINY, "rpm": 1}).status_code == 200
        created = admin("POST", "/admin/v1/keys", {"tenant": "acme", "user": "bot",
                                                   "limits": {"rpm": 1, "daily": TINY}}).json()
        usage = []
        for key in (s.keys["alice"], created["key"]):
            for i in range(4):
                r = httpx.post(s.gateway_url + CHAT, timeout=30, headers={"Authorization": f"Bearer {key}"},
                               json={"model": "echo", "messages": [{"role": "user", "content": f"q{i}"}]})
                assert r.status_code == 200, r.text
                assert not [h for h in r.headers if h.startswith("x-ratelimit-")]  # no limit in force
                usage.append(r.json()["usage"])
        report = admin("GET", "/admin/v1/usage?by=user").json()
        rows = {row["user"]: row for row in report["data"]}
        assert rows["alice"]["requests"] == 4 and rows["bot"]["requests"] == 4
        assert report["total"]["input_tokens"] == sum(u["prompt_tokens"] for u in usage)
        assert report["total"]["output_tokens"] == sum(u["completion_tokens"] for u in usage)
        assert report["total"]["cost_micros"] > 0
        # the limits stay stored (they bite once cost controls are on again)
        assert admin("GET", "/admin/v1/tenants/acme").json()["overrides"] == {"daily": TINY, "rpm": 1}
        assert admin("DELETE", f"/admin/v1/keys/{created['fingerprint']}").status_code == 200
        r = httpx.post(s.gateway_url + CHAT, timeout=30,
                       headers={"Authorization": f"Bearer {created['key']}"},
                       json={"model": "echo", "messages": [{"role": "user", "content": "after"}]})
        assert r.status_code == 401
