"""What the reliability tests share: a bounded asyncio load client, a per-deployment faulty Azure
stand-in, Prometheus text parsing, the OpenAI error check, and restarting one service of a stack.

The stacks themselves come from tests/support/stack.py (`make_stack`, `running_stack`); nothing
here starts the gateway, router or cache another way, except `restart_service`, which brings one
of them back on the same port through `qlensctl.local.start_service`, as `qlensctl up` would.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from qlensctl.local import ServiceProcess, start_service, stop_pid, wait_ready
from tests.fakes.azure_openai import PATH, FakeAzureOpenAI
from tests.support.stack import RunningStack

CHAT = "/v1/chat/completions"


def chat(text: str, model: str = "echo", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 32, **extra}


# --- the OpenAI error format -------------------------------------------------------------------


def openai_error(status: int, body: bytes | str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The error object of an OpenAI error body; AssertionError naming what is wrong otherwise."""
    assert 400 <= status < 600, f"not an error status: {status}"
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    assert "Traceback" not in text, text[:500]
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise AssertionError(f"HTTP {status} without a JSON body: {text[:300]!r}") from None
    assert isinstance(parsed, dict) and isinstance(parsed.get("error"), dict), text[:300]
    err = parsed["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    if headers is not None:
        lowered = {k.lower(): v for k, v in headers.items()}
        assert lowered.get("content-type", "").startswith("application/json"), lowered
    return err


def error_of(response: Any) -> dict[str, Any]:
    """`openai_error` of an httpx response."""
    return openai_error(response.status_code, response.content, response.headers)


# --- Prometheus text ---------------------------------------------------------------------------


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of metric `name` (counters: the `_total` name) keyed by its sorted labels."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
    want = set(labels.items())
    return sum(v for k, v in samples(text, name).items() if want <= set(k))


# --- a load client -----------------------------------------------------------------------------


@dataclass
class Outcome:
    index: int
    status: int  # 0: no HTTP answer (connection error or client timeout)
    started: float
    ended: float
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str = ""
    complete: bool = False  # a 200 carrying a chat completion with a message

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.complete


@dataclass
class LoadReport:
    requests: int
    concurrency: int
    wall_seconds: float
    outcomes: list[Outcome]

    def statuses(self) -> Counter[int]:
        return Counter(o.status for o in self.outcomes)

    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]


def is_completion(body: bytes) -> bool:
    try:
        message = orjson.loads(body)["choices"][0]["message"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return False
    return isinstance(message, dict) and bool(message.get("content"))


async def run_load(
    url: str,
    bodies: Callable[[int], dict[str, Any]],
    requests: int,
    concurrency: int,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    stop_after: float = 300.0,
    stop_when: Callable[[], bool] | None = None,
    on_answer: Callable[[Outcome], None] | None = None,
) -> LoadReport:
    """POST `bodies(i)` to `url` for i in range(requests), `concurrency` at a time (aiohttp, one
    connection per slot). Bounded: at most `requests` requests, each at most `timeout` seconds, none
    started after `stop_after` seconds or once `stop_when()` is true. A request the client gave up
    on is status 0. Bodies of answers other than 200 are kept (for their error)."""
    import aiohttp

    outcomes: list[Outcome] = []
    t0 = time.monotonic()
    connector = aiohttp.TCPConnector(limit=concurrency)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    counter = iter(range(requests))
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout,
                                     headers=dict(headers or {})) as session:

        async def one(i: int) -> Outcome:
            out = Outcome(i, 0, time.monotonic(), 0.0)
            try:
                async with session.post(url, data=orjson.dumps(bodies(i)),
                                        headers={"content-type": "application/json"}) as r:
                    out.body = await r.read()
                    out.status = r.status
                    out.headers = {k.lower(): v for k, v in r.headers.items()}
            except (aiohttp.ClientError, TimeoutError) as exc:
                out.error = type(exc).__name__
            out.ended = time.monotonic()
            if out.status == 200:
                out.complete = is_completion(out.body)
                if out.complete:
                    out.body = b""  # thousands of answers need not stay in memory
            return out

        async def worker() -> None:
            for i in counter:
                if time.monotonic() - t0 > stop_after or (stop_when is not None and stop_when()):
                    return
                out = await one(i)
                outcomes.append(out)
                if on_answer is not None:
                    on_answer(out)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadReport(requests, concurrency, time.monotonic() - t0, sorted(outcomes, key=lambda o: o.index))


# --- a faulty Azure OpenAI stand-in ------------------------------------------------------------

_target: ContextVar[str] = ContextVar("target", default="")
_stall: ContextVar[float] = ContextVar("stall", default=0.0)


@dataclass
class Faults:
    """What one Azure deployment does: fail `error_fraction` of calls with `status`, stall
    `stall_fraction` for `stall_seconds` (longer than the router's timeout: a timeout for it).

    `script` overrides the fractions for the next calls, one entry each: "error" (answer `status`),
    "stall" (wait `stall_seconds`, then answer) or "ok"."""

    error_fraction: float = 0.0
    stall_fraction: float = 0.0
    status: int = 500
    stall_seconds: float = 0.0
    script: list[str] = field(default_factory=list)
    errors: int = 0
    stalls: int = 0
    calls: int = 0

    @property
    def injected(self) -> int:
        return self.errors + self.stalls


class FaultyAzure(FakeAzureOpenAI):
    """The Azure stand-in with faults per deployment (`faults["flaky"] = Faults(...)`); deployments
    without an entry behave as the base fake says. Seeded, so a run repeats its fault sequence."""

    def __init__(self, api_key: str, seed: int = 9, **kw: Any) -> None:
        super().__init__(api_key=api_key, seed=seed, **kw)
        self.faults: dict[str, Faults] = {}
        self._fault_rng = random.Random(seed)
        self._fault_lock = threading.Lock()

    def set_faults(self, deployment: str, faults: Faults) -> Faults:
        with self._fault_lock:
            self.faults[deployment] = faults
        return faults

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        match = PATH.match(scope["path"])
        _target.set(match.group(1) if match else "")
        _stall.set(0.0)
        await super().handle(scope, receive, send)

    def _failure(self) -> int | None:
        faults = self.faults.get(_target.get())
        if faults is None:
            return super()._failure()
        with self._fault_lock:
            faults.calls += 1
            if faults.script:
                action = faults.script.pop(0)
            else:
                r = self._fault_rng.random()
                action = "error" if r < faults.error_fraction else \
                    "stall" if r < faults.error_fraction + faults.stall_fraction else "ok"
            if action == "error":
                faults.errors += 1
                return faults.status
            if action == "stall":
                faults.stalls += 1
                _stall.set(faults.stall_seconds)
        return None

    async def pause(self) -> None:
        stall = _stall.get()
        if stall:
            await asyncio.sleep(stall)
            return
        await super().pause()


# --- one service of a stack, killed and brought back ------------------------------------------


def service_env(stack: RunningStack, extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment `running_stack` gave the services (peers, keys file, isolated shell)."""
    keys_file = stack.directory / "keys.json"
    env = {
        "QLENS_ROUTER_URL": stack.url("router"),
        "QLENS_CACHE_URL": stack.url("cache"),
        "QLENS_API_KEYS_FILE": str(keys_file) if stack.keys else "",
        "AZURE_OPENAI_ENDPOINT": "",
        "AWS_ACCESS_KEY_ID": "",
        # as running_stack does: boto3 reads an empty config instead of the developer's ~/.aws
        "AWS_CONFIG_FILE": str(stack.directory / "aws-empty"),
        "AWS_SHARED_CREDENTIALS_FILE": str(stack.directory / "aws-empty"),
    }
    env.update(extra_env or {})
    return env


def restart_service(stack: RunningStack, name: str, extra_env: Mapping[str, str] | None = None,
                    timeout: float = 60.0) -> ServiceProcess:
    """Start service `name` again on its port (its previous process must be gone) and wait until it
    is ready. The stack object then points at the new process, so the stack's teardown stops it.
    Its log goes to a new folder: the dead process's log stays for the secret scans."""
    old = stack.stack.services[name]
    log_dir = stack.directory / f"logs-{name}-{time.monotonic_ns()}"
    svc, proc = start_service(name, old.port, Path(stack.stack.config), log_dir,
                              service_env(stack, extra_env))
    stack.stack.services[name] = svc
    try:
        wait_ready(svc.url, timeout, alive=lambda: proc.poll() is None)
    except BaseException:
        stop_pid(svc.pid)
        raise
    return svc


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def all_logs(stack: RunningStack) -> dict[str, str]:
    """Every log file the stack's processes wrote (restarted ones included), by path."""
    return {str(p): p.read_text(errors="replace") for p in sorted(stack.directory.rglob("*.log"))}
