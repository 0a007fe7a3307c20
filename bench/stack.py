"""Start and stop what the benchmark measures: the fake provider and the three QLens services.

The QLens stack is started by `qlensctl.local.start_stack` (what `qlensctl up` runs) with a bench
environment written to a temp dir: one model (`gpt-4`) served by the real Azure OpenAI adapter,
whose endpoint is the fake provider; memory cache and budgets (a huge daily limit, so budgets are
checked and settled on every request but never refuse one); API keys required, as in production.
Everything is stopped on exit, including on Ctrl-C or an error.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench import procs

ROOT = Path(__file__).resolve().parent.parent

AZURE_API_VERSION = "2024-06-01"
DEPLOYMENT = "gpt-4"


def bench_environment(auth: bool, keys_file: Path | None) -> dict:
    return {
        "name": "bench",
        "providers": {
            "azureOpenAI": {"enabled": True, "apiVersion": AZURE_API_VERSION,
                            "deployments": {DEPLOYMENT: DEPLOYMENT},
                            "pool": {"maxConnections": 1100, "maxKeepalive": 100}},
            "awsBedrock": {"enabled": False},
            "echo": {"enabled": False},
        },
        "models": {
            "gpt-4": {"pricing": {"input": 0.03, "output": 0.06},
                      "deployments": [{"provider": "azureOpenAI", "target": DEPLOYMENT}]},
        },
        "routing": {"deadlineSeconds": 30,
                    "retries": {"maxAttempts": 3, "backoffBaseMs": 50, "backoffMaxMs": 1000},
                    "circuitBreaker": {"failureThreshold": 5, "cooldownSeconds": 10}},
        "cache": {"backend": "memory", "ttlSeconds": 3600, "maxEntries": 100000},
        "costControls": {"enabled": True, "store": "memory", "onStoreFailure": "failOpen",
                         "dailyLimits": {"total": 1_000_000_000}},
        "auth": {"required": auth, **({"keysFile": str(keys_file)} if keys_file else {})},
    }


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass
class BenchEnv:
    """Context manager: fake provider (always) and the QLens stack (unless `qlens=False`)."""

    plan: procs.CorePlan
    provider_args: list[str] = field(default_factory=list)
    qlens: bool = True
    auth: bool = True
    keep: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="qlens-bench-")))
    provider_port: int = 0
    provider_proc: subprocess.Popen | None = None
    stack: object | None = None  # qlensctl.local.Stack
    stack_error: str | None = None
    api_key: str | None = None
    overrides: dict = field(default_factory=dict)  # merged into bench_environment() (bench.features)
    keys: int = 1  # API keys in the keys file (the bench's own is the first)
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_pids: dict[str, int] = field(default_factory=dict)  # measured with QLens (a Redis it uses)

    # --- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> BenchEnv:
        try:
            self._start_provider()
            if self.qlens:
                self._start_qlens()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        from qlensctl.local import stop_pid, stop_stack

        if self.stack is not None:
            stop_stack(self.stack)  # type: ignore[arg-type]
            self.stack = None
        if self.provider_proc is not None:
            stop_pid(self.provider_proc.pid, timeout=5)
            self.provider_proc = None
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # --- what the harness needs ----------------------------------------------------------------

    @property
    def gateway_port(self) -> int | None:
        return self.stack.services["gateway"].port if self.stack else None  # type: ignore[attr-defined]

    def qlens_pids(self) -> dict[str, int]:
        if not self.stack:
            return {}
        pids = {name: svc.pid for name, svc in self.stack.services.items()}  # type: ignore[attr-defined]
        return {**pids, **self.extra_pids}

    def log_tail(self, lines: int = 8) -> str:
        out = []
        for log in sorted((self.workdir / "logs").glob("*.log")):
            text = log.read_text(errors="replace").strip().splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(t[:300] for t in text))
        return "\n".join(out)

    # --- starting ------------------------------------------------------------------------------

    def _start_provider(self) -> None:
        cores = self.plan.provider

        def pin_self() -> None:  # runs in the child before exec
            if cores is not None:
                os.sched_setaffinity(0, cores)

        self.provider_proc = subprocess.Popen(
            [sys.executable, "-m", "bench.fake_provider", "--port", "0", *self.provider_args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            cwd=str(ROOT), preexec_fn=pin_self,
        )
        assert self.provider_proc.stdout is not None
        ready, _, _ = select.select([self.provider_proc.stdout], [], [], 15)
        line = self.provider_proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("ready "):
            raise RuntimeError(f"the fake provider did not start (said {line!r})")
        self.provider_port = int(line.split()[1])

    def _start_qlens(self) -> None:
        from qlensctl.errors import QlensError
        from qlensctl.local import free_port, start_stack
        from services.common.apikeys import KeyEntry, dump_keys, generate_key, hash_key

        keys_file = None
        if self.auth:
            self.api_key = generate_key()
            keys_file = self.workdir / "keys.json"
            entries = {hash_key(self.api_key): KeyEntry("bench", "bench")}
            for i in range(1, self.keys):  # other tenants' keys: what a lookup has to search
                entries[hash_key(generate_key())] = KeyEntry(f"tenant-{i % 500}", f"user-{i}")
            keys_file.write_text(dump_keys(entries))
        config = self.workdir / "bench.yaml"
        environment = _merge(bench_environment(self.auth, keys_file), self.overrides)
        config.write_text(yaml.safe_dump(environment, sort_keys=False))
        env = {
            "AZURE_OPENAI_ENDPOINT": f"http://127.0.0.1:{self.provider_port}",
            "AZURE_OPENAI_API_KEY": "bench-not-a-secret",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            **self.extra_env,
        }
        if keys_file:
            env["QLENS_API_KEYS_FILE"] = str(keys_file)
        ports = {name: free_port() for name in ("gateway", "router", "cache")}
        # children inherit our affinity at fork: start the services from the QLens core
        mine = os.sched_getaffinity(0)
        if self.plan.qlens is not None:
            os.sched_setaffinity(0, self.plan.qlens)
        try:
            self.stack = start_stack("bench", config, ports, self.workdir / "logs", extra_env=env, timeout=30)
        except QlensError as exc:
            self.stack_error = exc.message.splitlines()[0]
            self.keep = True  # leave the logs for whoever reads the report
        finally:
            os.sched_setaffinity(0, mine)
        for pid in self.qlens_pids().values():
            procs.pin(pid, self.plan.qlens)
