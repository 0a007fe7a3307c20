"""CLI conventions: help, one error-to-exit-code mapping (1 failed, 2 usage/config), no traceback
without --debug, `env list/show` for people and machines, and the parts of `up`/`down` that need
no running service (refusals before anything starts, stale state files).

`run_cli` (tests/support/cli.py) calls `qlensctl.main.run`, the console script's entry,
in-process: that is where errors become messages and exit codes. One test runs the installed
`qlensctl` console script in a real subprocess.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from qlensctl.local import ServiceProcess, Stack, free_port, load_state, save_state
from tests.support.cli import ROOT, cli_env, run_cli


@pytest.fixture(autouse=True)
def _checkout_environments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QLENS_ENVIRONMENTS", str(ROOT / "environments"))


# --- help and conventions -----------------------------------------------------------------------


def _help_sections(text: str) -> dict[str, list[str]]:
    """`Section:` headings of a help text -> the first word of each indented line under them."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = sections.setdefault(line[:-1], [])
        elif line.startswith("  ") and line.strip():
            current.append(line.split()[0])
    return sections


def test_help_lists_every_command_under_its_panel() -> None:
    result = run_cli("--help")
    assert result.code == 0, result.err
    sections = _help_sections(result.out)
    expected = {
        "Deploy": ["deploy", "rollback", "status", "history"],
        "Operate": ["scale", "backup", "restore", "smoke-test", "usage", "maintenance", "keys", "tenants"],
        "Local": ["up", "down"],
        "Config": ["render", "template", "lint", "env", "secrets"],
    }
    for panel, names in expected.items():  # commands added later may join a panel
        assert [n for n in sections[panel] if n in names] == names, (panel, sections[panel])
    assert "Commands" not in sections, "a command registered without rich_help_panel"
    assert list(sections)[-4:] == ["Deploy", "Operate", "Local", "Config"]


def test_version() -> None:
    from qlensctl import __version__

    result = run_cli("--version")
    assert (result.code, result.out.strip()) == (0, f"qlensctl {__version__}")


def test_unknown_command_is_a_usage_error() -> None:
    result = run_cli("deploy-everything")
    assert result.code == 2
    assert "No such command" in result.err


def test_config_error_exit_2_one_line_and_a_hint_no_traceback() -> None:
    result = run_cli("env", "show", "qa")
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert lines[0].startswith("error: unknown environment 'qa'")
    assert lines[-1].startswith("hint: use one of: local, production, staging")
    assert "Traceback" not in result.err


def test_operation_error_exit_1() -> None:
    closed = free_port()
    result = run_cli("smoke-test", "--url", f"http://127.0.0.1:{closed}")
    assert result.code == 1
    assert "error: smoke test failed:" in result.err
    assert "Traceback" not in result.err


def test_debug_adds_the_traceback() -> None:
    result = run_cli("--debug", "env", "show", "qa")
    assert result.code == 2
    assert "Traceback" in result.err
    assert "error: unknown environment 'qa'" in result.err


def test_the_installed_console_script_in_a_real_process() -> None:
    """The `qlensctl` executable pip installed next to this interpreter from pyproject's
    [project.scripts], run as an operator runs it (not `python -m`)."""
    from importlib.metadata import entry_points

    (entry,) = entry_points(group="console_scripts", name="qlensctl")
    assert entry.value == "qlensctl.main:run"
    script = Path(sysconfig.get_path("scripts")) / "qlensctl"
    assert script.is_file() and os.access(script, os.X_OK), f"{script} is not installed: pip install -e ."

    def installed(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(script), *args], capture_output=True, text=True, env=cli_env(), cwd=ROOT,
                              stdin=subprocess.DEVNULL, timeout=timeout)

    proc = installed("env", "show", "qa", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown environment 'qa'")
    assert "hint:" in proc.stderr
    assert "Traceback" not in proc.stderr
    ok = installed("env", "list", "--json", timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert [e["name"] for e in json.loads(ok.stdout)] == ["local", "production", "staging"]


# --- env list / env show ------------------------------------------------------------------------


def test_env_list_table() -> None:
    result = run_cli("env", "list")
    assert result.code == 0, result
    rows = {line.split("│")[1].strip(): line for line in result.out.splitlines() if line.startswith("│")}
    assert set(rows) == {"local", "staging", "production"}
    assert "qlens-production" in rows["production"] and "qlens.quantumlayer.ai" in rows["production"]
    assert "3/3/2" in rows["production"] and "redis" in rows["production"] and "1000" in rows["production"]
    assert "qlens-staging.local" in rows["staging"] and "1/1/1" in rows["staging"]
    assert "100.0" in rows["staging"]


def test_env_list_json() -> None:
    result = run_cli("env", "list", "--json")
    assert result.code == 0, result
    by_name = {e["name"]: e for e in json.loads(result.out)}
    assert by_name["staging"] == {
        "name": "staging", "namespace": "qlens-staging", "domain": "qlens-staging.local", "replicas": "1/1/1",
        "cache": "memory", "dailyLimitUsd": 100.0, "auth": False, "tls": False, "monitoring": "basic",
        "kubeContext": None,
    }
    assert by_name["production"] == {
        "name": "production", "namespace": "qlens-production", "domain": "qlens.quantumlayer.ai",
        "replicas": "3/3/2", "cache": "redis", "dailyLimitUsd": 1000.0, "auth": True, "tls": True,
        "monitoring": "full", "kubeContext": "qlens-production",
    }


def test_env_show_json_and_yaml_agree() -> None:
    as_json = run_cli("env", "show", "production", "--json")
    as_yaml = run_cli("env", "show", "production")
    assert as_json.code == as_yaml.code == 0
    data = json.loads(as_json.out)
    assert yaml.safe_load(as_yaml.out) == data
    assert data["costControls"]["dailyLimits"] == {"total": 1000.0, "perTenant": 200.0, "perUser": 50.0}
    providers = data["providers"]
    assert providers["azureOpenAI"]["deployments"] == {"gpt-4": "gpt-4", "gpt-35-turbo": "gpt-35-turbo"}
    claude = {"id": "claude-3-sonnet", "modelId": "anthropic.claude-3-sonnet-20240229-v1:0",
              "name": "Claude 3 Sonnet"}
    assert providers["awsBedrock"]["models"] == [claude]
    assert data["tls"]["enabled"] is True and data["auth"]["required"] is True
    assert data["kubeContext"] == "qlens-production"


# --- up / down without services: refusals and stale state ---------------------------------------


def test_up_refuses_a_port_in_use_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("up", "--detach", "--state-dir", str(tmp_path), "--gateway-port", str(port),
                         "--router-port", str(free_port()), "--cache-port", str(free_port()))
    assert result.code == 2
    assert f"error: port {port} for the gateway is already in use" in result.err
    assert "--gateway-port" in result.err  # the hint says how to pick another
    assert not (tmp_path / "logs").exists() and load_state(tmp_path) is None  # nothing was started


def test_up_refuses_one_port_for_two_services(tmp_path: Path) -> None:
    port = str(free_port())
    result = run_cli("up", "--detach", "--state-dir", str(tmp_path), "--gateway-port", port,
                     "--router-port", port, "--cache-port", str(free_port()))
    assert result.code == 2
    assert "need three different ports" in result.err
    assert load_state(tmp_path) is None


def test_up_refuses_an_invalid_environment(tmp_path: Path) -> None:
    result = run_cli("up", "--detach", "--env", "qa", "--state-dir", str(tmp_path))
    assert result.code == 2
    assert "unknown environment 'qa'" in result.err


def _stranger(*args: str) -> subprocess.Popen[bytes]:
    """A process that is not a QLens service (or pretends to be one through its arguments)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *args])


def _state_with(pid: int, state_dir: Path, name: str = "gateway") -> None:
    stack = Stack(env="local", config="environments/local.yaml")
    stack.services[name] = ServiceProcess(name=name, port=free_port(), pid=pid, log=str(state_dir / "x.log"))
    save_state(stack, state_dir)


def test_down_with_nothing_recorded(tmp_path: Path) -> None:
    result = run_cli("down", "--state-dir", str(tmp_path))
    assert result.code == 0
    assert "nothing to stop" in result.out


def test_down_never_signals_a_reused_pid(tmp_path: Path) -> None:
    stranger = _stranger()
    try:
        _state_with(stranger.pid, tmp_path)  # a stale state file whose PID now belongs to someone else
        result = run_cli("down", "--state-dir", str(tmp_path))
        assert result.code == 0, result
        assert "no longer running" in result.out
        assert stranger.poll() is None  # still alive: not ours, not touched
        assert load_state(tmp_path) is None
    finally:
        stranger.kill()
        stranger.wait()


def test_up_refuses_while_a_detached_stack_runs_and_down_stops_it(tmp_path: Path) -> None:
    service = _stranger("services.gateway")  # its command line is that of our gateway
    try:
        _state_with(service.pid, tmp_path)
        result = run_cli("up", "--detach", "--state-dir", str(tmp_path))
        assert result.code == 2
        assert "a detached stack is already running" in result.err
        assert "qlensctl down" in result.err
        result = run_cli("down", "--state-dir", str(tmp_path))
        assert result.code == 0, result
        assert "Stopped gateway (local)" in result.out
        assert service.wait(timeout=10) is not None
        assert load_state(tmp_path) is None
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()


def test_down_with_a_corrupt_state_file(tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text("{not json")
    result = run_cli("down", "--state-dir", str(tmp_path))
    assert result.code == 2
    assert "is not a QLens stack state file" in result.err
