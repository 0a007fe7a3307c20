"""With --json a failed command prints its error as one JSON document on stdout, exit code unchanged;
without --json stdout stays empty on failure. Only failures that need no cluster are here (bad
arguments, unknown environments, the context guard, an unreachable API server); the ones that do
are in tests/integration/ops/test_cluster_scale.py.

Most tests call `qlensctl.main.run` in-process (`run_cli`, the console script's entry); one runs
`python -m qlensctl.main` as a real process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cli import ROOT, Result, cli_env, qlensctl, run_cli
from tests.support.json_errors import json_error


@pytest.fixture(autouse=True)
def _checkout_environments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QLENS_ENVIRONMENTS", str(ROOT / "environments"))


@pytest.mark.parametrize("args,message", [
    (["scale", "staging", "gateway", "three"], "replicas must be a whole number (got 'three')"),
    (["scale", "staging", "gateway", "101"], "replicas must be between 0 and 100 (got 101)"),
    (["scale", "staging", "gateway", "-1"], "replicas must be between 0 and 100 (got -1)"),
    (["scale", "staging", "web", "3"], "unknown service 'web'"),
    (["scale", "qa", "gateway", "3"], "unknown environment 'qa'"),
    (["maintenance", "start", "qa"], "unknown environment 'qa'"),
    (["maintenance", "end", "staging", "--url", "ftp://gateway"], "is not an http(s) URL"),
    (["restore", "staging", "no-such-backup.yaml"], "no-such-backup.yaml: no such file"),
])
def test_a_config_error_is_a_json_document_with_exit_2(args: list[str], message: str) -> None:
    result = run_cli(*args, "--json")
    assert result.code == 2, result.text
    error = json_error(result)
    assert error["type"] == "ConfigError"
    assert message in error["message"] and error["hint"]
    plain = run_cli(*args)  # without --json: the same code and text, nothing on stdout
    assert (plain.code, plain.out, plain.err) == (2, "", result.err)


def test_a_usage_error_click_finds_is_a_json_document_too() -> None:
    result = run_cli("maintenance", "start", "staging", "--replicas", "101", "--json")
    assert result.code == 2, result.text
    error = json_error(result)
    assert error["type"] == "UsageError"
    assert "'--replicas'" in error["message"] and "less than or equal to 100" in error["message"]
    assert error["hint"] == "see `qlensctl maintenance start --help`"
    missing = run_cli("scale", "staging", "--json")
    assert missing.code == 2 and json_error(missing)["message"] == "Missing argument 'service'.", missing.text
    plain = run_cli("maintenance", "start", "staging", "--replicas", "101")
    assert (plain.code, plain.out) == (2, "")
    assert "Error: Invalid value for '--replicas'" in plain.err


def _kubeconfig(path: Path, server: str = "https://127.0.0.1:1") -> Path:
    """One context, `local`, at `server` (nothing listens on port 1)."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "local",
        "clusters": [{"name": "local", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "local"}}],
        "users": [{"name": "local", "user": {"token": "x"}}]}))
    return path


def test_the_context_guard_refuses_as_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "kubeconfig")))
    for args in (["scale", "production", "router", "5", "--yes"],
                 ["maintenance", "start", "production", "--yes"]):
        result = run_cli(*args, "--json")
        assert result.code == 2, result.text
        error = json_error(result)
        assert error["type"] == "RefusedError"
        assert "deploys only to 'qlens-production'; nothing was changed" in error["message"]
        assert "--kube-context qlens-production" in error["hint"]


def test_an_unreachable_cluster_is_a_cluster_error_exit_1(tmp_path: Path) -> None:
    """Through a real process, as a script calling `qlensctl ... --json` would."""
    env = cli_env(KUBECONFIG=str(_kubeconfig(tmp_path / "kubeconfig")))
    proc = qlensctl("scale", "staging", "gateway", "3", "--json", env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    error = json_error(Result(proc.returncode, proc.stdout, proc.stderr))
    assert error["type"] == "ClusterError"
    assert "127.0.0.1:1" in error["message"] and error["hint"]
    assert "Traceback" not in proc.stderr


def test_a_result_document_is_not_followed_by_an_error_document(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that printed its result and then fails (deploy and rollback do: `"ok": false`)
    leaves that document alone on stdout; the error goes to stderr."""
    from qlensctl import output
    from qlensctl.errors import OperationError

    emit = output.emit_json

    def emit_then_fail(data: Any) -> None:
        emit(data)
        raise OperationError("failed after printing its result", "look at the result")

    monkeypatch.setattr(output, "emit_json", emit_then_fail)
    result = run_cli("env", "list", "--json")
    assert result.code == 1, result.text
    assert {e["name"] for e in json.loads(result.out)} >= {"local", "staging", "production"}
    assert "error: failed after printing its result" in result.err


# -- the result types' documents -------------------------------------------------------------------


def _change(service: str, before: int, after: int, hpa: Any = None) -> Any:
    from qlensctl.scaling import ScaleChange

    return ScaleChange(service, f"qlens-{service}", before, after, hpa)


def test_scale_result_shape() -> None:
    from qlensctl.scaling import Autoscaler, ScaleResult

    hpa = Autoscaler("qlens-gateway", 2, 10, 70)
    doc = ScaleResult("production", "qlens-production", [_change("gateway", 3, 12, hpa),
                                                          _change("router", 1, 2)]).as_dict()
    assert doc == {"environment": "production", "namespace": "qlens-production", "changes": [
        {"service": "gateway", "deployment": "qlens-gateway", "before": 3, "after": 12,
         "autoscaler": {"name": "qlens-gateway", "min_replicas": 2, "max_replicas": 10, "target_cpu": 70,
                        "verdict": hpa.verdict(12)}},
        {"service": "router", "deployment": "qlens-router", "before": 1, "after": 2, "autoscaler": None}]}
    assert "lower it back to 10" in doc["changes"][0]["autoscaler"]["verdict"]


def test_maintenance_results_add_what_each_command_reports() -> None:
    from qlensctl.kube import DeploymentStatus
    from qlensctl.scaling import MaintenanceEnd, MaintenanceStart, ScaleResult
    from qlensctl.smoke import CheckResult

    changes = [_change("gateway", 1, 2), _change("router", 1, 2), _change("cache", 1, 2)]
    base = ScaleResult("staging", "qlens-staging", changes).as_dict()
    started = MaintenanceStart("staging", "qlens-staging", changes, Path("backup/values-20261202.yaml"))
    assert started.as_dict() == {**base, "backup": "backup/values-20261202.yaml"}

    health = [DeploymentStatus("qlens-gateway", 2, 2, 2, 2, ("qlens-gateway:v1",), True, False, "ok")]
    checks = [CheckResult("gateway /health", "pass", 1.234)]
    ended = MaintenanceEnd("staging", "qlens-staging", changes, health, "http://127.0.0.1:8080", checks)
    assert ended.as_dict() == {**base, "health": [health[0].as_dict()],
                               "smoke": {"target": "http://127.0.0.1:8080", "checks": [
                                   {"name": "gateway /health", "status": "pass", "ms": 1.2, "detail": ""}]}}


def test_restore_result_is_the_deploy_plus_the_backup_it_deployed() -> None:
    from qlensctl.backup import Backup, RestoreResult
    from qlensctl.release import DeployResult

    saved = Backup(Path("backup/values-20261201.yaml"), {}, "qlens", "qlens-staging", "staging", 4,
                   "qlens-0.1.0", "2026-12-01T10:00:00Z")
    deployed = DeployResult("staging", "qlens-staging", "v1.0.0", True, 6, "deployed",
                            backup=Path("backup/values-20261202.yaml"))
    doc = RestoreResult(saved, deployed).as_dict()
    expected = {**deployed.as_dict(), "file": "backup/values-20261201.yaml", "taken": "2026-12-01T10:00:00Z",
                "backupRevision": 4, "previousValues": "backup/values-20261202.yaml", "state": None}
    del expected["backup"]  # named previousValues: `file` is the backup restored
    assert doc == expected
    with_state = RestoreResult(saved, deployed, Path("backup/state-20261201.json"), 7, 2).as_dict()
    assert with_state["state"] == {"file": "backup/state-20261201.json", "restored": 7, "expired": 2}
