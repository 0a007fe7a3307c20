"""Run the three services as local processes: the engine behind `qlensctl up` / `down`.

Each service is `python -m services.<name>` (uvicorn inside) configured by environment variables:
QLENS_CONFIG (the environment file), QLENS_PORT, QLENS_ROUTER_URL / QLENS_CACHE_URL (the gateway's
peers) and whatever credentials the shell has. Start order is cache, router, gateway; each must
answer GET /health/ready before the next starts. On any failure everything started so far is
stopped, so a failed `up` leaves nothing running. The test suite starts its stacks through this
module too, so what users run is what is tested.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qlensctl.errors import ConfigError, OperationError

SERVICE_ORDER = ("cache", "router", "gateway")
DEFAULT_HOST = "127.0.0.1"
STATE_FILE = "stack.json"

Progress = Callable[[str], None]


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = DEFAULT_HOST) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def default_state_dir() -> Path:
    return Path(os.environ.get("QLENS_STATE_DIR") or Path.home() / ".local" / "state" / "qlens")


@dataclass
class ServiceProcess:
    name: str
    port: int
    pid: int
    log: str
    host: str = DEFAULT_HOST

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def alive(self) -> bool:
        """Is this service still running? False for an exited, zombie or reused PID."""
        return pid_running(self.pid, expect=f"services.{self.name}")


def pid_running(pid: int, expect: str | None = None) -> bool:
    """True while `pid` runs (not a zombie) and, when `expect` is given, its command line holds it.

    A state file can outlive its processes and the PID be reused; checking the command line keeps
    `down` from signalling a stranger. Without /proc (not Linux) only existence is checked.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return expect is None  # someone else's process: never ours
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return _reap(pid)
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        _reap(pid)
        return False
    return expect is None or expect in cmdline


def _reap(pid: int) -> bool:
    """Reap `pid` if it is our exited child; True if it is still running (or not our child)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


@dataclass
class Stack:
    env: str
    config: str
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        return self.services["gateway"].url

    def urls(self) -> dict[str, str]:
        return {name: svc.url for name, svc in self.services.items()}

    def to_json(self) -> str:
        return json.dumps({"env": self.env, "config": self.config,
                           "services": {n: asdict(s) for n, s in self.services.items()}}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Stack:
        data = json.loads(text)
        return cls(env=data["env"], config=data["config"],
                   services={n: ServiceProcess(**s) for n, s in data["services"].items()})


def wait_ready(url: str, timeout: float, alive: Callable[[], bool] | None = None) -> dict:
    """Poll `url`/health/ready until it answers 200; fail early if the process died."""
    import httpx

    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(timeout=1.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if alive is not None and not alive():
                raise OperationError(f"process for {url} exited during start-up", None)
            try:
                r = client.get(f"{url}/health/ready")
                if r.status_code == 200:
                    return r.json()
                last = f"HTTP {r.status_code}: {r.text[:200]}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.1)
    raise OperationError(f"{url}/health/ready did not answer 200 within {timeout:.0f}s (last: {last})", None)


def start_service(
    name: str,
    port: int,
    config: Path,
    log_dir: Path,
    extra_env: Mapping[str, str] | None = None,
    host: str = DEFAULT_HOST,
) -> tuple[ServiceProcess, subprocess.Popen[bytes]]:
    """Start one service process; returns at once (use `wait_ready`)."""
    env = dict(os.environ)
    env.update(
        {
            "QLENS_CONFIG": str(config),
            "QLENS_HOST": host,
            "QLENS_PORT": str(port),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if extra_env:
        env.update(extra_env)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:  # a fresh log per start: its tail explains a failed start
        proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C on `up` is handled by us, not delivered twice
            cwd=str(Path(__file__).resolve().parent.parent),
        )
    return ServiceProcess(name=name, port=port, pid=proc.pid, log=str(log_path), host=host), proc


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, wait for a graceful exit, then SIGKILL."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_running(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while pid_running(pid) and time.monotonic() < deadline + 5:
        time.sleep(0.05)


def start_stack(
    env_name: str,
    config: Path,
    ports: Mapping[str, int],
    log_dir: Path,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    progress: Progress | None = None,
) -> Stack:
    """Start cache, router, gateway in order, each ready before the next; all or nothing."""
    if len({ports[name] for name in SERVICE_ORDER}) != len(SERVICE_ORDER):
        raise ConfigError(
            "gateway, router and cache need three different ports, got "
            + ", ".join(f"{n} {ports[n]}" for n in SERVICE_ORDER),
            "pick distinct --gateway-port, --router-port and --cache-port",
        )
    for name in SERVICE_ORDER:
        if port_in_use(ports[name]):
            raise ConfigError(
                f"port {ports[name]} for the {name} is already in use",
                f"stop whatever listens there (`qlensctl down`, or `ss -ltnp 'sport = :{ports[name]}'`), "
                f"or pick another with --{name}-port",
            )
    stack = Stack(env=env_name, config=str(config))
    peers = {
        "QLENS_ROUTER_URL": f"http://{DEFAULT_HOST}:{ports['router']}",
        "QLENS_CACHE_URL": f"http://{DEFAULT_HOST}:{ports['cache']}",
    }
    env = {**peers, **(extra_env or {})}
    started: list[subprocess.Popen[bytes]] = []
    try:
        for name in SERVICE_ORDER:
            if progress:
                progress(f"starting {name} on port {ports[name]}")
            svc, proc = start_service(name, ports[name], config, log_dir, env)
            started.append(proc)
            stack.services[name] = svc
            try:
                body = wait_ready(svc.url, timeout, alive=_running(proc))
                if isinstance(body, dict) and body.get("service") not in (None, name):
                    raise OperationError(f"{svc.url} is answered by a {body.get('service')} service", None)
                if proc.poll() is not None:  # someone else answered on our port while ours died
                    raise OperationError(f"process for {svc.url} exited during start-up", None)
            except OperationError as exc:
                tail = _tail(Path(svc.log))
                raise OperationError(
                    f"{name} failed to start: {exc.message}" + (f"\n{tail}" if tail else ""),
                    f"see the full log in {svc.log}",
                ) from None
    except BaseException:
        # our own children, stopped by PID: they may not have exec'd `services.<name>` yet
        for proc in reversed(started):
            stop_pid(proc.pid)
        raise
    return stack


def _running(proc: subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: proc.poll() is None


def stop_stack(stack: Stack, progress: Progress | None = None) -> list[str]:
    """Stop in reverse order (gateway first, so no request meets a missing peer)."""
    stopped = []
    for name in reversed(SERVICE_ORDER):
        svc = stack.services.get(name)
        if svc is None or not svc.alive():
            continue
        if progress:
            progress(f"stopping {name} (pid {svc.pid})")
        stop_pid(svc.pid)
        stopped.append(name)
    return stopped


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join("  " + line[:300] for line in text[-lines:])


# --- detached stacks: a state folder remembers what `up --detach` started ----------------------


def save_state(stack: Stack, state_dir: Path) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / STATE_FILE
    path.write_text(stack.to_json())
    return path


def load_state(state_dir: Path) -> Stack | None:
    path = state_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        return Stack.from_json(path.read_text())
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} is not a QLens stack state file",
                          f"remove {path} if no stack is running") from None


def clear_state(state_dir: Path) -> None:
    (state_dir / STATE_FILE).unlink(missing_ok=True)
