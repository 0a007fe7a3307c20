"""`qlensctl keys` end to end with a real gateway: a created key is accepted, a revoked one is
refused (401) without restarting anything, and the key is printed only by `create`.

The local stack reads the keys file through QLENS_API_KEYS_FILE, as a gateway in a cluster reads
the mounted `keys.json` of Secret qlens-api-keys (the Secret store is covered in
ops/test_cluster_scale.py)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx

from tests.k8s.harness import Cli

KEY_RE = re.compile(r"^(qlk-[A-Za-z0-9_-]{20,})$", re.MULTILINE)


def _status(url: str, key: str) -> int:
    r = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    return r.status_code


def _wait_status(url: str, key: str, want: int, seconds: float = 10) -> int:
    """The gateway re-reads the keys file at most once a second: poll a bounded while."""
    deadline = time.monotonic() + seconds
    got = _status(url, key)
    while got != want and time.monotonic() < deadline:
        time.sleep(0.2)
        got = _status(url, key)
    return got


def test_create_accept_revoke_refuse(cli: Cli, make_stack, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys" / "keys.json"
    created = cli("keys", "create", "local", "--tenant", "acme", "--user", "alice", "--file", str(keys_file))
    assert created.code == 0, created
    found = KEY_RE.findall(created.out)
    assert len(found) == 1, created
    key = found[0]
    assert key not in keys_file.read_text()

    stack = make_stack({"auth": {"required": True}}, extra_env={"QLENS_API_KEYS_FILE": str(keys_file)})
    assert _status(stack.gateway_url, key) == 200
    assert _status(stack.gateway_url, "qlk-not-a-real-key") == 401

    # a key made while the gateway runs works without a restart
    second = cli("keys", "create", "local", "--tenant", "acme", "--user", "bob", "--file", str(keys_file),
                 "--json")
    assert second.code == 0, second
    bob = json.loads(second.out)
    assert _wait_status(stack.gateway_url, bob["key"], 200) == 200

    listed = cli("keys", "list", "local", "--file", str(keys_file), "--json")
    assert listed.code == 0, listed
    rows = json.loads(listed.out)
    assert {(r["tenant"], r["user"]) for r in rows} == {("acme", "alice"), ("acme", "bob")}
    alice_fp = next(r["fingerprint"] for r in rows if r["user"] == "alice")

    revoked = cli("keys", "revoke", "local", "--fingerprint", alice_fp, "--file", str(keys_file))
    assert revoked.code == 0, revoked
    assert _wait_status(stack.gateway_url, key, 401) == 401
    assert _status(stack.gateway_url, bob["key"]) == 200  # the other key is untouched

    gone = cli("keys", "revoke", "local", "--tenant", "acme", "--user", "bob", "--file", str(keys_file))
    assert gone.code == 0, gone
    assert _wait_status(stack.gateway_url, bob["key"], 401) == 401

    # each key appeared in exactly one output: the create that made it
    outputs = [r.text for r in cli.runs]
    assert sum(key in o for o in outputs) == 1
    assert sum(bob["key"] in o for o in outputs) == 1
    assert key not in stack.log("gateway") and bob["key"] not in stack.log("gateway")
