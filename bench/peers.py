"""Portkey's gateway beside QLens (issue 15), on the same fake provider, core and workload.

Portkey (`@portkey-ai/gateway`, Node) is installed once with npm into bench/.portkey/ (git-ignored)
and started `--headless`, pinned to the QLens core. Requests carry `x-portkey-provider: openai`
and `x-portkey-custom-host` (the fake provider's /v1), so it forwards the same OpenAI JSON that
QLens's router sends to the Azure path. Measured like QLens's miss path: concurrency 1 interleaved
with direct and QLens (overhead = percentile minus direct's), and wrk at the run's connections
with CPU per request of the node process from /proc. No Portkey (no npm, install failed): the
reason is recorded instead.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from bench import procs, stats, workload, wrk
from bench.client import Connection
from bench.scenarios import CHAT_PATH, new_run_id, provider_calls
from bench.stack import BenchEnv

PORTKEY_VERSION = "1.15.2"
HOME = Path(__file__).resolve().parent / ".portkey"
ENTRY = HOME / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"


def install() -> str | None:
    """None when Portkey is ready, else why not."""
    if ENTRY.exists():
        return None
    if not shutil.which("npm") or not shutil.which("node"):
        return "node/npm not installed"
    HOME.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(HOME),
                               f"@portkey-ai/gateway@{PORTKEY_VERSION}"], capture_output=True, text=True,
                              timeout=300)
    except subprocess.TimeoutExpired:
        return "npm install timed out"
    if proc.returncode != 0 or not ENTRY.exists():
        return f"npm install failed: {proc.stderr.strip()[-300:]}"
    return None


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            Connection("127.0.0.1", port, timeout=0.5).connect()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def run_portkey(env: BenchEnv, *, rounds: int, per_round: int, warmup: int, duration_s: float,
                connections: int, wrk_rounds: int) -> dict:
    from qlensctl.local import free_port, stop_pid

    why = install()
    if why:
        return {"error": why}
    port = free_port()
    proc = subprocess.Popen(["node", str(ENTRY), "--headless", f"--port={port}"], cwd=str(HOME),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        if not _wait_port(port, proc):
            return {"error": "portkey did not start"}
        procs.pin(proc.pid, env.plan.qlens)
        extra = {"x-portkey-provider": "openai", "x-portkey-custom-host": f"http://127.0.0.1:{env.provider_port}/v1",
                 "Authorization": "Bearer bench-not-a-secret"}
        out = {"version": PORTKEY_VERSION, **_sequential(env, port, extra, rounds, per_round, warmup)}
        if wrk.wrk_binary():
            out["wrk"] = _loaded(env, port, proc.pid, extra, duration_s, connections, wrk_rounds)
        out["rss_mb"] = procs.memory_mb(proc.pid)
        return out
    finally:
        stop_pid(proc.pid, timeout=5)


def _sequential(env: BenchEnv, port: int, extra: dict, rounds: int, per_round: int, warmup: int) -> dict:
    run_id = new_run_id()
    targets = {"direct": (env.provider_port, workload.headers(None)),
               "qlens": (env.gateway_port or 0, workload.headers(env.api_key)),
               "portkey": (port, {**workload.headers(None), **extra})}
    conns = {k: Connection("127.0.0.1", p) for k, (p, _) in targets.items()}
    lat: dict[str, list[float]] = {k: [] for k in targets}
    errors = {k: 0 for k in targets}
    n = 0
    try:
        for r in range(rounds + 1):  # round 0 is the warm-up
            for name, (_, hdrs) in targets.items():
                for _ in range(warmup if r == 0 else per_round):
                    n += 1
                    c = conns[name]
                    resp = c.send(c.request_bytes("POST", CHAT_PATH, workload.body(f"{run_id}-pk-{n}"), hdrs))
                    if r == 0:
                        continue
                    if resp.status != 200:
                        errors[name] += 1
                    else:
                        lat[name].append(resp.elapsed_ns / 1e6)
    finally:
        for c in conns.values():
            c.close()
    s = {k: stats.summary(v) for k, v in lat.items()}
    return {"c1_ms": s, "c1_errors": errors,
            "c1_overhead_ms": {k: {p: round(s[k][p] - s["direct"][p], 3) for p in ("p50", "p99")}
                               for k in ("qlens", "portkey")}}


def _loaded(env: BenchEnv, port: int, pid: int, extra: dict, duration_s: float, connections: int,
            wrk_rounds: int) -> dict:
    run_id = new_run_id()
    wrk.run(f"http://127.0.0.1:{port}", CHAT_PATH, api_key=None, unique=True, connections=connections,
            duration_s=1.0, prefix=f"{run_id}w", extra_headers=extra)
    results, cpu, calls = [], 0.0, 0
    for r in range(wrk_rounds):
        c0, p0 = procs.cpu_seconds(pid), provider_calls(env)
        results.append(wrk.run(f"http://127.0.0.1:{port}", CHAT_PATH, api_key=None, unique=True,
                               connections=connections, duration_s=duration_s, prefix=f"{run_id}r{r}",
                               extra_headers=extra))
        cpu += procs.cpu_seconds(pid) - c0
        calls += provider_calls(env) - p0
    requests = sum(x.requests for x in results)
    duration = sum(x.duration_s for x in results)
    return {"rps": round(requests / duration, 1) if duration else 0.0,
            "p99_ms": round(stats.percentile(sorted(x.latency_ms["p99"] for x in results), 50), 3),
            "errors": sum(x.error_count for x in results),
            "cpu_ms_per_request": round(1000 * cpu / max(requests, calls), 3) if requests else None}


def markdown(results: dict) -> str:
    p = results.get("peers", {}).get("portkey")
    if not p:
        return ""
    if "error" in p:
        return f"## Portkey beside QLens\n\nnot measured: {p['error']}\n"
    q = results.get("wrk", {}).get("miss", {})
    o = p["c1_overhead_ms"]
    w = p.get("wrk", {})
    return "\n".join([
        f"## Portkey {p['version']} beside QLens (cache miss, same run, same core)", "",
        "| gateway | overhead p50 ms (c=1) | overhead p99 ms (c=1) | req/s (c=32) | p99 ms (c=32) "
        "| CPU ms/request | errors |", "|---|---|---|---|---|---|---|",
        f"| QLens | {o['qlens']['p50']} | {o['qlens']['p99']} | {q.get('rps')} | "
        f"{q.get('latency_ms', {}).get('p99')} | {q.get('cpu_ms_per_request', {}).get('total')} | "
        f"{sum(q.get('errors', {}).values())} |",
        f"| Portkey | {o['portkey']['p50']} | {o['portkey']['p99']} | {w.get('rps')} | {w.get('p99_ms')} | "
        f"{w.get('cpu_ms_per_request')} | {w.get('errors')} |", ""])
