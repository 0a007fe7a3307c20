"""The scenarios, and the two ways they are driven: sequentially (concurrency 1) and by wrk (32).

direct         the fake provider itself, no QLens: the floor every other number is compared with
miss           through QLens, every request unique: auth, budget, cache lookup (miss), router,
               Azure adapter (REST, pooled), provider, budget settle, cache store
hit            through QLens, the same request every time: answered by the gateway from the cache
stream-direct  the fake provider streaming (SSE), no QLens
stream-miss    through QLens, streaming, every request unique
hop-router     (concurrency 1 only) straight to the router, every request unique: the router's
               and the Azure adapter's share of the miss path
hop-cache      (concurrency 1 only) straight to the cache service, GET of a stored entry: one
               cache round trip as the gateway makes it
hop-router-stream  (concurrency 1 only) straight to the router, streaming: its share of the
               time to first chunk

The sequential runs interleave the scenarios in rounds (direct, miss, hit, direct, miss, hit, ...)
so a noisy neighbour or a slow drift hits all of them alike and the overhead (QLens percentile
minus direct percentile) compares like with like.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from bench import procs, stats, workload, wrk
from bench.client import Connection, Response
from bench.stack import BenchEnv

CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Scenario:
    name: str
    target: str  # "provider", "gateway", or one hop: "router", "cache"
    unique: bool
    stream: bool
    description: str

    @property
    def via_qlens(self) -> bool:
        return self.target != "provider"

    @property
    def hop(self) -> bool:
        """Measured at concurrency 1 only, to split the miss path's time between the services."""
        return self.target in ("router", "cache")


SCENARIOS = (
    Scenario("direct", "provider", True, False, "fake provider, no QLens (the floor)"),
    Scenario("miss", "gateway", True, False, "QLens, cache miss (every request unique)"),
    Scenario("hit", "gateway", False, False, "QLens, cache hit (one repeated request)"),
    Scenario("stream-direct", "provider", True, True, "fake provider streaming, no QLens"),
    Scenario("stream-miss", "gateway", True, True, "QLens streaming, cache miss"),
    Scenario("hop-router", "router", True, False, "router alone -> Azure adapter -> fake provider"),
    Scenario("hop-cache", "cache", False, False, "cache service alone, GET of a stored entry"),
    Scenario("hop-router-stream", "router", True, True, "router alone, streaming"),
)

CACHE_TENANT = "bench"
CACHE_KEY = hashlib.sha256(b"qlens bench").hexdigest()


def available(env: BenchEnv, hops: bool = True) -> list[Scenario]:
    return [s for s in SCENARIOS if (not s.via_qlens or env.gateway_port) and (hops or not s.hop)]


def port_of(env: BenchEnv, sc: Scenario) -> int:
    if sc.target == "provider":
        return env.provider_port
    return env.stack.services[sc.target].port  # type: ignore[attr-defined]


def new_run_id() -> str:
    return uuid.uuid4().hex[:10]


@dataclass
class SeqResult:
    latencies_ms: list[float] = field(default_factory=list)
    ttfb_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    cache_header: Counter = field(default_factory=Counter)
    overhead_header_ms: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)

    def record(self, r: Response) -> None:
        if r.status != 200 or (r.headers.get("transfer-encoding") == "chunked" and b"[DONE]" not in r.body):
            self.errors += 1
            if not self.first_error:
                self.first_error = f"HTTP {r.status}: {r.body[:300].decode(errors='replace')}"
            return
        self.latencies_ms.append(r.elapsed_ns / 1e6)
        self.ttfb_ms.append(r.first_chunk_ns / 1e6)
        if "x-qlens-cache" in r.headers:
            self.cache_header[r.headers["x-qlens-cache"]] += 1
        if "x-qlens-overhead-ms" in r.headers:
            try:
                self.overhead_header_ms.append(float(r.headers["x-qlens-overhead-ms"]))
            except ValueError:
                pass

    def to_dict(self, requests: int) -> dict:
        out: dict = {"latency_ms": stats.summary(self.latencies_ms), "errors": self.errors}
        if self.first_error:
            out["first_error"] = self.first_error
        if any(t != lat for t, lat in zip(self.ttfb_ms, self.latencies_ms, strict=False)):
            out["ttfb_ms"] = stats.summary(self.ttfb_ms)
        if self.cache_header:
            out["x_qlens_cache"] = dict(self.cache_header)
        if self.overhead_header_ms:
            out["x_qlens_overhead_ms"] = stats.summary(self.overhead_header_ms)
        if self.cpu_s and requests:
            out["cpu_ms_per_request"] = _cpu_per_request(self.cpu_s, requests)
        return out


def _cpu_per_request(cpu_s: dict[str, float], requests: int) -> dict[str, float]:
    per = {name: round(1000 * s / requests, 3) for name, s in cpu_s.items()}
    per["total"] = round(sum(per.values()), 3)
    return per


class Driver:
    """Builds requests for a scenario and keeps one keep-alive connection per scenario."""

    def __init__(self, env: BenchEnv, run_id: str) -> None:
        self.env = env
        self.run_id = run_id
        self.conns: dict[str, Connection] = {}
        self.counter = 0
        self.headers = workload.headers(env.api_key)

    def one(self, sc: Scenario) -> Response:
        conn = self.conns.get(sc.name)
        if conn is None:
            conn = self.conns[sc.name] = Connection("127.0.0.1", port_of(self.env, sc))
            if sc.target == "cache":  # the entry every hop-cache request reads
                conn.request("PUT", f"/v1/cache/{CACHE_TENANT}/{CACHE_KEY}?ttl=3600", workload.body("entry"))
        if sc.target == "cache":
            return conn.send(conn.request_bytes("GET", f"/v1/cache/{CACHE_TENANT}/{CACHE_KEY}"))
        self.counter += 1
        rid = f"{self.run_id}-{sc.name}-{self.counter}" if sc.unique else f"{self.run_id}-{sc.name}-static"
        if sc.target == "router":  # what the gateway sends the router
            hdrs = {**workload.headers(None), "x-request-id": rid, "x-qlens-tenant": CACHE_TENANT}
        else:
            hdrs = self.headers if sc.via_qlens else workload.headers(None)
        return conn.send(conn.request_bytes("POST", CHAT_PATH, workload.body(rid, sc.stream), hdrs))

    def close(self) -> None:
        for c in self.conns.values():
            c.close()


def run_sequential(env: BenchEnv, scenarios: list[Scenario], *, rounds: int, per_round: int,
                   stream_per_round: int, warmup: int, max_seconds: float) -> dict[str, SeqResult]:
    driver = Driver(env, new_run_id())
    pids = env.qlens_pids()
    results = {sc.name: SeqResult() for sc in scenarios}
    deadline = time.monotonic() + max_seconds
    try:
        for sc in scenarios:  # warm-up: connections, JIT-free but lazy imports, the hit entry
            for _ in range(warmup):
                driver.one(sc)
        if any(sc.name == "hit" for sc in scenarios):
            time.sleep(0.2)  # the gateway stores cache entries in the background
        for _ in range(rounds):
            for sc in scenarios:
                n = stream_per_round if sc.stream else per_round
                res = results[sc.name]
                before = procs.cpu_snapshot(pids) if sc.via_qlens else {}
                for _ in range(n):
                    res.record(driver.one(sc))
                if before:
                    for name, d in procs.cpu_delta(before, procs.cpu_snapshot(pids)).items():
                        res.cpu_s[name] = res.cpu_s.get(name, 0.0) + d
            if time.monotonic() > deadline:
                break
    finally:
        driver.close()
    return results


@dataclass
class WrkAggregate:
    runs: list[wrk.WrkResult] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)
    provider_calls: int = 0

    def to_dict(self) -> dict:
        requests = sum(r.requests for r in self.runs)
        duration = sum(r.duration_s for r in self.runs)
        errors: Counter = Counter()
        for r in self.runs:
            errors.update(r.errors)
        med = {k: round(_median([r.latency_ms[k] for r in self.runs]), 3) for k in ("p50", "p90", "p99")}
        out = {
            "requests": requests,
            "duration_s": round(duration, 2),
            "rps": round(requests / duration, 1) if duration else 0.0,
            "rps_per_round": [round(r.rps, 1) for r in self.runs],
            "latency_ms": med,
            "errors": {k: v for k, v in errors.items() if v},
            "provider_calls_per_request": round(self.provider_calls / requests, 3) if requests else None,
        }
        if self.cpu_s and requests:
            # wrk counts only answers it read; requests still in flight when it stops (up to one
            # per connection) were served too and reached the provider: count them as work done
            out["cpu_ms_per_request"] = _cpu_per_request(self.cpu_s, max(requests, self.provider_calls))
        return out


def _median(values: list[float]) -> float:
    return stats.percentile(sorted(values), 50)


def provider_calls(env: BenchEnv) -> int:
    import json

    conn = Connection("127.0.0.1", env.provider_port)
    try:
        data = json.loads(conn.request("GET", "/stats").body)
    finally:
        conn.close()
    return int(data["direct"]) + int(data["azure"])


def run_wrk(env: BenchEnv, scenarios: list[Scenario], *, rounds: int, duration_s: float,
            connections: int) -> dict[str, WrkAggregate]:
    run_id = new_run_id()
    pids = env.qlens_pids()
    out = {sc.name: WrkAggregate() for sc in scenarios}
    prime = Driver(env, run_id)
    try:
        for r in range(rounds):
            for sc in scenarios:
                prefix = f"{run_id}r{r}{sc.name}"
                if not sc.unique and sc.via_qlens:
                    _prime_hit(prime, sc, f"{prefix}t1-static")
                agg = out[sc.name]
                calls0 = provider_calls(env)
                before = procs.cpu_snapshot(pids) if sc.via_qlens else {}
                port = port_of(env, sc)
                key = env.api_key if sc.via_qlens else None
                res = wrk.run(f"http://127.0.0.1:{port}", CHAT_PATH, api_key=key,
                              unique=sc.unique, stream=sc.stream, connections=connections,
                              duration_s=duration_s, prefix=prefix)
                if before:
                    for name, d in procs.cpu_delta(before, procs.cpu_snapshot(pids)).items():
                        agg.cpu_s[name] = agg.cpu_s.get(name, 0.0) + d
                agg.provider_calls += provider_calls(env) - calls0
                agg.runs.append(res)
    finally:
        prime.close()
    return out


def _prime_hit(driver: Driver, sc: Scenario, request_id: str) -> None:
    """Put wrk's one request in the cache before wrk repeats it."""
    conn = driver.conns.get("prime") or Connection("127.0.0.1", port_of(driver.env, sc))
    driver.conns["prime"] = conn
    raw = conn.request_bytes("POST", CHAT_PATH, workload.body(request_id, sc.stream), driver.headers)
    for _ in range(20):
        r = conn.send(raw)
        if r.headers.get("x-qlens-cache") == "hit" or r.status != 200:
            return
        time.sleep(0.05)
