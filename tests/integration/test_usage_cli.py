"""`qlensctl usage|tenants|keys` against a real stack (admin API on, memory store) seeded with known
traffic: the table, the CSV, the JSON and the PNG say exactly what the answers' usage adds up to.
"""

from __future__ import annotations

import csv
import io
import json

import httpx
import pytest

from services.common.apikeys import dump_admin_keys, generate_key, hash_key
from tests.support.cli import run_cli
from tests.support.stack import BASE_ENV, running_stack

pytestmark = pytest.mark.timeout(240)

PRICE = BASE_ENV["models"]["echo"]["pricing"]
ECHO_B = {"pricing": {"input": 0.01, "output": 0.02}, "deployments": [{"provider": "echo", "target": "b"}]}
KEYS = {"alice": ("acme", "alice"), "bob": ("beta", "bob")}
# (key, model, prompt): the seeded traffic
TRAFFIC = [("alice", "echo", "one"), ("alice", "echo", "two two"), ("alice", "echo-b", "three three three"),
           ("bob", "echo", "four"), ("bob", "echo", "five five")]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    root = tmp_path_factory.mktemp("usage-cli")
    ops = generate_key()
    (root / "admin.json").write_text(dump_admin_keys({hash_key(ops): "ops"}))
    env = {"auth": {"required": True}, "admin": {"enabled": True}, "cache": {"enabled": False},
           "models": {"echo-b": ECHO_B}}
    with running_stack(root / "stack", env, extra_env={"QLENS_ADMIN_KEYS_FILE": str(root / "admin.json")},
                       keys=KEYS) as stack:
        expected: dict[str, dict[str, int]] = {}
        for key, model, text in TRAFFIC:
            body = {"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": text}]}
            r = httpx.post(stack.gateway_url + "/v1/chat/completions", headers=stack.headers(key), json=body,
                           timeout=30)
            assert r.status_code == 200
            usage = r.json()["usage"]
            price = PRICE if model == "echo" else ECHO_B["pricing"]
            tokens_in, tokens_out = usage["prompt_tokens"], usage["completion_tokens"]
            usd = (tokens_in * price["input"] + tokens_out * price["output"]) / 1000
            row = expected.setdefault(KEYS[key][0], {"requests": 0, "input": 0, "output": 0, "micros": 0})
            row["requests"] += 1
            row["input"] += usage["prompt_tokens"]
            row["output"] += usage["completion_tokens"]
            row["micros"] += round(usd * 1_000_000)
        yield stack, ops, expected


def cli(stack, ops: str, *args: str):
    return run_cli(*args, "--url", stack.gateway_url, "--admin-key", ops)


def test_usage_table_csv_and_json(seeded):
    stack, ops, expected = seeded
    result = cli(stack, ops, "usage", "local", "--by", "tenant", "--csv")
    assert result.code == 0, result.text
    rows = list(csv.reader(io.StringIO(result.out)))
    assert rows[0] == ["tenant", "requests", "input_tokens", "output_tokens", "cost_usd", "cache_hits",
                       "errors", "cost_micros"]
    want = [[t, str(e["requests"]), str(e["input"]), str(e["output"]), f"{e['micros'] / 1e6:.6f}", "0", "0",
             str(e["micros"])] for t, e in sorted(expected.items())]
    assert rows[1:] == want

    result = cli(stack, ops, "usage", "local", "--by", "tenant", "--json")
    assert result.code == 0, result.text
    report = json.loads(result.out)
    assert report["total"]["requests"] == len(TRAFFIC)
    assert report["total"]["cost_micros"] == sum(e["micros"] for e in expected.values())

    result = cli(stack, ops, "usage", "local", "--by", "model")
    assert result.code == 0, result.text
    cells = [[c.strip() for c in line.strip("│┃ ").split("│")] for line in result.out.splitlines()]
    by_model = {row[0]: row[1] for row in cells if row and row[0] in ("echo", "echo-b", "total")}
    assert by_model == {"echo": "4", "echo-b": "1", "total": "5"}  # requests


def test_usage_plot_writes_a_png_of_the_daily_spend(seeded, tmp_path):
    stack, ops, expected = seeded
    target = tmp_path / "spend.png"
    result = cli(stack, ops, "usage", "local", "--by", "tenant", "--plot", str(target))
    assert result.code == 0, result.text
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert run_cli("usage", "local", "--plot", str(tmp_path / "x.svg"), "--admin-key", ops).code == 2
    # what the chart stacks: each tenant's spend on each day of the range (all of it today)
    from qlensctl.usage_plot import daily_series

    report = httpx.get(stack.gateway_url + "/admin/v1/usage?by=day,tenant",
                       headers={"Authorization": f"Bearer {ops}"}).json()
    days, series = daily_series(report["data"], "tenant", report["from"], report["to"])
    assert days[0] == report["from"] and days[-1] == report["to"]
    assert sorted(series) == sorted(expected)
    for tenant, values in series.items():
        assert values[-1] == pytest.approx(expected[tenant]["micros"] / 1e6) and sum(values[:-1]) == 0


def test_usage_cli_refuses_bad_input_and_a_wrong_key(seeded):
    stack, ops, _ = seeded
    assert cli(stack, ops, "usage", "local", "--by", "colour").code == 2
    r = cli(stack, ops, "usage", "local", "--from", "yesterday")
    assert r.code == 1 and "from and to must be dates" in r.text
    r = run_cli("usage", "local", "--url", stack.gateway_url, "--admin-key", stack.keys["alice"])
    assert r.code == 2 and "refused the admin key" in r.text
    assert stack.keys["alice"] not in r.text
    r = run_cli("usage", "local", "--url", stack.gateway_url)
    assert r.code == 2 and "no admin key" in r.text


def test_tenants_and_keys_through_the_admin_api(seeded):
    stack, ops, _ = seeded
    r = cli(stack, ops, "tenants", "set-limits", "local", "acme", "--monthly", "100", "--rpm", "60", "--json")
    assert r.code == 0, r.text
    assert json.loads(r.out)["overrides"] == {"monthly": 100.0, "rpm": 60}
    r = cli(stack, ops, "tenants", "show", "local", "acme", "--json")
    assert json.loads(r.out)["limits"] == {"daily": None, "monthly": 100.0, "rpm": 60, "tpm": None}
    r = cli(stack, ops, "tenants", "list", "local")
    assert r.code == 0 and "acme" in r.out and "beta" in r.out
    assert cli(stack, ops, "tenants", "set-limits", "local", "acme", "--rpm", "-3").code == 2
    r = cli(stack, ops, "tenants", "clear-limits", "local", "acme", "--json")
    assert r.code == 0 and json.loads(r.out)["overrides"] is None

    r = cli(stack, ops, "keys", "create", "local", "--tenant", "gamma", "--user", "gus", "--models", "echo",
            "--rpm", "5", "--json")
    assert r.code == 0, r.text
    created = json.loads(r.out)
    assert created["models"] == ["echo"] and created["limits"] == {"rpm": 5}
    key = created["key"]
    chat = {"model": "echo-b", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    r = httpx.post(stack.gateway_url + "/v1/chat/completions", json=chat,
                   headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 403
    listed = cli(stack, ops, "keys", "list", "local", "--tenant", "gamma")
    assert listed.code == 0 and created["fingerprint"] in listed.out and key not in listed.out
    r = cli(stack, ops, "keys", "update", "local", "--fingerprint", created["fingerprint"], "--models", "all",
            "--json")
    assert r.code == 0 and json.loads(r.out)["models"] is None
    r = cli(stack, ops, "keys", "revoke", "local", "--fingerprint", created["fingerprint"], "--json")
    assert r.code == 0 and json.loads(r.out)["revoked"][0]["revoked"] is True
    r = httpx.post(stack.gateway_url + "/v1/chat/completions", json={**chat, "model": "echo"},
                   headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 401
