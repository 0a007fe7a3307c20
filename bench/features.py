"""Each optional feature on and off (issues 14, 15, 16): what it adds to the cache-miss path.

One QLens stack per variant, all started before measuring and then driven in interleaved rounds
(off, auth, budgets, ..., off, auth, ...) so drift and neighbours hit them alike; each round sends
the same unique-request miss workload direct and through the variant at concurrency 1.

off            auth off, cost controls off (memory store, no limits), usage ledger off, tracing off
auth-10k       API keys required, 10,000 keys in the keys file
budgets-redis  cost controls on: daily budgets per tenant and user, on a real redis-server
rate-limits    cost controls on: rpm and tpm per tenant and per key (memory store)
usage-ledger   the usage ledger on (memory store)
tracing-100    OpenTelemetry at 100% sampling, exported over OTLP/HTTP to the fake provider's
               /v1/traces (a collector that keeps nothing; its call count proves spans left)
all-on         everything above together (Redis store)

"added p50" is the variant's overhead p50 minus the off variant's, from the same rounds.
Writes features.md and features.png.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from bench import growth, procs
from bench.stack import BenchEnv

OFF = {"costControls": {"enabled": False, "store": "memory", "dailyLimits": {"total": None}},
       "usage": {"enabled": False}, "observability": {"tracing": {"enabled": False}}}
BUDGETS = {"costControls": {"enabled": True, "store": "redis",
                            "limits": {"perTenant": {"daily": 1e9}, "perUser": {"daily": 1e9}}}}
RATES = {"costControls": {"enabled": True, "limits": {"perTenant": {"rpm": 10**9, "tpm": 10**12},
                                                      "perKey": {"rpm": 10**9, "tpm": 10**12}}}}
USAGE = {"usage": {"enabled": True}}


def _tracing(provider_port: int) -> dict:
    return {"observability": {"tracing": {"enabled": True, "sampleRatio": 1.0,
                                          "endpoint": f"http://127.0.0.1:{provider_port}"}}}


def _merged(*parts: dict) -> dict:
    from bench.stack import _merge

    out: dict = {}
    for p in parts:
        out = _merge(out, p)
    return out


def variants(provider_port: int) -> dict[str, dict]:
    """name -> {auth, keys (API keys in the file), overrides (of the bench environment), redis}"""
    trace = _tracing(provider_port)
    return {
        "off": {"auth": False, "overrides": OFF},
        "auth-10k": {"auth": True, "keys": 10_000, "overrides": OFF},
        "budgets-redis": {"auth": False, "overrides": _merged(OFF, BUDGETS), "redis": True},
        "rate-limits": {"auth": False, "overrides": _merged(OFF, RATES)},
        "usage-ledger": {"auth": False, "overrides": _merged(OFF, USAGE)},
        "tracing-100": {"auth": False, "overrides": _merged(OFF, trace)},
        "all-on": {"auth": True, "keys": 10_000, "redis": True,
                   "overrides": _merged(OFF, BUDGETS, RATES, USAGE, trace)},
    }


def run(provider_env: BenchEnv, *, rounds: int, per_round: int, warmup: int,
        only: list[str] | None = None) -> dict:
    """Start every variant against `provider_env`'s fake provider, measure, stop them all."""
    from tests.support.redis_server import RedisServer

    plan = provider_env.plan
    chosen = {k: v for k, v in variants(provider_env.provider_port).items() if not only or k in only}
    raw: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        envs: dict[str, BenchEnv] = {}
        for name, v in chosen.items():
            extra_env, extra_pids = {}, {}
            if v.get("redis"):
                server = RedisServer(Path(tempfile.mkdtemp(prefix="qlens-bench-redis-"))).start()
                stack.callback(server.stop)
                assert server.proc is not None
                procs.pin(server.proc.pid, plan.qlens)  # the store is part of what QLens costs
                extra_env = {"QLENS_REDIS_URL": server.url}
                extra_pids = {"redis": server.proc.pid}
            env = BenchEnv(plan, qlens=True, auth=v["auth"], keys=v.get("keys", 1), overrides=v["overrides"],
                           extra_env=extra_env, extra_pids=extra_pids)
            env.provider_port = provider_env.provider_port  # one fake provider for every variant
            env._start_qlens()
            stack.callback(env.__exit__, None, None, None)
            if env.stack_error:
                raw[name] = {"error": env.stack_error, "log": env.log_tail(4)}
                continue
            envs[name] = env
        traces0 = _traces(provider_env)
        for r in range(rounds):
            for name, env in envs.items():
                one = growth._measure(env, [(name, False, 0, "")], rounds=1, per_round=per_round,
                                      warmup=warmup if r == 0 else 0)[name]
                acc = raw.setdefault(name, one if r == 0 else raw[name])
                if acc is not one:
                    for k in ("direct", "qlens", "direct_ttfb", "qlens_ttfb"):
                        acc[k] += one[k]
                    for k, v in one["cpu_s"].items():
                        acc["cpu_s"][k] = acc["cpu_s"].get(k, 0.0) + v
                    acc["n"] += one["n"]
                    acc["errors"] += one["errors"]
                    acc["first_error"] = acc["first_error"] or one["first_error"]
    # read after the stacks stopped: a service flushes its last batch of spans on the way out
    traces = _traces(provider_env) - traces0
    out: dict = {}
    for name, r in raw.items():
        out[name] = r if "error" in r else growth._summarise(r, ttfb=False)
    base = out.get("off", {}).get("overhead_p50_ms")
    for r in out.values():
        if base is not None and "overhead_p50_ms" in r:
            r["added_p50_ms"] = round(r["overhead_p50_ms"] - base, 3)
            r["added_cpu_ms"] = round(r["cpu_ms_per_request"]["total"]
                                      - out["off"]["cpu_ms_per_request"]["total"], 3)
    out["otlp_exports_received"] = traces
    return out


def _traces(env: BenchEnv) -> int:
    import json

    from bench.client import Connection

    conn = Connection("127.0.0.1", env.provider_port)
    try:
        return int(json.loads(conn.request("GET", "/stats").body)["traces"])
    finally:
        conn.close()


def markdown(f: dict) -> str:
    lines = ["## Optional features on and off (cache miss, concurrency 1)", "",
             "| variant | overhead p50 ms | overhead p99 ms | added p50 ms vs off | CPU ms/request "
             "| added CPU ms vs off | errors |", "|---|---|---|---|---|---|---|"]
    for name, r in f.items():
        if not isinstance(r, dict):
            continue
        if "error" in r:
            lines.append(f"| {name} | did not start: {r['error']} | | | | | |")
            continue
        cpu = r["cpu_ms_per_request"]
        parts = "+".join(f"{k} {v}" for k, v in cpu.items() if k != "total")
        lines.append(f"| {name} | {r['overhead_p50_ms']:.3f} | {r['overhead_p99_ms']:.3f} | "
                     f"{r.get('added_p50_ms', 'n/a')} | {cpu['total']} ({parts}) | "
                     f"{r.get('added_cpu_ms', 'n/a')} | {r['errors']} |")
    lines += ["", f"OTLP exports received by the stand-in collector: {f.get('otlp_exports_received')}", ""]
    return "\n".join(lines)


def write_plot(f: dict, out_dir: Path, subtitle: str) -> Path:
    from bench.report import pyplot, save_figure

    plt = pyplot()
    rows = {k: v for k, v in f.items() if isinstance(v, dict) and "overhead_p50_ms" in v}
    names = list(rows)
    fig, ax = plt.subplots(1, 2, figsize=(12, 4))
    ax[0].bar(names, [rows[n]["overhead_p50_ms"] for n in names], color="#d62728")
    ax[0].set_title("Miss overhead p50 vs direct (ms), concurrency 1")
    ax[1].bar(names, [rows[n]["cpu_ms_per_request"]["total"] for n in names], color="#1f77b4")
    ax[1].set_title("CPU per request, QLens processes (+ Redis) (ms)")
    for a in ax:
        a.tick_params(axis="x", labelrotation=30)
        a.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"QLens optional features on/off: {subtitle}", fontsize=9)
    return save_figure(fig, out_dir, "features.png")

