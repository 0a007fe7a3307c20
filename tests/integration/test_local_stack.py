"""`qlensctl up` / `down` with the real services as real processes.

Every stack runs on free ports with a temp state folder, and every test checks that what it started
is gone afterwards: no process left, every port free again. `qlensctl` runs as the console script
runs (`python -m qlensctl.main`, i.e. `run()`), in a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from qlensctl.errors import OperationError
from qlensctl.local import SERVICE_ORDER, load_state, pid_running, port_in_use, start_stack
from tests.support.cli import ROOT, SCRUB, cli_env, distinct_ports, port_args, qlensctl


def wait_gone(pids: list[int], ports: dict[str, int], timeout: float = 15) -> None:
    """Assert every PID ends and every port is free again within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(pid_running(p) for p in pids) and not any(port_in_use(p) for p in ports.values()):
            return
        time.sleep(0.1)
    alive = [p for p in pids if pid_running(p)]
    busy = [p for p in ports.values() if port_in_use(p)]
    raise AssertionError(f"left running: pids {alive}, ports {busy}")


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """A temp state folder; whatever a test leaves recorded in it is stopped afterwards."""
    state = tmp_path / "state"
    yield state
    if load_state(state) is not None:
        qlensctl("down", "--state-dir", str(state))


def test_up_detach_records_the_stack_and_down_stops_it(state_dir: Path) -> None:
    ports = distinct_ports()
    up = qlensctl("up", "--detach", "--json", "--state-dir", str(state_dir), *port_args(ports))
    assert up.returncode == 0, up.stderr
    started = json.loads(up.stdout)
    assert started["env"] == "local"
    assert started["services"] == {n: f"http://127.0.0.1:{ports[n]}" for n in SERVICE_ORDER}
    pids = list(started["pids"].values())
    assert all(pid_running(p) for p in pids)
    for name, url in started["services"].items():
        ready = httpx.get(f"{url}/health/ready", timeout=5, trust_env=False)
        assert ready.status_code == 200 and ready.json()["service"] == name
    recorded = load_state(state_dir)
    assert recorded is not None and recorded.urls() == started["services"]
    # with no cloud credentials the stack serves echo, marked deterministic
    models = httpx.get(f"{started['services']['gateway']}/v1/models", timeout=5, trust_env=False).json()
    echo = next(m for m in models["data"] if m["id"] == "echo")
    assert echo["qlens"]["deterministic"] is True

    again = qlensctl("up", "--detach", "--state-dir", str(state_dir), *port_args(distinct_ports()))
    assert again.returncode == 2
    assert "a detached stack is already running" in again.stderr

    down = qlensctl("down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    assert "Stopped gateway, router, cache (local)." in down.stdout
    wait_gone(pids, ports)
    assert load_state(state_dir) is None
    assert "nothing to stop" in qlensctl("down", "--state-dir", str(state_dir)).stdout


@pytest.mark.parametrize("busy", ["cache", "gateway"])
def test_a_port_in_use_is_refused_and_nothing_starts(busy: str, state_dir: Path) -> None:
    ports = distinct_ports()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[busy]))
        holder.listen()
        up = qlensctl("up", "--detach", "--state-dir", str(state_dir), *port_args(ports))
    assert up.returncode == 2
    assert f"error: port {ports[busy]} for the {busy} is already in use" in up.stderr
    assert f"--{busy}-port" in up.stderr
    assert "Traceback" not in up.stderr
    assert load_state(state_dir) is None and not (state_dir / "logs").exists()
    assert not any(port_in_use(p) for n, p in ports.items() if n != busy)


def test_a_service_rejecting_its_config_fails_up_and_stops_the_rest(tmp_path: Path, state_dir: Path) -> None:
    """The cache refuses a Redis backend without QLENS_REDIS_URL; the error shows why, nothing runs."""
    data: dict[str, Any] = yaml.safe_load((ROOT / "environments" / "local.yaml").read_text())
    data["name"] = "redisless"
    data["cache"]["backend"] = "redis"
    env_dir = tmp_path / "envs"
    env_dir.mkdir()
    (env_dir / "redisless.yaml").write_text(yaml.safe_dump(data))
    ports = distinct_ports()
    up = qlensctl("up", "--detach", "--env", "redisless", "--timeout", "20", "--state-dir", str(state_dir),
                  *port_args(ports), env=cli_env(QLENS_ENVIRONMENTS=str(env_dir)))
    assert up.returncode == 1
    assert "error: cache failed to start" in up.stderr
    assert "QLENS_REDIS_URL" in up.stderr  # the tail of the service's log says why
    assert f"hint: see the full log in {state_dir / 'logs' / 'cache.log'}" in up.stderr
    assert "Traceback" not in up.stderr
    assert load_state(state_dir) is None
    wait_gone([], ports)


def test_a_port_taken_between_the_check_and_the_start(tmp_path: Path) -> None:
    """cache and router are up when the gateway cannot bind: all of it is stopped, the error says so."""
    ports = distinct_ports()
    holder = socket.socket()
    seen: list[str] = []

    def progress(message: str) -> None:
        seen.append(message)
        if message.startswith("starting gateway"):  # after the port check, before the gateway binds
            holder.bind(("127.0.0.1", ports["gateway"]))
            holder.listen()

    env = {k: "" for k in SCRUB if k != "QLENS_CONFIG"}
    try:
        with pytest.raises(OperationError) as failed:
            start_stack("local", ROOT / "environments" / "local.yaml", ports, tmp_path / "logs",
                        extra_env=env, timeout=30, progress=progress)
    finally:
        holder.close()
    assert failed.value.message.startswith("gateway failed to start")
    assert "address already in use" in failed.value.message.lower()
    assert seen[:2] == [f"starting cache on port {ports['cache']}",
                        f"starting router on port {ports['router']}"]
    wait_gone([], ports)
    assert not _services_listening_on(ports)


def _services_listening_on(ports: dict[str, int]) -> list[int]:
    """PIDs of QLens service processes configured with one of `ports` (read from /proc)."""
    found = []
    wanted = {f"QLENS_PORT={p}".encode() for p in ports.values()}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if b"services." not in (proc / "cmdline").read_bytes():
                continue
            if wanted & set((proc / "environ").read_bytes().split(b"\0")):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _start_foreground(state_dir: Path, ports: dict[str, int]) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    command = [sys.executable, "-m", "qlensctl.main", "up", "--json", "--state-dir", str(state_dir),
               *port_args(ports)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(), cwd=ROOT)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # the JSON document ends with a closing brace at column 0
        lines.append(line)
        if line.startswith("}"):
            break
    if not lines or not lines[-1].startswith("}"):
        proc.kill()
        raise AssertionError(f"up did not start: {proc.communicate(timeout=10)[1]}")
    return proc, json.loads("".join(lines))


def test_foreground_up_stops_all_three_on_ctrl_c(state_dir: Path) -> None:
    ports = distinct_ports()
    proc, started = _start_foreground(state_dir, ports)
    pids = list(started["pids"].values())
    try:
        assert all(pid_running(p) for p in pids)
        ready = httpx.get(f"{started['services']['gateway']}/health/ready", timeout=5, trust_env=False)
        assert ready.status_code == 200
        assert load_state(state_dir) is None  # a foreground stack is not recorded
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_gone(pids, ports)


def test_foreground_up_stops_the_rest_when_a_service_dies(state_dir: Path) -> None:
    ports = distinct_ports()
    proc, started = _start_foreground(state_dir, ports)
    pids = list(started["pids"].values())
    try:
        os.kill(started["pids"]["router"], signal.SIGKILL)
        assert proc.wait(timeout=60) == 1
        assert proc.stderr is not None
        assert "router exited; stopping the stack" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_gone(pids, ports)
