"""The benchmark run, start to finish: plan cores, start the fake provider and QLens, measure at
concurrency 1 and at 32 connections, read CPU and memory, optionally profile, time the CLI, report.

Bounded: request counts, wrk durations and a per-phase deadline keep the default run at about
1.5 minutes (`--quick`: about 20 s); everything started is stopped on the way out.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from bench import cli_timing, procs, report, scenarios, wrk
from bench.stack import BenchEnv

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench",
                                description="Benchmark QLens against a fake provider.")
    p.add_argument("--quick", action="store_true", help="small counts and 1 s wrk runs (a smoke run, ~20 s)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds at concurrency 1")
    p.add_argument("--requests", type=int, default=300,
                   help="requests per scenario per round (concurrency 1)")
    p.add_argument("--stream-requests", type=int, default=60, help="streamed requests per scenario per round")
    p.add_argument("--warmup", type=int, default=30, help="unmeasured requests per scenario first")
    p.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    p.add_argument("--wrk-rounds", type=int, default=2, help="interleaved wrk rounds")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--delay-ms", type=float, default=0.0, help="fake provider: wait before answering")
    p.add_argument("--stream-gap-ms", type=float, default=1.0,
                   help="fake provider: pause between streamed chunks")
    p.add_argument("--stream-chunks", type=int, default=4, help="fake provider: content chunks per stream")
    p.add_argument("--cli-runs", type=int, default=7, help="runs of each timed qlensctl command")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument("--no-auth", action="store_true", help="run the gateway without API keys")
    p.add_argument("--direct-only", action="store_true", help="only the fake provider (checks the harness)")
    p.add_argument("--no-cli", action="store_true", help="skip the qlensctl timings")
    p.add_argument("--no-wrk", action="store_true", help="skip the 32-connection runs")
    p.add_argument("--no-growth", action="store_true",
                   help="skip how cost grows: body size, stream length, open streams (bench/growth.py)")
    p.add_argument("--open-streams", type=int, default=1000,
                   help="streams held open at once on a slow upstream (0: skip)")
    p.add_argument("--no-features", action="store_true",
                   help="skip each optional feature on and off (bench/features.py)")
    p.add_argument("--features", default="", help="comma-separated variants only (bench/features.py)")
    p.add_argument("--no-scaling", action="store_true",
                   help="skip scaling out: 2 replicas on 2 cores vs 1 on 1, one Redis (bench/scaling.py)")
    p.add_argument("--no-portkey", action="store_true",
                   help="skip Portkey and LiteLLM beside QLens (bench/peers.py; npm installs Portkey in "
                        "bench/.portkey, pip LiteLLM in bench/.litellm)")
    p.add_argument("--profile", action="store_true", help="also py-spy every service during a wrk miss run")
    p.add_argument("--profile-scenario", default="miss", help="scenario driven while profiling")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder [bench/results]")
    p.add_argument("--keep", action="store_true", help="keep the temp dir with the service logs")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.requests, args.stream_requests, args.warmup = 2, 40, 10, 5
        args.duration, args.wrk_rounds, args.cli_runs = 1.0, 1, 3
        args.open_streams = min(args.open_streams, 100)
    return args


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through BenchEnv.__exit__, which stops every process


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    previous_handler = signal.signal(signal.SIGTERM, _interrupt)
    affinity = os.sched_getaffinity(0)
    try:
        return _main(args)
    finally:  # leave the calling process as it was (the unit test runs us in pytest's process)
        signal.signal(signal.SIGTERM, previous_handler)
        os.sched_setaffinity(0, affinity)


def _main(args: argparse.Namespace) -> int:
    console = Console()
    if not console.is_terminal:  # piped (nox, CI logs): wide enough for the tables
        console = Console(width=140)
    plan = procs.plan_cores(not args.no_pin)
    if plan.loadgen is not None:
        os.sched_setaffinity(0, plan.loadgen)  # wrk and py-spy inherit it
    t_start = time.monotonic()
    results: dict = {"meta": {
        "started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "pinning": plan.note,
        "loadavg_start": [round(x, 2) for x in procs.load_average()],
        "reference_loop_ms_start": procs.reference_loop_ms(plan.qlens),
        "provider": f"delay {args.delay_ms} ms, stream gap {args.stream_gap_ms} ms, "
                    f"{args.stream_chunks} content chunks",
        "connections": args.connections,
        "auth": not args.no_auth,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }}
    samples: dict[str, list[float]] = {}
    ttfb: dict[str, list[float]] = {}
    provider_args = ["--stream-gap-ms", str(args.stream_gap_ms), "--delay-ms", str(args.delay_ms),
                     "--stream-chunks", str(args.stream_chunks)]
    try:
        with BenchEnv(plan, provider_args, qlens=not args.direct_only, auth=not args.no_auth,
                      keep=args.keep) as env:
            if env.stack_error:
                results["meta"]["qlens_error"] = env.stack_error
                console.print(f"[red]QLens did not start[/red]: {env.stack_error}\n{env.log_tail()}")
            pids = env.qlens_pids()
            at_rest = {name: procs.memory_mb(pid)["rss_mb"] for name, pid in pids.items()}
            chosen = scenarios.available(env)
            loaded = [sc for sc in chosen if not sc.hop]  # the hops are split out at concurrency 1

            with console.status("concurrency 1: interleaved sequential rounds"):
                seq = scenarios.run_sequential(env, chosen, rounds=args.rounds, per_round=args.requests,
                                               stream_per_round=args.stream_requests, warmup=args.warmup,
                                               max_seconds=90)
            results["sequential"] = {}
            for sc in chosen:
                r = seq[sc.name]
                n = args.rounds * (args.stream_requests if sc.stream else args.requests)
                results["sequential"][sc.name] = r.to_dict(n)
                if sc.stream:
                    ttfb[sc.name] = r.ttfb_ms
                elif not sc.hop:
                    samples[sc.name] = r.latencies_ms

            if not args.no_wrk:
                if wrk.wrk_binary() is None:
                    results["meta"]["wrk_error"] = "wrk is not installed (apt-get install -y wrk)"
                    console.print("[yellow]wrk is not installed: skipping the 32-connection runs[/yellow]")
                else:
                    status = f"{args.connections} connections: wrk, {args.duration:.0f} s per run"
                    with console.status(status):
                        agg = scenarios.run_wrk(env, loaded, rounds=args.wrk_rounds, duration_s=args.duration,
                                                connections=args.connections)
                    results["wrk"] = {name: a.to_dict() for name, a in agg.items()}

            if not args.no_portkey and pids:
                from bench import peers

                with console.status("Portkey and LiteLLM beside QLens"):
                    results["peers"] = peers.run_all(
                        env, rounds=args.rounds, per_round=args.requests // 2, warmup=args.warmup,
                        duration_s=args.duration, connections=args.connections,
                        wrk_rounds=args.wrk_rounds)

            if not args.no_growth and pids:
                from bench import growth

                with console.status("how cost grows: body size, stream length, open streams"):
                    results["growth"] = growth.run_all(env, quick=args.quick, open_count=args.open_streams)

            if not args.no_features and pids:
                from bench import features

                rounds, per, warm = (1, 20, 3) if args.quick else (4, 60, 10)
                with console.status("optional features on and off: one stack per variant"):
                    results["features"] = features.run(env, rounds=rounds, per_round=per, warmup=warm,
                                                       only=[v for v in args.features.split(",") if v])

            if not args.no_scaling and not args.no_wrk and pids and wrk.wrk_binary():
                from bench import scaling

                with console.status("scaling out: 1 replica on 1 core vs 2 on 2 cores, one Redis"):
                    results["scaling"] = scaling.run(env, duration_s=args.duration,
                                                     connections=args.connections)

            if args.profile and pids:
                results["profile"] = _profile(env, args, chosen, console)

            time.sleep(0.5)  # let the services settle back to rest
            results["memory"] = {
                name: {"rss_at_start_mb": at_rest[name], "rss_at_rest_mb": procs.memory_mb(pid)["rss_mb"],
                       "peak_rss_mb": procs.memory_mb(pid)["peak_rss_mb"]}
                for name, pid in pids.items()
            }
            if env.stack_error:
                results["meta"]["logs"] = str(env.workdir / "logs")
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: everything started was stopped[/yellow]")
        return 130

    if not args.no_cli:
        with console.status("timing qlensctl"):
            results["cli"] = cli_timing.time_cli(args.cli_runs, plan.qlens)

    results["meta"]["reference_loop_ms_end"] = procs.reference_loop_ms(plan.qlens)
    results["breakdown_c1_p50_ms"] = report.breakdown(results)
    results["targets"] = report.evaluate(results)
    results["meta"]["wall_s"] = round(time.monotonic() - t_start, 1)
    report.print_report(results, console)
    path = report.write_json(results, args.out)
    rps = {name: r["rps"] for name, r in results.get("wrk", {}).items()}
    png = report.write_plot(samples, ttfb, rps, args.out,
                            f"{results['meta']['cpu_model']} x{results['meta']['nproc']}; {plan.note}")
    if "growth" in results:
        from bench import growth

        console.print(growth.markdown(results["growth"], results["meta"]))
        written = growth.write(results["growth"], results["meta"], args.out)
        png = f"{png}, " + ", ".join(str(p) for p in written)
    if "features" in results:
        from bench import features

        text = features.markdown(results["features"])
        console.print(text)
        (args.out / "features.md").write_text(text)
        meta = results["meta"]
        sub = f"{meta['cpu_model']} x{meta['nproc']}; load {meta['loadavg_start']}"
        png = f"{png}, {args.out / 'features.md'}, {features.write_plot(results['features'], args.out, sub)}"
    if "peers" in results:
        from bench import peers

        text = peers.markdown(results)
        console.print(text)
        (args.out / "peers.md").write_text(text)
    if "scaling" in results:
        from bench import scaling

        text = scaling.markdown(results["scaling"])
        console.print(text)
        (args.out / "scaling.md").write_text(text)
        meta = results["meta"]
        plot = scaling.write_plot(results["scaling"], args.out, meta["cpu_model"])
        png = f"{png}, {args.out / 'scaling.md'}, {plot}"
    console.print(f"wrote {path}, {args.out / 'latest.json'} and {png}  ({results['meta']['wall_s']} s)")
    return 1 if results["meta"].get("qlens_error") and not args.direct_only else 0


def _profile(env: BenchEnv, args: argparse.Namespace, chosen: list, console: Console) -> dict:
    from bench import profile

    sc = next((s for s in chosen if s.name == args.profile_scenario), None)
    if sc is None or profile.py_spy() is None:
        return {"error": "py-spy is not installed (.venv/bin/pip install py-spy)" if sc
                else f"unknown scenario {args.profile_scenario!r}"}
    duration = max(3.0, args.duration)
    with console.status(f"profiling every service with py-spy during wrk ({sc.name}, {duration:.0f} s)"):
        running = profile.start(env.qlens_pids(), duration + 1, args.out)
        time.sleep(0.5)
        scenarios.run_wrk(env, [sc], rounds=1, duration_s=duration, connections=args.connections)
        out = profile.finish(running, timeout=duration + 20)
    for name, p in out.items():
        if "error" in p:
            console.print(f"[yellow]py-spy on {name} failed[/yellow]: {p['error']}")
            continue
        console.print(f"[bold]{name}[/bold] ({p['samples']} samples): by package "
                      + ", ".join(f"{k} {v}%" for k, v in p["self_by_package_pct"][:8]))
    return {"scenario": sc.name, **out}
