"""Tenants never see each other, secrets never leave the process environment, and each
environment enforces the authentication its file asks for.

The production stack (conftest.py) runs environments/production.yaml with sentinel credentials:
after driving every kind of answer through it (served by Azure and Bedrock, cached, streamed,
refused, failed upstream, Redis gone and back), no sentinel may appear in any service log file,
response body or header, metrics or health page.
"""

from __future__ import annotations

import uuid
from collections import Counter

import httpx
import pytest

from services.common.apikeys import dump_keys, hash_key, load_keys_file
from tests.integration.reliability.conftest import Production, aws_isolation, environment
from tests.integration.reliability.support import (
    CHAT,
    Faults,
    all_logs,
    chat,
    error_of,
    wait_for,
)

pytestmark = [pytest.mark.timeout(180), pytest.mark.redis]


def client(prod: Production, key_name: str | None = None, **headers: str) -> httpx.Client:
    return httpx.Client(base_url=prod.stack.gateway_url, timeout=30,
                        headers={**prod.stack.headers(key_name), **headers})


def usage(prod: Production, key_name: str) -> dict:
    with client(prod, key_name) as c:
        r = c.get("/v1/usage")
    assert r.status_code == 200, r.text
    return r.json()


# --- tenant isolation ------------------------------------------------------------------------


def test_identical_requests_under_two_tenants_share_no_cache_entry_and_no_usage(production):
    prompt = chat(f"same question {uuid.uuid4().hex}")
    alice_before, bob_before = usage(production, "alice"), usage(production, "bob")
    assert (alice_before["tenant_id"], bob_before["tenant_id"]) == ("acme", "globex")

    with client(production, "alice") as alice:
        assert alice.post(CHAT, json=prompt).headers["x-qlens-cache"] == "miss"
        assert wait_for(lambda: alice.post(CHAT, json=prompt).headers["x-qlens-cache"] == "hit", 5)
    alice_after = usage(production, "alice")
    assert alice_after["tenant"]["spent"] > alice_before["tenant"]["spent"]

    # bob asks exactly the same, as JSON and as a stream: never alice's stored answer
    with client(production, "bob") as bob:
        with bob.stream("POST", CHAT, json={**prompt, "stream": True}) as s:
            assert s.status_code == 200 and s.headers["x-qlens-cache"] == "miss"
            s.read()
        r = bob.post(CHAT, json={**prompt, "temperature": 0})  # another entry than bob's stream
        assert r.status_code == 200 and r.headers["x-qlens-cache"] == "miss"
    bob_after = usage(production, "bob")
    assert bob_after["tenant"]["spent"] > bob_before["tenant"]["spent"]
    # bob's spend was not charged to acme, alice's not to globex
    assert usage(production, "alice")["tenant"] == alice_after["tenant"]


def test_a_key_cannot_borrow_another_tenant_or_user(production):
    """The `user` field and a client-sent x-qlens-tenant header never change who pays or what is seen."""
    prompt = chat(f"borrowed identity {uuid.uuid4().hex}")
    with client(production, "bob") as bob:
        assert bob.post(CHAT, json=prompt).status_code == 200
        assert wait_for(lambda: bob.post(CHAT, json=prompt).headers["x-qlens-cache"] == "hit", 5)
    before = usage(production, "alice")
    with client(production, "alice", **{"x-qlens-tenant": "globex"}) as alice:
        r = alice.post(CHAT, json={**prompt, "user": "bob"})
        assert r.status_code == 200 and r.headers["x-qlens-cache"] == "miss"  # not bob's entry
        u = alice.get("/v1/usage", params={"user": "bob"}).json()
    assert (u["tenant_id"], u["user_id"]) == ("acme", "alice")
    assert u["user"]["spent"] > before["user"]["spent"]


# --- authentication per environment ------------------------------------------------------------


def test_production_refuses_every_unauthenticated_request(production):
    gw = production.stack.gateway_url
    attempts = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer qlk-never-issued-0000000000000000000000000000"},
        {"Authorization": f"Basic {production.stack.keys['alice']}"},  # right key, wrong scheme
        {"Authorization": f"Bearer {production.stack.keys['alice']}x"},
        {"api-key": production.stack.keys["alice"]},  # Azure's header is not ours
    ]
    for headers in attempts:
        for method, path, body in (("POST", CHAT, chat("who am i")), ("GET", "/v1/models", None),
                                   ("GET", "/v1/usage", None), ("GET", "/v1/models/echo", None)):
            r = httpx.request(method, gw + path, json=body, headers=headers, timeout=30)
            err = error_of(r)
            assert r.status_code == 401, (headers, path, r.text)
            assert err["type"] == "authentication_error"
            assert err["code"] in ("missing_api_key", "invalid_api_key")
    # liveness and readiness stay open: the kubelet probes them without a key
    assert httpx.get(gw + "/health").status_code == 200
    assert httpx.get(gw + "/health/ready").status_code == 200


def test_a_revoked_key_is_refused_without_a_restart(production):
    stack = production.stack
    with client(production, "carol") as carol:
        assert carol.post(CHAT, json=chat("before revoke")).status_code == 200
        keys_file = stack.directory / "keys.json"
        keys = load_keys_file(keys_file)
        del keys[hash_key(stack.keys["carol"])]
        keys_file.write_text(dump_keys(keys))
        assert wait_for(lambda: carol.post(CHAT, json=chat("after revoke")).status_code == 401, 10, 0.2)
        err = error_of(carol.post(CHAT, json=chat("after revoke")))
        assert err["code"] == "invalid_api_key"
    with client(production, "alice") as alice:  # the others are untouched
        assert alice.post(CHAT, json=chat("after carol's revoke")).status_code == 200


def test_staging_runs_unauthenticated_as_its_environment_says(make_stack, tmp_path):
    staging = environment("staging")
    assert staging["auth"]["required"] is False
    stack = make_stack(staging, extra_env=aws_isolation(tmp_path), keys={"dave": ("initech", "dave")})
    gw = stack.gateway_url
    r = httpx.post(gw + CHAT, json=chat("no key in staging", user="erin"), timeout=30)
    assert r.status_code == 200
    u = httpx.get(gw + "/v1/usage", params={"user": "erin"}, timeout=30).json()
    assert (u["tenant_id"], u["user_id"]) == ("default", "erin")
    assert u["user"]["spent"] > 0
    # an unknown key is not an error where keys are not required; a known key keeps its tenant
    r = httpx.post(gw + CHAT, json=chat("unknown key in staging"), timeout=30,
                   headers={"Authorization": "Bearer qlk-not-issued"})
    assert r.status_code == 200
    u = httpx.get(gw + "/v1/usage", headers=stack.headers("dave"), timeout=30).json()
    assert (u["tenant_id"], u["user_id"]) == ("initech", "dave")
    # staging limits only the total spend (costControls.dailyLimits.total), not tenants or users
    assert u["tenant"]["limit"] is None and u["user"]["limit"] is None
    assert httpx.get(gw + "/v1/models", timeout=30).status_code == 200


# --- secret hygiene ----------------------------------------------------------------------------


def test_no_secret_appears_in_any_log_answer_or_page(production):
    stack, seen = production.stack, []

    def keep(r: httpx.Response) -> httpx.Response:
        seen.append(f"{r.status_code} {dict(r.headers)} {r.text}")
        return r

    # this test's own requests only: the stand-ins are shared by the session
    production.azure.reset()
    production.bedrock.reset()
    production.azure.set_faults("gpt-35-turbo", Faults(error_fraction=1.0, status=401))
    misses: Counter[str] = Counter()  # model -> answers that were not from the cache: provider calls
    tag = uuid.uuid4().hex[:8]
    wrong = f"qlk-SENTINEL-wrong-key-{tag}"
    with client(production, "alice") as alice, \
            client(production, None, Authorization=f"Bearer {wrong}") as bad:
        served_by = {"gpt-4": "azureOpenAI/", "claude-3-sonnet": "awsBedrock/", "echo": "echo/"}
        for model, provider in served_by.items():
            r = keep(alice.post(CHAT, json=chat(f"secret hygiene {tag}", model)))
            assert r.status_code == 200 and r.headers["x-qlens-provider"].startswith(provider), r.text
            again = keep(alice.post(CHAT, json=chat(f"secret hygiene {tag}", model)))  # cached, once stored
            with alice.stream("POST", CHAT, json=chat(f"secret stream {tag}", model, stream=True)) as s:
                s.read()
                keep(s)
            for answer in (r, again, s):
                assert answer.status_code == 200, answer.text
                misses[model] += answer.headers["x-qlens-cache"] == "miss"
        # Azure refusing our credentials (401): the router says so without repeating them
        r = keep(alice.post(CHAT, json=chat(f"azure refuses {tag}", "gpt-35-turbo")))
        assert r.status_code == 502 and error_of(r)["code"] == "provider_error"
        keep(bad.post(CHAT, json=chat("wrong key")))
        keep(bad.get("/v1/models"))
        keep(alice.get("/v1/usage"))
        keep(alice.get("/v1/models"))
        keep(alice.post(CHAT, content=b"{broken"))
        # Redis gone and back: connection errors are logged, never with the URL's password
        production.redis.stop()
        keep(alice.post(CHAT, json=chat(f"redis down {tag}")))
        keep(alice.get("/health/ready"))
        production.redis.start()
        production.protect_redis()
        assert wait_for(lambda: keep(alice.post(CHAT, json=chat(f"redis back {tag}"))).status_code == 200, 10)
    for service in ("gateway", "router", "cache"):
        keep(httpx.get(stack.url(service) + "/metrics"))
        keep(httpx.get(stack.url(service) + "/health/ready"))
    production.azure.set_faults("gpt-35-turbo", Faults())
    # the credentials were really used, by this test's calls: Azure got its key, and every Bedrock
    # call carried a SigV4 signature by our secret (the stand-in verifies it, and refuses with a 403)
    assert production.azure.auth_kinds == {"api-key"}
    assert [s.status for s in production.azure.seen if s.target == "gpt-4"] == [200] * misses["gpt-4"]
    assert [s.status for s in production.bedrock.seen] == [200] * misses["claude-3-sonnet"]
    assert misses["gpt-4"] >= 2 and misses["claude-3-sonnet"] >= 2  # the first question and the stream

    logs = all_logs(stack)
    assert len(logs) >= 3 and all(logs.values())
    secrets = {**production.secrets, "a wrong key a client sent": wrong}
    for what, value in secrets.items():
        for path, text in logs.items():
            assert value not in text, f"the {what} appears in {path}"
        for answer in seen:
            assert value not in answer, f"the {what} appears in an answer: {answer[:300]}"
