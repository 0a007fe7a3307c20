"""Auth on (production-like), tenant-scoped cache, per-user budget: one real stack for the module.

Keys: alice and carol are users of tenant acme, bob of tenant beta. The per-user daily limit is
tiny ($0.005): a request that sets max_tokens fits easily, one that does not (reserved at the
4096-token default) cannot.
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.support.stack import RunningStack, running_stack, write_keys_file

pytestmark = pytest.mark.timeout(180)

CHAT = "/v1/chat/completions"
KEYS = {"alice": ("acme", "alice"), "carol": ("acme", "carol"), "bob": ("beta", "bob")}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    env = {"auth": {"required": True}, "costControls": {"dailyLimits": {"perUser": 0.005}}}
    with running_stack(tmp_path_factory.mktemp("auth-budget"), env, keys=KEYS) as s:
        yield s


def body(text: str, **extra) -> dict:
    return {"model": "echo", "messages": [{"role": "user", "content": text}], "max_tokens": 50, **extra}


def post(stack: RunningStack, payload: dict, key_name: str | None = None, **headers) -> httpx.Response:
    return httpx.post(stack.gateway_url + CHAT, json=payload, headers={**stack.headers(key_name), **headers},
                      timeout=30)


def test_missing_key_is_401(stack):
    r = post(stack, body("no key"))
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "missing_api_key"
    assert r.json()["error"]["type"] == "authentication_error"
    assert r.headers["x-request-id"]


def test_unknown_key_is_401_and_never_echoed_or_logged(stack):
    fake = "qlk-definitely-not-issued-0123456789"
    r = post(stack, body("bad key"), Authorization=f"Bearer {fake}")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert fake not in r.text and fake not in str(r.headers)
    assert fake not in stack.log("gateway")


def test_every_api_route_needs_the_key(stack):
    for path in ("/v1/models", "/v1/usage"):
        assert httpx.get(stack.gateway_url + path).status_code == 401
        assert httpx.get(stack.gateway_url + path, headers=stack.headers("alice")).status_code == 200
    assert httpx.get(stack.gateway_url + "/health").status_code == 200  # probes need no key


def test_sdk_with_a_valid_key(stack):
    client = stack.openai("alice")
    completion = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "keyed"}],
                                                max_tokens=50)
    assert completion.choices[0].message.content == "Echo: keyed"
    with pytest.raises(openai.AuthenticationError):
        stack.openai().chat.completions.create(model="echo", messages=[{"role": "user", "content": "keyed"}])


def test_cache_is_shared_within_a_tenant_and_never_across_tenants(stack):
    question = body("what is the tenant-scoped answer?")
    assert post(stack, question, "alice").headers["x-qlens-cache"] == "miss"
    assert post(stack, question, "alice").headers["x-qlens-cache"] == "hit"
    assert post(stack, question, "carol").headers["x-qlens-cache"] == "hit"  # same tenant acme
    assert post(stack, question, "bob").headers["x-qlens-cache"] == "miss"  # tenant beta: own entry
    assert post(stack, question, "bob").headers["x-qlens-cache"] == "hit"


def test_usage_is_per_caller_and_cache_hits_cost_nothing(stack):
    def usage(name):
        return httpx.get(stack.gateway_url + "/v1/usage", headers=stack.headers(name)).json()

    bob = usage("bob")
    assert (bob["tenant_id"], bob["user_id"]) == ("beta", "bob")
    assert bob["user"]["limit"] == 0.005
    question = body("usage accounting question")
    post(stack, question, "bob")
    spent = usage("bob")["user"]["spent"]
    assert spent > bob["user"]["spent"]
    assert post(stack, question, "bob").headers["x-qlens-cache"] == "hit"
    assert usage("bob")["user"]["spent"] == spent
    assert usage("alice")["tenant_id"] == "acme"


def test_over_the_user_budget_is_429_budget_exceeded_naming_the_scope(stack):
    no_cap = {"model": "echo", "messages": [{"role": "user", "content": "uncapped, reserved at 4096 tokens"}]}
    r = post(stack, no_cap, "carol")
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert err["code"] == "budget_exceeded" and err["type"] == "rate_limit_error"
    assert "daily user budget" in err["message"]
    # the refusal held nothing back: a small request still fits
    assert post(stack, body("small after refusal"), "carol").status_code == 200
    with pytest.raises(openai.RateLimitError) as info:
        stack.openai("carol").chat.completions.create(model="echo", messages=no_cap["messages"])
    assert info.value.code == "budget_exceeded"


def test_revoking_a_key_takes_effect_without_a_restart(stack):
    assert post(stack, body("before revoke"), "bob").status_code == 200
    # rewrite the keys file without bob (alice and carol keep working with new keys)
    remaining = {n: KEYS[n] for n in ("alice", "carol")}
    new_keys = write_keys_file(stack.directory / "keys.json", remaining)
    deadline = time.monotonic() + 10
    status = 200
    while time.monotonic() < deadline:
        status = post(stack, body("after revoke"), "bob").status_code
        if status == 401:
            break
        time.sleep(0.2)
    assert status == 401
    stack.keys.update(new_keys)
    assert post(stack, body("new key works"), "alice").status_code == 200


def test_keys_never_appear_in_any_log(stack):
    logs = "".join(stack.log(s) for s in ("gateway", "router", "cache"))
    for key in stack.keys.values():
        assert key not in logs
    lines = [json.loads(x) for x in stack.log("gateway").splitlines() if x.startswith("{")]
    assert {"acme", "beta"} <= {x.get("tenant") for x in lines}
