"""Running `qlensctl` from a test, the two ways a user's shell does.

- `run_cli(*args)`: in this process through `qlensctl.main.run`, the console script's entry: that
  is where errors become messages and exit codes (typer's CliRunner on `app` would bypass it).
  Fast; the test's monkeypatched environment applies.
- `qlensctl(*args)`: `python -m qlensctl.main` as a real process, with `cli_env()`: this shell
  minus the developer's cloud credentials, keys file and Redis, so nothing of theirs leaks into a
  test (or a test's stack).

`distinct_ports()` and `port_args()` give `qlensctl up` three free ports and the flags naming them.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from qlensctl.local import SERVICE_ORDER, free_port
from services.router.providers.registry import PROVIDERS

ROOT = Path(__file__).resolve().parents[2]
# the developer's shell must not leak into a test stack (every variable a provider of the registry
# reads or is turned on by, keys file, Redis)
PROVIDER_VARS = tuple(dict.fromkeys(
    v for p in PROVIDERS.values() for v in (*(c.env_var for c in p.credentials), *p.detect)))
SCRUB = (*PROVIDER_VARS, "QLENS_API_KEYS_FILE", "QLENS_REDIS_URL", "QLENS_API_KEY", "QLENS_CONFIG")


@dataclass
class Result:
    """What an in-process `qlensctl` run left: its exit code and what it printed."""

    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def run_cli(*args: str) -> Result:
    """Run `qlensctl ARGS` in this process through `qlensctl.main.run`; capture exit code and output."""
    from qlensctl.main import run

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return Result(code, out.getvalue(), err.getvalue())


def cli_env(**extra: str) -> dict[str, str]:
    """This shell without SCRUB, the checkout's environments, and `extra` on top."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    env["QLENS_ENVIRONMENTS"] = str(ROOT / "environments")
    env.update(extra)
    return env


def qlensctl(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `qlensctl ARGS` as a process (default environment: `cli_env()`) and wait for it."""
    return subprocess.run([sys.executable, "-m", "qlensctl.main", *args], capture_output=True, text=True,
                          env=env or cli_env(), cwd=cwd, stdin=subprocess.DEVNULL, timeout=timeout)


def distinct_ports() -> dict[str, int]:
    """A free port per service, three different ones."""
    ports: dict[str, int] = {}
    while len(set(ports.values())) < len(SERVICE_ORDER):
        ports = {name: free_port() for name in SERVICE_ORDER}
    return ports


def port_args(ports: dict[str, int]) -> list[str]:
    """`--cache-port N --router-port N --gateway-port N` for `qlensctl up`."""
    return [arg for name in SERVICE_ORDER for arg in (f"--{name}-port", str(ports[name]))]
