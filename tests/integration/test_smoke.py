"""`qlensctl smoke-test` against real stacks: it passes on a healthy one (the README's quick start:
`up --detach` then `smoke-test`), fails naming the check when a service is down, uses an API key
where the gateway requires one without ever printing it, and checks a cluster environment through
its domain (here an environment whose domain is a real local gateway's address).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from qlensctl.local import save_state
from tests.support.cli import ROOT, cli_env, distinct_ports, port_args, qlensctl
from tests.support.stack import StackFactory

ALL_CHECKS = [
    "cache /health", "cache /health/ready", "router /health", "router /health/ready",
    "gateway /health", "gateway /health/ready", "models", "chat completion", "cache hit",
    "cache /metrics", "router /metrics", "gateway /metrics",
]


def statuses(stdout: str) -> dict[str, str]:
    return {c["name"]: c["status"] for c in json.loads(stdout)["checks"]}


def details(stdout: str) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in json.loads(stdout)["checks"]}


def test_smoke_test_passes_against_the_stack_up_leaves_running(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ports = distinct_ports()
    up = qlensctl("up", "--detach", "--state-dir", str(state), *port_args(ports))
    assert up.returncode == 0, up.stderr
    try:
        table = qlensctl("smoke-test", "--state-dir", str(state))
        assert table.returncode == 0, table.stdout + table.stderr
        assert "all 12 checks passed" in table.stdout
        for check in ALL_CHECKS:
            assert check in table.stdout
        assert "FAIL" not in table.stdout

        report = qlensctl("smoke-test", "--state-dir", str(state), "--json")
        assert report.returncode == 0, report.stdout + report.stderr
        data = json.loads(report.stdout)
        assert data["ok"] is True and data["target"] == f"http://127.0.0.1:{ports['gateway']}"
        assert [c["name"] for c in data["checks"]] == ALL_CHECKS
        assert all(c["status"] == "pass" and c["ms"] >= 0 for c in data["checks"])
        found = details(report.stdout)
        assert found["models"].endswith("using echo")
        assert found["chat completion"] == "echo via echo/echo, cache miss"
        assert found["gateway /health/ready"].startswith("ready: router, cache")

        # only the gateway reachable (as through an ingress): its readiness vouches for the others
        url = qlensctl("smoke-test", "--url", f"http://127.0.0.1:{ports['gateway']}", "--json")
        assert url.returncode == 0, url.stdout + url.stderr
        assert set(statuses(url.stdout)) == {"gateway /health", "gateway /health/ready", "models",
                                             "chat completion", "cache hit", "gateway /metrics"}
    finally:
        down = qlensctl("down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr


def test_smoke_test_names_the_failing_check_when_a_service_is_down(make_stack: StackFactory,
                                                                   tmp_path: Path) -> None:
    running = make_stack()
    save_state(running.stack, tmp_path)  # smoke-test finds every service through the state folder
    args = ("smoke-test", "--env", running.env["name"], "--state-dir", str(tmp_path), "--json")
    assert qlensctl(*args).returncode == 0

    running.stop_service("cache")
    cache_down = qlensctl(*args)
    assert cache_down.returncode == 1
    seen = statuses(cache_down.stdout)
    assert seen["cache /health"] == seen["cache /health/ready"] == seen["cache /metrics"] == "fail"
    assert seen["gateway /health/ready"] == "fail"  # its cache check fails
    assert seen["chat completion"] == "pass"  # answers still flow, uncached
    assert seen["cache hit"] == "fail"
    assert "x-qlens-cache: bypass" in details(cache_down.stdout)["cache hit"]
    assert seen["router /health"] == seen["gateway /health"] == "pass"
    assert cache_down.stderr.startswith("error: smoke test failed: cache /health, cache /health/ready, ")

    # only the gateway reachable: its readiness names the cache as the reason
    via_url = qlensctl("smoke-test", "--url", running.gateway_url, "--json")
    assert via_url.returncode == 1
    assert "cache" in details(via_url.stdout)["gateway /health/ready"]

    running.stop_service("router")
    router_down = qlensctl(*args)
    assert router_down.returncode == 1
    seen = statuses(router_down.stdout)
    assert seen["router /health"] == seen["router /health/ready"] == "fail"
    assert seen["models"] == "fail"  # the gateway lists the router's models
    assert details(router_down.stdout)["models"].startswith("HTTP 5")
    assert seen["chat completion"] == seen["cache hit"] == "skip"
    assert seen["gateway /health"] == "pass"
    assert "router /health" in router_down.stderr

    running.stop_service("gateway")
    all_down = qlensctl(*args[:-1])  # the table for people this time
    assert all_down.returncode == 1
    assert "error: smoke test failed:" in all_down.stderr and "gateway /health" in all_down.stderr
    assert "cannot connect" in all_down.stdout
    assert "Traceback" not in all_down.stderr


def test_smoke_test_with_an_api_key_never_prints_it(make_stack: StackFactory) -> None:
    running = make_stack({"auth": {"required": True}}, keys={"ops": ("acme", "ops")})
    key = running.keys["ops"]
    gateway = running.gateway_url

    anonymous = qlensctl("smoke-test", "--url", gateway, "--json")
    assert anonymous.returncode == 1
    seen = statuses(anonymous.stdout)
    assert seen["gateway /health"] == seen["gateway /health/ready"] == "pass"  # probes need no key
    assert seen["models"] == "fail" and seen["chat completion"] == "skip"
    assert "HTTP 401" in details(anonymous.stdout)["models"]
    assert "--api-key" in details(anonymous.stdout)["models"]

    wrong = qlensctl("smoke-test", "--url", gateway, "--api-key", "qlk-not-a-real-key", "--json")
    assert wrong.returncode == 1 and statuses(wrong.stdout)["models"] == "fail"

    with_flag = qlensctl("smoke-test", "--url", gateway, "--api-key", key)
    assert with_flag.returncode == 0, with_flag.stdout + with_flag.stderr
    from_env = qlensctl("smoke-test", "--url", gateway, "--json", env=cli_env(QLENS_API_KEY=key))
    assert from_env.returncode == 0, from_env.stdout + from_env.stderr
    assert all(s == "pass" for s in statuses(from_env.stdout).values())
    for result in (anonymous, wrong, with_flag, from_env):
        assert key not in result.stdout + result.stderr


def test_a_cluster_environment_is_checked_through_its_domain_with_its_key(make_stack: StackFactory,
                                                                         tmp_path: Path) -> None:
    running = make_stack({"auth": {"required": True}}, keys={"ops": ("acme", "ops")})
    key = running.keys["ops"]
    # a copy of production (auth required) whose domain is this gateway, without TLS
    doc = yaml.safe_load((ROOT / "environments" / "production.yaml").read_text())
    domain = running.gateway_url.removeprefix("http://")
    doc.update({"name": "edge", "domain": domain, "tls": {"enabled": False}})
    envs = tmp_path / "environments"
    envs.mkdir()
    (envs / "edge.yaml").write_text(yaml.safe_dump(doc))
    env = {"QLENS_ENVIRONMENTS": str(envs), "QLENS_STATE_DIR": str(tmp_path / "state")}

    no_key = qlensctl("smoke-test", "edge", env=cli_env(**env))
    assert no_key.returncode == 2
    assert no_key.stderr.startswith("error: edge requires an API key (auth.required is on)")
    assert no_key.stdout == ""

    keyed = qlensctl("smoke-test", "edge", "--json", env=cli_env(**env, QLENS_API_KEY=key))
    assert keyed.returncode == 0, keyed.stdout + keyed.stderr
    report = json.loads(keyed.stdout)
    assert report["target"] == running.gateway_url
    assert report["source"] == f"edge ({running.gateway_url}, the gateway's Ingress)"
    assert statuses(keyed.stdout) == dict.fromkeys(
        ["gateway /health", "gateway /health/ready", "models", "chat completion", "cache hit",
         "gateway /metrics"], "pass")
    assert details(keyed.stdout)["gateway /health/ready"].startswith("ready: router, cache")

    table = qlensctl("smoke-test", "edge", "--api-key", key, env=cli_env(**env))
    assert table.returncode == 0 and "all 6 checks passed" in table.stdout
    for result in (no_key, keyed, table):
        assert key not in result.stdout + result.stderr


def test_smoke_test_asks_the_model_given_with_model(make_stack: StackFactory) -> None:
    echo = [{"provider": "echo", "target": "echo"}]
    running = make_stack({"models": {"echo-large": {"displayName": "Echo large", "deployments": echo}}})
    url = ("smoke-test", "--url", running.gateway_url, "--json")
    default = qlensctl(*url)
    assert default.returncode == 0, default.stdout + default.stderr
    assert details(default.stdout)["chat completion"].startswith("echo via")  # echo when served

    chosen = qlensctl(*url, "--model", "echo-large")
    assert chosen.returncode == 0, chosen.stdout + chosen.stderr
    found = details(chosen.stdout)
    assert found["models"].endswith("using echo-large")
    assert found["chat completion"] == "echo-large via echo/echo, cache miss"
    assert statuses(chosen.stdout)["cache hit"] == "pass"

    missing = qlensctl(*url, "--model", "gpt-4")
    assert missing.returncode == 1
    assert details(missing.stdout)["models"] == ("model gpt-4 is not served (the gateway lists echo, "
                                                 "echo-large); pass --model")
    assert statuses(missing.stdout)["chat completion"] == "skip"


def test_staging_smoke_tests_a_real_provider_model_by_default() -> None:
    from qlensctl.environments import load_environment
    from qlensctl.smoke import targets

    assert load_environment("staging").smoke_test.model == "gpt-35-turbo"
    assert targets("staging", None, Path("/nonexistent")).model == "gpt-35-turbo"
    assert load_environment("local").smoke_test.model is None  # local: echo
