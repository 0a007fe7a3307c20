"""`qlensctl smoke-test` without a running stack: where it points (a local stack, a cluster
environment's URL), how it refuses bad input, and how it reports a QLens that is not there (exit 1,
every failing check named, dependent checks skipped, the API key never shown). Passing and partial
failures against real services are in tests/integration/test_smoke.py; `--port-forward` against
the real control plane in tests/integration/cluster/test_smoke_cluster.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from qlensctl import portforward, smoke
from qlensctl.errors import ConfigError
from qlensctl.local import ServiceProcess, Stack, free_port, save_state
from tests.support.cli import ROOT, run_cli
from tests.support.json_errors import json_error

SECRET = "qlk-this-must-never-be-printed-0123456789"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QLENS_ENVIRONMENTS", str(ROOT / "environments"))
    monkeypatch.setenv("QLENS_STATE_DIR", str(tmp_path / "state"))  # never the operator's real stack
    monkeypatch.delenv("QLENS_API_KEY", raising=False)


@pytest.mark.parametrize("env", [["staging"], ["--env", "local"]])
def test_an_environment_and_url_are_exclusive(env: list[str]) -> None:
    result = run_cli("smoke-test", *env, "--url", "http://127.0.0.1:8080")
    assert result.code == 2
    assert "an environment (ENV or --env) and --url are exclusive" in result.err


def test_env_option_is_an_alias_of_the_positional_env() -> None:
    assert smoke.targets("staging", None, Path("/nonexistent")).gateway_url == "http://qlens-staging.local"
    same = run_cli("smoke-test", "qa", "--env", "qa")
    assert same.code == 2 and "unknown environment 'qa'" in same.err
    different = run_cli("smoke-test", "staging", "--env", "production")
    assert different.code == 2
    assert "two environments given: 'staging' and --env 'production'" in different.err


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "ftp://example.com", "http://", "http://127.0.0.1:99999"])
def test_a_url_that_is_not_http_is_a_usage_error(url: str) -> None:
    result = run_cli("smoke-test", "--url", url)
    assert result.code == 2
    assert "is not an http(s) URL" in result.err


def test_a_cluster_environment_is_checked_at_its_domain(tmp_path: Path) -> None:
    staging = smoke.targets("staging", None, tmp_path)
    assert staging.gateway_url == "http://qlens-staging.local"  # tls.enabled: false
    assert staging.service_urls is None  # only the gateway is public: its readiness vouches for the rest
    assert staging.needs_key is False
    assert "--port-forward" in staging.hint and "qlens-staging.local" in staging.hint
    production = smoke.targets("production", None, tmp_path)
    assert production.gateway_url == "https://qlens.quantumlayer.ai"  # tls.enabled: true
    assert production.needs_key is True  # auth.required: true
    assert "the gateway's Ingress" in production.source


def test_environment_url_follows_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qlensctl.environments import load_environment

    write_environment(tmp_path, "edge", domain="gw.example.test", tls={"enabled": True})
    write_environment(tmp_path, "plain", domain="gw.example.test", tls={"enabled": False})
    monkeypatch.setenv("QLENS_ENVIRONMENTS", str(tmp_path))
    assert smoke.environment_url(load_environment("edge")) == "https://gw.example.test"
    assert smoke.environment_url(load_environment("plain")) == "http://gw.example.test"


def test_a_cluster_environment_whose_gateway_is_not_there(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # an environment whose domain points at a closed local port: the real checks, nothing answering
    port = free_port()
    write_environment(tmp_path / "envs", "edge", domain=f"127.0.0.1:{port}")
    monkeypatch.setenv("QLENS_ENVIRONMENTS", str(tmp_path / "envs"))
    result = run_cli("smoke-test", "edge", "--json", "--timeout", "5")
    assert result.code == 1
    report = json.loads(result.out)
    assert report["target"] == f"http://127.0.0.1:{port}"
    assert report["source"] == f"edge (http://127.0.0.1:{port}, the gateway's Ingress)"
    assert [c["name"] for c in report["checks"]] == ["gateway /health", "gateway /health/ready", "models",
                                                     "chat completion", "cache hit", "gateway /metrics"]
    assert "cannot connect" in report["checks"][0]["detail"]
    assert "try `qlensctl smoke-test edge --port-forward`" in result.err


def test_an_environment_with_auth_needs_a_key_before_any_check(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for args in (["production"], ["production", "--port-forward"], ["--env", "production", "--json"]):
        result = run_cli("smoke-test", *args)
        assert result.code == 2, result
        assert result.err.startswith("error: production requires an API key (auth.required is on)")
        assert "--api-key" in result.err and "QLENS_API_KEY" in result.err
        if "--json" in args:  # no report: nothing was checked; the error is the one document
            assert json_error(result)["type"] == "ConfigError"
        else:
            assert result.out == ""  # no table: nothing was checked
    # an auth-on environment at a closed port: with a key the checks do run (and fail: nothing there)
    write_environment(tmp_path / "envs", "locked", domain=f"127.0.0.1:{free_port()}", auth={"required": True})
    monkeypatch.setenv("QLENS_ENVIRONMENTS", str(tmp_path / "envs"))
    assert run_cli("smoke-test", "locked").code == 2
    monkeypatch.setenv("QLENS_API_KEY", SECRET)
    keyed = run_cli("smoke-test", "locked", "--json", "--timeout", "5")
    assert keyed.code == 1 and json.loads(keyed.out)["checks"]
    assert SECRET not in keyed.out + keyed.err


def test_port_forward_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with_url = run_cli("smoke-test", "--port-forward", "--url", "http://127.0.0.1:8080")
    assert with_url.code == 2 and "--port-forward and --url are exclusive" in with_url.err
    no_env = run_cli("smoke-test", "--port-forward")
    assert no_env.code == 2 and "--port-forward needs an environment" in no_env.err
    unknown = run_cli("smoke-test", "qa", "--port-forward")
    assert unknown.code == 2 and "unknown environment 'qa'" in unknown.err
    # no kubeconfig: a configuration error naming where it looked, before any request
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    missing = run_cli("smoke-test", "staging", "--port-forward")
    assert missing.code == 2
    assert f"no kubeconfig at {tmp_path / 'no-such-kubeconfig'}" in missing.err
    assert "Traceback" not in missing.err


def test_a_refused_forward_is_described_by_the_api_servers_status_message() -> None:
    # what the kubernetes client raises: the websocket handshake's text, wrapped, then (client
    # 36) an AttributeError while decoding the wrapper's missing body
    handshake = ('Handshake status 500 Internal Server Error -+-+- {\'content-type\': \'application/json\'} '
                 '-+-+- {"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
                 '"message":"error dialing backend: dial tcp 10.0.0.7:10250: i/o \\"timeout\\"","code":500}')
    chained = AttributeError("'NoneType' object has no attribute 'decode'")
    chained.__context__ = RuntimeError(handshake)
    assert portforward.describe_refusal(chained) == (
        'HTTP 500 Internal Server Error: error dialing backend: dial tcp 10.0.0.7:10250: i/o "timeout"')
    forbidden = RuntimeError('Handshake status 403 Forbidden -+-+- {} -+-+- {"kind":"Status","message":'
                             '"pods \\"gw-1\\" is forbidden: cannot create resource \\"pods/portforward\\"",'
                             '"code":403}')
    assert portforward.describe_refusal(forbidden) == (
        'HTTP 403 Forbidden: pods "gw-1" is forbidden: cannot create resource "pods/portforward"')
    assert portforward.describe_refusal(ConnectionResetError("reset by peer")) == "reset by peer"


def test_an_unknown_environment() -> None:
    result = run_cli("smoke-test", "--env", "qa")
    assert result.code == 2
    assert "unknown environment 'qa'" in result.err


def test_nothing_listening_fails_every_check_and_skips_what_depends_on_them() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli("smoke-test", "--url", url, "--json")
    assert result.code == 1
    report = json.loads(result.out)
    assert report["ok"] is False and report["target"] == url
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses == {
        "gateway /health": "fail", "gateway /health/ready": "fail", "models": "fail",
        "chat completion": "skip", "cache hit": "skip", "gateway /metrics": "fail",
    }
    assert all("cannot connect" in c["detail"] for c in report["checks"] if c["status"] == "fail")
    assert all(isinstance(c["ms"], float) for c in report["checks"])
    # the error names the failing checks, not the skipped ones
    failing = "gateway /health, gateway /health/ready, models, gateway /metrics"
    assert f"error: smoke test failed: {failing}" in result.err


def test_the_table_for_people() -> None:
    result = run_cli("smoke-test", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.code == 1
    assert "FAIL" in result.out and "SKIP" in result.out
    assert "needs a model from /v1/models" in result.out


def test_the_api_key_is_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for debug, extra in (([], []), ([], ["--json"]), (["--debug"], [])):
        result = run_cli(*debug, "smoke-test", "--url", url, "--api-key", SECRET, *extra)
        assert result.code == 1, result
        assert SECRET not in result.out + result.err
    monkeypatch.setenv("QLENS_API_KEY", SECRET)
    result = run_cli("smoke-test", "--url", url, "--json")
    assert SECRET not in result.out + result.err
    assert SECRET not in run_cli("smoke-test", "--help").out


def test_local_defaults_to_the_ports_of_environments_local_yaml(tmp_path: Path) -> None:
    where = smoke.targets(None, None, tmp_path)
    assert where.service_urls == {"cache": "http://127.0.0.1:8082", "router": "http://127.0.0.1:8081",
                                  "gateway": "http://127.0.0.1:8080"}
    assert where.gateway_url == "http://127.0.0.1:8080"


def test_a_detached_stack_of_that_environment_is_found_in_the_state_folder(tmp_path: Path) -> None:
    stack = Stack(env="local", config="environments/local.yaml")
    ports = {name: free_port() for name in ("cache", "router", "gateway")}
    for name, port in ports.items():
        stack.services[name] = ServiceProcess(name=name, port=port, pid=1, log="x.log")
    save_state(stack, tmp_path)
    where = smoke.targets("local", None, tmp_path)
    assert where.service_urls == {n: f"http://127.0.0.1:{p}" for n, p in ports.items()}
    assert str(tmp_path) in where.source
    # every service is checked on its own port, all three named in the failure
    result = run_cli("smoke-test", "--state-dir", str(tmp_path), "--json")
    assert result.code == 1
    names = [c["name"] for c in json.loads(result.out)["checks"]]
    assert names == [
        "cache /health", "cache /health/ready", "router /health", "router /health/ready",
        "gateway /health", "gateway /health/ready", "models", "chat completion", "cache hit",
        "cache /metrics", "router /metrics", "gateway /metrics",
    ]
    # a stack of another environment is not mistaken for this one: staging means its cluster
    assert smoke.targets("staging", None, tmp_path).gateway_url == "http://qlens-staging.local"
    with pytest.raises(ConfigError):
        smoke.targets("qa", None, tmp_path)


def test_run_smoke_is_a_reusable_layer_returning_results() -> None:
    seen: list[str] = []
    results = smoke.run_smoke(f"http://127.0.0.1:{free_port()}/", None, api_key=SECRET, timeout=2,
                              progress=seen.append)
    assert [r.name for r in results] == ["gateway /health", "gateway /health/ready", "models",
                                         "chat completion", "cache hit", "gateway /metrics"]
    assert seen == ["gateway /health", "gateway /health/ready", "models", "gateway /metrics"]
    assert [r.name for r in smoke.failed(results)] == ["gateway /health", "gateway /health/ready", "models",
                                                        "gateway /metrics"]
    assert all(SECRET not in json.dumps(r.to_dict()) for r in results)


def write_environment(directory: Path, name: str, **changes: object) -> Path:
    """A copy of environments/staging.yaml named `name`, with `changes` on top."""
    directory.mkdir(parents=True, exist_ok=True)
    doc = yaml.safe_load((ROOT / "environments" / "staging.yaml").read_text())
    doc.update({"name": name, **changes})
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
