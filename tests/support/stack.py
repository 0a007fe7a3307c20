"""Local-stack fixtures: gateway + router + cache as real processes, started through qlensctl.local.

Each stack gets free ports, its own temp folder (environment file, keys file, logs) and is stopped
when the test (or module) ends. The environment starts from `BASE_ENV` (an `echo` model with
prices, memory cache, memory budgets with no limits, auth off) and takes per-scenario overrides,
deep-merged:

    def test_tiny_budget(make_stack):
        stack = make_stack({"costControls": {"dailyLimits": {"total": 0.01}}})
        client = stack.openai()

    def test_with_keys(make_stack):
        stack = make_stack({"auth": {"required": True}}, keys={"alice": ("acme", "alice")})
        client = stack.openai("alice")          # the generated key of "alice"

For a stack shared by a whole module, use `running_stack(tmp_path_factory.mktemp(...), ...)` in a
module-scoped fixture.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from qlensctl.local import SERVICE_ORDER, Stack, free_port, start_stack, stop_pid, stop_stack
from services.common.apikeys import KeyEntry, dump_keys, generate_key, hash_key
from services.router.providers.registry import PROVIDERS

# prices make budgets bite with the echo provider: ~$0.01 per short request at worst case
BASE_ENV: dict[str, Any] = {
    "name": "test",
    "providers": {"echo": {"enabled": True}},
    "models": {
        "echo": {
            "displayName": "Echo",
            "pricing": {"input": 0.001, "output": 0.002},
            "deployments": [{"provider": "echo", "target": "echo"}],
        },
    },
    "routing": {
        "deadlineSeconds": 10,
        "retries": {"maxAttempts": 2, "backoffBaseMs": 1, "backoffMaxMs": 10},
        "circuitBreaker": {"failureThreshold": 5, "cooldownSeconds": 5},
    },
    "cache": {"enabled": True, "backend": "memory", "ttlSeconds": 300},
    "costControls": {"enabled": True, "store": "memory", "onStoreFailure": "failOpen", "dailyLimits": {}},
    "auth": {"required": False},
}


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`; nested mappings merge, anything else (lists included) replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class RunningStack:
    stack: Stack
    directory: Path
    env: dict[str, Any]
    keys: dict[str, str] = field(default_factory=dict)  # name -> API key (real, generated)
    proc_env: dict[str, str] = field(default_factory=dict)  # what the services were started with

    @property
    def gateway_url(self) -> str:
        return self.stack.gateway_url

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as base_url."""
        return self.gateway_url + "/v1"

    def url(self, service: str) -> str:
        return self.stack.services[service].url

    def log(self, service: str) -> str:
        return Path(self.stack.services[service].log).read_text(errors="replace")

    def restart_service(self, service: str, timeout: float = 60.0) -> None:
        """Start a stopped service again on its port, with the same config and environment."""
        from qlensctl.local import start_service, wait_ready

        old = self.stack.services[service]
        peers = {"QLENS_ROUTER_URL": self.url("router"), "QLENS_CACHE_URL": self.url("cache")}
        svc, proc = start_service(service, old.port, Path(self.stack.config), Path(old.log).parent,
                                  {**peers, **self.proc_env})
        self.stack.services[service] = svc
        wait_ready(svc.url, timeout, alive=lambda: proc.poll() is None)

    def stop_service(self, service: str) -> None:
        """Stop one service (e.g. the router, to see the gateway answer 503)."""
        stop_pid(self.stack.services[service].pid)

    def headers(self, key_name: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[key_name]}"} if key_name else {}

    def openai(self, key_name: str | None = None, **kwargs: Any):
        """A sync openai client for this gateway (with the named key, or a placeholder key)."""
        from openai import OpenAI

        key = self.keys[key_name] if key_name else "no-key-needed"
        return OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=30, **kwargs)

    def async_openai(self, key_name: str | None = None, **kwargs: Any):
        from openai import AsyncOpenAI

        key = self.keys[key_name] if key_name else "no-key-needed"
        return AsyncOpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=30, **kwargs)


def write_keys_file(path: Path, keys: Mapping[str, tuple[str, str]]) -> dict[str, str]:
    """Generate a real key per name, store only their hashes; returns name -> key."""
    generated = {name: generate_key() for name in keys}
    entries = {hash_key(generated[name]): KeyEntry(tenant, user) for name, (tenant, user) in keys.items()}
    path.write_text(dump_keys(entries))
    return generated


@contextmanager
def running_stack(
    directory: Path,
    env_overrides: Mapping[str, Any] | None = None,
    extra_env: Mapping[str, str] | None = None,
    keys: Mapping[str, tuple[str, str]] | None = None,
    timeout: float = 60.0,
) -> Iterator[RunningStack]:
    """Start a stack in `directory`; stop every process on exit, whatever happened."""
    directory.mkdir(parents=True, exist_ok=True)
    env = deep_merge(BASE_ENV, env_overrides or {})
    config = directory / "environment.yaml"
    config.write_text(yaml.safe_dump(env, sort_keys=False))
    # the test's own shell must not leak into the stack (a developer's keys file, cloud credentials):
    # blank the variables that turn providers on (each registry entry's `detect`; the Bedrock
    # adapter reads an empty AWS_PROFILE as unset), and give boto3 empty AWS config and credentials
    # files instead of ~/.aws
    aws_config = directory / "aws-config"
    aws_config.touch()
    proc_env = {"QLENS_API_KEYS_FILE": "", **{v: "" for p in PROVIDERS.values() for v in p.detect},
                "AWS_CONFIG_FILE": str(aws_config), "AWS_SHARED_CREDENTIALS_FILE": str(aws_config)}
    generated: dict[str, str] = {}
    if keys:
        keys_file = directory / "keys.json"
        generated = write_keys_file(keys_file, keys)
        proc_env["QLENS_API_KEYS_FILE"] = str(keys_file)
    proc_env.update(extra_env or {})
    ports = _free_ports()
    stack = start_stack(env["name"], config, ports, directory / "logs", extra_env=proc_env, timeout=timeout)
    try:
        yield RunningStack(stack=stack, directory=directory, env=env, keys=generated, proc_env=proc_env)
    finally:
        stop_stack(stack)


def _free_ports() -> dict[str, int]:
    ports: dict[str, int] = {}
    while len(set(ports.values())) < len(SERVICE_ORDER):
        ports = {name: free_port() for name in SERVICE_ORDER}
    return ports


StackFactory = Callable[..., RunningStack]


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[StackFactory]:
    """Factory: `make_stack(env_overrides=None, extra_env=None, keys=None)` -> RunningStack.

    Every stack made is stopped when the test ends.
    """
    with _StackPool(tmp_path) as pool:
        yield pool.make


class _StackPool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._exits: list[Any] = []

    def make(self, env_overrides: Mapping[str, Any] | None = None, extra_env: Mapping[str, str] | None = None,
             keys: Mapping[str, tuple[str, str]] | None = None) -> RunningStack:
        cm = running_stack(self.root / f"stack{len(self._exits)}", env_overrides, extra_env, keys)
        running = cm.__enter__()
        self._exits.append(cm)
        return running

    def __enter__(self) -> _StackPool:
        return self

    def __exit__(self, *exc: object) -> None:
        for cm in reversed(self._exits):
            cm.__exit__(None, None, None)


@pytest.fixture(scope="session")
def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """One default stack (BASE_ENV: echo, auth off, no limits) shared by every test that only reads.

    Tests using it must not stop its services or depend on its counters starting at zero (use
    distinct prompts and users).
    """
    with running_stack(tmp_path_factory.mktemp("shared-stack")) as stack:
        yield stack
