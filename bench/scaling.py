"""Scaling out (issue 15): 1 replica on 1 core vs 2 replicas on 2 cores, sharing one Redis.

Two QLens stacks (gateway + router + cache each) use one real redis-server for the response cache
and the budgets, as replicas in a cluster do. Cache-miss load (unique bodies) from wrk:

one   stack A pinned to core 0 (Redis too); one wrk, `connections` connections, on core 1 with the
      fake provider (the main run's layout)
two   stacks A and B and Redis unpinned on both cores; two wrk processes, half the connections
      each, one per gateway; the fake provider and wrk share the same two cores

ratio = req/s(two) / req/s(one). On a 2-core machine the load generator and the fake provider take
their share of the second core in `two` only, so the ratio is a floor of what 2 replicas on 2
dedicated cores would give. Writes scaling.md and scaling.png.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import procs, wrk
from bench.scenarios import CHAT_PATH, new_run_id, provider_calls
from bench.stack import BenchEnv

SHARED = {"cache": {"backend": "redis"}, "costControls": {"store": "redis"}}


def _wrk_runs(targets: list[tuple[BenchEnv, int]], duration_s: float, run_id: str) -> list[wrk.WrkResult]:
    def one(i: int, env: BenchEnv, conns: int) -> wrk.WrkResult:
        return wrk.run(f"http://127.0.0.1:{env.gateway_port}", CHAT_PATH, api_key=env.api_key, unique=True,
                       connections=conns, duration_s=duration_s, prefix=f"{run_id}s{i}")

    with ThreadPoolExecutor(len(targets)) as pool:
        return list(pool.map(lambda a: one(*a), [(i, e, c) for i, (e, c) in enumerate(targets)]))


def run(provider_env: BenchEnv, *, duration_s: float, connections: int) -> dict:
    from tests.support.redis_server import RedisServer

    plan = provider_env.plan
    every = frozenset(os.sched_getaffinity(0)) | (plan.qlens or frozenset()) | (plan.loadgen or frozenset())
    free = procs.CorePlan(None, None, None, "scaling: pinned by hand")
    out: dict = {"connections": connections, "duration_s": duration_s}
    mine = os.sched_getaffinity(0)
    with contextlib.ExitStack() as stack:
        redis = RedisServer(Path(tempfile.mkdtemp(prefix="qlens-bench-redis-"))).start()
        stack.callback(redis.stop)
        assert redis.proc is not None
        envs = []
        for _ in range(2):
            env = BenchEnv(free, overrides=SHARED, extra_env={"QLENS_REDIS_URL": redis.url},
                           extra_pids={"redis": redis.proc.pid})
            env.provider_port = provider_env.provider_port
            env._start_qlens()
            stack.callback(env.__exit__, None, None, None)
            if env.stack_error:
                return {"error": env.stack_error, "log": env.log_tail(4)}
            envs.append(env)
        a, b = envs
        all_pids = {**{f"a-{k}": v for k, v in a.qlens_pids().items()},
                    **{f"b-{k}": v for k, v in b.qlens_pids().items() if k != "redis"}}
        run_id = new_run_id()
        layouts = {"one": ([(a, connections)], plan.qlens, plan.loadgen),
                   "two": ([(a, connections // 2), (b, connections - connections // 2)], every, every)}
        try:
            for name, (targets, qlens_cores, loadgen_cores) in layouts.items():
                for pid in all_pids.values():
                    procs.pin(pid, qlens_cores)
                if loadgen_cores is not None:
                    os.sched_setaffinity(0, loadgen_cores)
                _wrk_runs(targets, 1.0, f"{run_id}w{name}")  # warm-up: connections, pools
                cpu0 = procs.cpu_snapshot(all_pids)
                calls0 = provider_calls(provider_env)
                results = _wrk_runs(targets, duration_s, f"{run_id}{name}")
                cpu = sum(procs.cpu_delta(cpu0, procs.cpu_snapshot(all_pids)).values())
                served = max(sum(r.requests for r in results), provider_calls(provider_env) - calls0)
                errors = sum(r.error_count for r in results)
                out[name] = {
                    "gateways": len(targets),
                    "rps": round(sum(r.rps for r in results), 1),
                    "p99_ms": max(r.latency_ms["p99"] for r in results),
                    "errors": errors,
                    "cpu_ms_per_request": round(1000 * cpu / served, 3) if served else None,
                    "cores": "QLens + Redis on core 0, wrk + fake provider on core 1" if name == "one"
                             else "everything on both cores",
                }
        finally:
            os.sched_setaffinity(0, mine)
    if out.get("one", {}).get("rps"):
        out["ratio"] = round(out["two"]["rps"] / out["one"]["rps"], 2)
    return out


def markdown(s: dict) -> str:
    if "error" in s:
        return f"## Scaling out\n\ndid not start: {s['error']}\n"
    lines = ["## Scaling out: 1 replica on 1 core vs 2 replicas on 2 cores, one shared Redis "
             f"(cache miss, {s['connections']} connections, {s['duration_s']} s)", "",
             "| layout | gateways | req/s | p99 ms | errors | CPU ms/request (QLens + Redis) | cores |",
             "|---|---|---|---|---|---|---|"]
    for name in ("one", "two"):
        r = s.get(name)
        if r:
            lines.append(f"| {name} | {r['gateways']} | {r['rps']} | {r['p99_ms']} | {r['errors']} | "
                         f"{r['cpu_ms_per_request']} | {r['cores']} |")
    lines += ["", f"ratio (two / one): {s.get('ratio')}", ""]
    return "\n".join(lines)


def write_plot(s: dict, out_dir: Path, subtitle: str) -> Path | None:
    if "ratio" not in s:
        return None
    from bench.report import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(6, 4))
    names = ["1 replica, 1 core", "2 replicas, 2 cores"]
    values = [s["one"]["rps"], s["two"]["rps"]]
    ax.bar(names, values, color=["#1f77b4", "#2ca02c"])
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom")
    ax.set_ylabel("req/s (cache miss)")
    ax.set_title(f"Scaling out: ratio {s['ratio']}")
    fig.suptitle(subtitle, fontsize=8)
    return save_figure(fig, out_dir, "scaling.png")
