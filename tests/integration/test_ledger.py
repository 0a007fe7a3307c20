"""The usage ledger through a real gateway on a real Redis: exact to the micro-dollar, never past a
per-key budget, carried by `backup --state` / `restore --state`.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import redis as redis_sync

from qlensctl.backup import backup_state, restore_state
from services.common.apikeys import dump_admin_keys, generate_key, hash_key
from services.gateway.budget import utc_day
from tests.support.stack import BASE_ENV

pytestmark = pytest.mark.timeout(300)

CHAT = "/v1/chat/completions"
PRICE = BASE_ENV["models"]["echo"]["pricing"]  # USD per 1K tokens
KEY_DAILY = 0.02  # USD: each request reserves ~$0.00023 (its prompt estimate + max_tokens 100)


def micros(usage: dict) -> int:
    """What one answer costs, as the gateway rounds it (integer micro-dollars)."""
    usd = (usage["prompt_tokens"] * PRICE["input"] + usage["completion_tokens"] * PRICE["output"]) / 1000
    return round(usd * 1_000_000)


def test_per_key_budget_holds_under_200_concurrent_and_the_ledger_is_exact(make_stack, redis_server,
                                                                          tmp_path):
    ops = generate_key()
    admin_file = tmp_path / "admin-keys.json"
    admin_file.write_text(dump_admin_keys({hash_key(ops): "ops"}))
    env = {"auth": {"required": True}, "admin": {"enabled": True}, "cache": {"enabled": False},
           "costControls": {"store": "redis", "onStoreFailure": "failClosed"}}
    extra = {"QLENS_REDIS_URL": redis_server.url, "QLENS_ADMIN_KEYS_FILE": str(admin_file)}
    stack = make_stack(env, extra_env=extra, keys={"alice": ("acme", "alice")})
    admin = {"Authorization": f"Bearer {ops}"}
    created = httpx.post(stack.gateway_url + "/admin/v1/keys", headers=admin, timeout=30,
                         json={"tenant": "acme", "user": "batch", "limits": {"daily": KEY_DAILY}}).json()
    key = created["key"]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60,
                                     limits=httpx.Limits(max_connections=200)) as client:
            return list(await asyncio.gather(*(
                client.post(CHAT, headers={"Authorization": f"Bearer {key}"},
                            json={"model": "echo", "max_tokens": 100, "messages": [
                                {"role": "user", "content": f"count to {i} " * (1 + i % 5)}]})
                for i in range(200))))

    replies = asyncio.run(burst())
    ok = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code == 429]
    assert ok and refused and len(ok) + len(refused) == 200
    assert {r.json()["error"]["code"] for r in refused} == {"budget_exceeded"}
    assert all("daily key budget of $0.02" in r.json()["error"]["message"] for r in refused)
    spent = sum(micros(r.json()["usage"]) for r in ok)
    assert spent <= KEY_DAILY * 1_000_000

    # the ledger: exactly the answers' usage (the settles run after the answers: poll for the last)
    day = utc_day(time.time())

    def acme() -> dict:
        report = httpx.get(stack.gateway_url + f"/admin/v1/usage?from={day}&to={day}&by=tenant,user,model",
                           headers=admin, timeout=30).json()
        return {(r["tenant"], r["user"], r["model"]): r for r in report["data"]}

    deadline = time.monotonic() + 10
    while acme().get(("acme", "batch", "echo"), {}).get("requests") != len(ok):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    row = acme()[("acme", "batch", "echo")]
    assert row["requests"] == len(ok) and row["errors"] == 0 and row["cache_hits"] == 0
    assert row["cost_micros"] == spent
    assert row["input_tokens"] == sum(r.json()["usage"]["prompt_tokens"] for r in ok)
    assert row["output_tokens"] == sum(r.json()["usage"]["completion_tokens"] for r in ok)

    # backup --state carries the ledger; a restore into an empty Redis gives the same report
    values = tmp_path / "values-test.yaml"
    values.write_text("environment: test\n")
    state_file, count = backup_state(redis_server.url, values)
    assert count > 0
    client = redis_sync.Redis.from_url(redis_server.url)
    try:
        ledger_keys = sorted(k.decode() for k in client.scan_iter("qlens:usage:*"))
        assert ledger_keys == [f"qlens:usage:{day}:index", f"qlens:usage:{day}:t:acme"]
        before = client.hgetall(ledger_keys[1])
        client.flushdb()
        restore_state(redis_server.url, state_file)
        assert client.hgetall(ledger_keys[1]) == before
        assert client.smembers(ledger_keys[0]) == {b"acme"}
    finally:
        client.close()
