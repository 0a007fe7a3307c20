"""Other gateways beside QLens (issue 15), on the same fake provider, core and workload.

- Portkey (`@portkey-ai/gateway`, Node) is installed once with npm into bench/.portkey/
  (git-ignored) and started `--headless`. Requests carry `x-portkey-provider: openai` and
  `x-portkey-custom-host` (the fake provider's /v1).
- LiteLLM's proxy (`litellm[proxy]`, Python) is installed once with pip into its own venv,
  bench/.litellm/ (git-ignored: its pins are not ours), and started with one worker and a config
  whose one model is the workload's, `openai/` at the fake provider's /v1 (a bench master key, no
  database, the bundled model-cost map: nothing reaches the network).

Both forward the same OpenAI JSON that QLens's router sends to the Azure path, pinned to the QLens
core. Measured like QLens's miss path: concurrency 1 interleaved with direct and QLens (overhead =
percentile minus direct's), and wrk at the run's connections with CPU per request of the peer's
process from /proc. A peer that cannot be installed or started is recorded with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procs, stats, workload, wrk
from bench.client import Connection
from bench.scenarios import CHAT_PATH, new_run_id, provider_calls
from bench.stack import BenchEnv

PORTKEY_VERSION = "1.15.2"
HOME = Path(__file__).resolve().parent / ".portkey"
ENTRY = HOME / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
LITELLM_VERSION = "1.108.7"
LITELLM_HOME = Path(__file__).resolve().parent / ".litellm"
LITELLM_KEY = "sk-bench-not-a-secret"  # its proxy refuses to start without a master key


@dataclass
class Peer:
    name: str
    title: str
    version: str
    install: Any  # () -> None when ready, else why not
    start: Any  # (port, provider_port, workdir) -> Popen
    headers: Any  # (provider_port) -> extra request headers


def install_portkey() -> str | None:
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


def _start_portkey(port: int, provider_port: int, workdir: Path) -> subprocess.Popen:
    return subprocess.Popen(["node", str(ENTRY), "--headless", f"--port={port}"], cwd=str(HOME),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def _litellm_bin() -> Path:
    return LITELLM_HOME / "bin" / "litellm"


def install_litellm() -> str | None:
    """None when LiteLLM's proxy is ready in its own venv, else why not."""
    if _litellm_bin().exists():
        return None
    try:
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_HOME)], check=True, capture_output=True,
                       timeout=120)
        proc = subprocess.run([str(LITELLM_HOME / "bin" / "pip"), "install", "-q",
                               f"litellm[proxy]=={LITELLM_VERSION}"], capture_output=True, text=True,
                              timeout=900)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"pip install failed: {exc}"
    if proc.returncode != 0 or not _litellm_bin().exists():
        return f"pip install failed: {proc.stderr.strip()[-300:]}"
    return None


def _start_litellm(port: int, provider_port: int, workdir: Path) -> subprocess.Popen:
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {workload.MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{workload.MODEL}\n"
        f"      api_base: http://127.0.0.1:{provider_port}/v1\n"
        "      api_key: bench-not-a-secret\n")
    env = {**os.environ, "LITELLM_MASTER_KEY": LITELLM_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "LITELLM_LOG": "ERROR",
           "DISABLE_SCHEMA_UPDATE": "true", "LITELLM_TELEMETRY": "False"}
    env.pop("DATABASE_URL", None)
    return subprocess.Popen([str(_litellm_bin()), "--config", str(config), "--port", str(port),
                             "--host", "127.0.0.1", "--num_workers", "1"], cwd=str(workdir), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


PEERS = (
    Peer("portkey", "Portkey", PORTKEY_VERSION, install_portkey, _start_portkey,
         lambda provider_port: {"x-portkey-provider": "openai",
                                "x-portkey-custom-host": f"http://127.0.0.1:{provider_port}/v1",
                                "Authorization": "Bearer bench-not-a-secret"}),
    Peer("litellm", "LiteLLM", LITELLM_VERSION, install_litellm, _start_litellm,
         lambda provider_port: {"Authorization": f"Bearer {LITELLM_KEY}"}),
)


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            Connection("127.0.0.1", port, timeout=0.5).connect()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def run_all(env: BenchEnv, **kw: Any) -> dict:
    """Every peer, one after the other: {name: its results or {"error": why}}."""
    return {peer.name: run_peer(peer, env, **kw) for peer in PEERS}


def run_peer(peer: Peer, env: BenchEnv, *, rounds: int, per_round: int, warmup: int, duration_s: float,
             connections: int, wrk_rounds: int) -> dict:
    import tempfile

    from qlensctl.local import free_port, stop_pid

    why = peer.install()
    if why:
        return {"error": why}
    port = free_port()
    with tempfile.TemporaryDirectory(prefix=f"bench-{peer.name}-") as workdir:
        proc = peer.start(port, env.provider_port, Path(workdir))
        try:
            if not _wait_port(port, proc, timeout=90):
                return {"error": f"{peer.name} did not start"}
            procs.pin(proc.pid, env.plan.qlens)
            extra = peer.headers(env.provider_port)
            out = {"version": peer.version, **_sequential(env, port, extra, rounds, per_round, warmup)}
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
               "peer": (port, {**workload.headers(None), **extra})}
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
                               for k in ("qlens", "peer")}}


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
    peers = results.get("peers", {})
    if not peers:
        return ""
    q = results.get("wrk", {}).get("miss", {})
    measured = {n: p for n, p in peers.items() if "error" not in p}
    first: dict[str, Any] = next(iter(measured.values()), {})
    qlens_c1 = first.get("c1_overhead_ms", {}).get("qlens", {})
    titles = {peer.name: peer.title for peer in PEERS}
    title = ", ".join(f"{titles.get(n, n)} {p['version']}" for n, p in measured.items()) or "Other gateways"
    lines = [f"## {title} beside QLens (cache miss, same run, same core)", "",
             "| gateway | overhead p50 ms (c=1) | overhead p99 ms (c=1) | req/s (c=32) | p99 ms (c=32) "
             "| CPU ms/request | errors |", "|---|---|---|---|---|---|---|",
             f"| QLens | {qlens_c1.get('p50')} | {qlens_c1.get('p99')} | {q.get('rps')} | "
             f"{q.get('latency_ms', {}).get('p99')} | {q.get('cpu_ms_per_request', {}).get('total')} | "
             f"{sum(q.get('errors', {}).values())} |"]
    for name, p in peers.items():
        if "error" in p:
            lines.append(f"| {titles.get(name, name)} | not measured: {p['error']} | | | | | |")
            continue
        o, w = p["c1_overhead_ms"]["peer"], p.get("wrk", {})
        lines.append(f"| {titles.get(name, name)} | {o['p50']} | {o['p99']} | {w.get('rps')} | "
                     f"{w.get('p99_ms')} | {w.get('cpu_ms_per_request')} | {w.get('errors')} |")
    lines.append("")
    return "\n".join(lines)
