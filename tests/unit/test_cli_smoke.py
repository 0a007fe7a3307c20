"""`qlensctl smoke-test` without a running stack: where it points, how it refuses bad input, and how
it reports a QLens that is not there (exit 1, every failing check named, dependent checks skipped,
the API key never shown). Passing and partial failures against real services are in
tests/integration/test_smoke.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qlensctl import smoke
from qlensctl.errors import ConfigError
from qlensctl.local import ServiceProcess, Stack, free_port, save_state
from tests.unit.test_cli import ROOT, run_cli

SECRET = "qlk-this-must-never-be-printed-0123456789"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QLENS_ENVIRONMENTS", str(ROOT / "environments"))
    monkeypatch.setenv("QLENS_STATE_DIR", str(tmp_path / "state"))  # never the operator's real stack
    monkeypatch.delenv("QLENS_API_KEY", raising=False)


def test_env_and_url_are_exclusive() -> None:
    result = run_cli("smoke-test", "--env", "local", "--url", "http://127.0.0.1:8080")
    assert result.code == 2
    assert "--env and --url are exclusive" in result.err


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "ftp://example.com", "http://", "http://127.0.0.1:99999"])
def test_a_url_that_is_not_http_is_a_usage_error(url: str) -> None:
    result = run_cli("smoke-test", "--url", url)
    assert result.code == 2
    assert "is not an http(s) URL" in result.err


def test_a_cluster_environment_needs_an_address() -> None:
    result = run_cli("smoke-test", "--env", "staging")
    assert result.code == 2
    assert "no local stack of 'staging' is running" in result.err
    assert "--url" in result.err


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
    # a stack of another environment is not mistaken for this one
    with pytest.raises(ConfigError):
        smoke.targets("staging", None, tmp_path)


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
