"""How cost grows with the work (issue 15): request body size, stream length, open streams.

body-size     concurrency 1, unique requests of 1, 16, 64 and 256 KB (a long RAG-style prompt),
              direct and through QLens interleaved per size: overhead (QLens minus direct, p50 and
              p99) and CPU per request of the three QLens processes (/proc).
stream-length concurrency 1, streams of 10, 100 and 1,000 content chunks sent back to back by the
              fake provider (`bench-chunks=N bench-gap-ms=0` in the prompt): time to first chunk
              direct and through QLens, CPU per stream, and CPU per chunk (the slope between the
              shortest and the longest stream).
open-streams  N (default 1,000) streams open at once on a slow upstream (one chunk every 100 ms):
              the QLens processes' RSS while all are open minus at rest (per 1,000 streams), time
              to first chunk p50/p99/max, and how many streams did not finish (starved).

Each writes a table (growth.md) and a PNG (growth-*.png) beside the run's JSON.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench import procs, stats, workload
from bench.client import Connection
from bench.scenarios import CHAT_PATH, new_run_id
from bench.stack import BenchEnv

BODY_SIZES_KB = (1, 16, 64, 256)
STREAM_LENGTHS = (10, 100, 1000)


def _cpu_ms(cpu_s: dict[str, float], n: int) -> dict[str, float]:
    per = {name: round(1000 * s / n, 3) for name, s in cpu_s.items()}
    per["total"] = round(sum(per.values()), 3)
    return per


def _add(acc: dict[str, float], before: dict[str, float], after: dict[str, float]) -> None:
    for name, d in procs.cpu_delta(before, after).items():
        acc[name] = acc.get(name, 0.0) + d


def _measure(env: BenchEnv, cases: list[tuple[str, bool, int, str]], *, rounds: int, per_round: int,
             warmup: int) -> dict[str, dict]:
    """Interleaved rounds of (case name, stream, body size, prompt marker), each sent direct and
    through QLens on one keep-alive connection each; CPU of the QLens processes around the QLens runs."""
    run_id = new_run_id()
    pids = env.qlens_pids()
    direct = Connection("127.0.0.1", env.provider_port)
    gateway = Connection("127.0.0.1", env.gateway_port or 0)
    hdr_direct, hdr_qlens = workload.headers(None), workload.headers(env.api_key)
    out: dict[str, dict] = {name: {"direct": [], "qlens": [], "direct_ttfb": [], "qlens_ttfb": [],
                                   "cpu_s": {}, "n": 0, "errors": 0, "first_error": ""}
                            for name, *_ in cases}
    counter = 0

    def one(conn: Connection, name: str, stream: bool, size: int, marker: str, hdrs: dict,
            record: str | None) -> None:
        nonlocal counter
        counter += 1
        rid = f"{run_id}-{name}-{counter} {marker}".strip()
        r = conn.send(conn.request_bytes("POST", CHAT_PATH, workload.body(rid, stream, size), hdrs))
        ok = r.status == 200 and (not stream or b"[DONE]" in r.body)
        if record is None:
            return
        res = out[name]
        if not ok:
            res["errors"] += 1
            res["first_error"] = res["first_error"] or f"HTTP {r.status}: {r.body[:200]!r}"
            return
        res[record].append(r.elapsed_ns / 1e6)
        res[record + "_ttfb"].append(r.first_chunk_ns / 1e6)

    try:
        for name, stream, size, marker in cases:
            for _ in range(warmup):
                one(direct, name, stream, size, marker, hdr_direct, None)
                one(gateway, name, stream, size, marker, hdr_qlens, None)
        for _ in range(rounds):
            for name, stream, size, marker in cases:
                for _ in range(per_round):
                    one(direct, name, stream, size, marker, hdr_direct, "direct")
                before = procs.cpu_snapshot(pids)
                for _ in range(per_round):
                    one(gateway, name, stream, size, marker, hdr_qlens, "qlens")
                _add(out[name]["cpu_s"], before, procs.cpu_snapshot(pids))
                out[name]["n"] += per_round
    finally:
        direct.close()
        gateway.close()
    return out


def _summarise(raw: dict, ttfb: bool) -> dict:
    d = stats.summary(raw["direct_ttfb" if ttfb else "direct"])
    q = stats.summary(raw["qlens_ttfb" if ttfb else "qlens"])
    return {
        "direct_ms": d, "qlens_ms": q,
        "overhead_p50_ms": round(q["p50"] - d["p50"], 3),
        "overhead_p99_ms": round(q["p99"] - d["p99"], 3),
        "cpu_ms_per_request": _cpu_ms(raw["cpu_s"], raw["n"]) if raw["n"] else {},
        "errors": raw["errors"], **({"first_error": raw["first_error"]} if raw["first_error"] else {}),
    }


def body_size(env: BenchEnv, *, rounds: int, per_round: int, warmup: int,
              sizes_kb: tuple[int, ...] = BODY_SIZES_KB) -> dict:
    cases = [(f"{kb}KB", False, kb * 1024, "") for kb in sizes_kb]
    raw = _measure(env, cases, rounds=rounds, per_round=per_round, warmup=warmup)
    return {name: {"body_bytes": size, **_summarise(raw[name], ttfb=False)} for name, _, size, _ in cases}


def stream_length(env: BenchEnv, *, rounds: int, per_round: int, warmup: int,
                  lengths: tuple[int, ...] = STREAM_LENGTHS) -> dict:
    cases = [(f"{n}chunks", True, 0, f"bench-chunks={n} bench-gap-ms=0") for n in lengths]
    raw = _measure(env, cases, rounds=rounds, per_round=per_round, warmup=warmup)
    out: dict = {}
    for (name, *_), n in zip(cases, lengths, strict=True):
        s = _summarise(raw[name], ttfb=True)  # overhead here is time to first chunk
        s["chunks"] = n
        s["total_ms"] = {k: stats.summary(raw[name][k]) for k in ("direct", "qlens")}
        out[name] = s
    lo, hi = out[f"{lengths[0]}chunks"], out[f"{lengths[-1]}chunks"]
    if lo["cpu_ms_per_request"] and hi["cpu_ms_per_request"]:
        extra_ms = hi["cpu_ms_per_request"]["total"] - lo["cpu_ms_per_request"]["total"]
        out["cpu_us_per_chunk"] = round(1000 * extra_ms / (lengths[-1] - lengths[0]), 2)
    return out


# --- many open streams ----------------------------------------------------------------------------

async def _one_stream(port: int, raw: bytes, t_start: float,
                      deadline: float) -> tuple[float | None, float | None]:
    """(time to first body byte, time to the end of the stream) in ms since t_start; None = never."""
    first = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), deadline)
    except (OSError, TimeoutError):
        return None, None
    try:
        writer.write(raw)
        buf = b""
        head_end = -1
        loop = asyncio.get_running_loop()
        while True:
            left = t_start + deadline - loop.time()
            data = await asyncio.wait_for(reader.read(65536), max(0.01, left))
            if not data:
                return first, None
            buf = (buf + data)[-64:] if head_end >= 0 else buf + data
            if head_end < 0:
                head_end = buf.find(b"\r\n\r\n")
                if head_end < 0:
                    continue
                if not buf.startswith(b"HTTP/1.1 200"):
                    return None, None
                if len(buf) > head_end + 4:
                    first = (loop.time() - t_start) * 1000
                buf = buf[-64:]
            elif first is None:
                first = (loop.time() - t_start) * 1000
            if buf.endswith(b"\r\n0\r\n\r\n"):
                return first, (loop.time() - t_start) * 1000
    except (OSError, TimeoutError):
        return first, None
    finally:
        writer.close()


def open_streams(env: BenchEnv, *, streams: int = 1000, chunks: int = 20, gap_ms: int = 100) -> dict:
    """`streams` concurrent streams through the gateway, each `chunks` chunks `gap_ms` apart."""
    pids = env.qlens_pids()
    port = env.gateway_port or 0
    run_id = new_run_id()
    hdrs = workload.headers(env.api_key)
    probe = Connection("127.0.0.1", port)
    marker = f"bench-chunks={chunks} bench-gap-ms={gap_ms}"
    raws = [probe.request_bytes("POST", CHAT_PATH, workload.body(f"{run_id}-open-{i} {marker}", True), hdrs)
            for i in range(streams)]
    probe.close()
    at_rest = {name: procs.memory_mb(pid)["rss_mb"] for name, pid in pids.items()}
    ideal_ms = chunks * gap_ms
    deadline = ideal_ms / 1000 + 30
    peak = dict(at_rest)

    async def run() -> list[tuple[float | None, float | None]]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        tasks = [asyncio.ensure_future(_one_stream(port, raw, t0, deadline)) for raw in raws]
        while not all(t.done() for t in tasks):
            for name, pid in pids.items():
                peak[name] = max(peak[name], procs.memory_mb(pid)["rss_mb"])
            await asyncio.sleep(0.1)
        return [t.result() for t in tasks]

    cpu0 = procs.cpu_snapshot(pids)
    results = asyncio.run(run())
    cpu = procs.cpu_delta(cpu0, procs.cpu_snapshot(pids))
    firsts = [f for f, _ in results if f is not None]
    ends = [e for _, e in results if e is not None]
    grown = sum(peak.values()) - sum(at_rest.values())
    return {
        "streams": streams, "chunks": chunks, "gap_ms": gap_ms, "ideal_stream_ms": ideal_ms,
        "finished": len(ends), "starved": streams - len(ends),
        "ttfb_ms": stats.summary(firsts), "stream_ms": stats.summary(ends),
        "rss_at_rest_mb": at_rest, "rss_peak_mb": peak,
        "rss_growth_mb_per_1000_streams": round(grown * 1000 / streams, 1),
        "cpu_ms_per_stream": _cpu_ms(cpu, streams),
    }


# --- the report -----------------------------------------------------------------------------------

def markdown(g: dict, meta: dict) -> str:
    lines = [f"# How cost grows ({meta.get('started', '')}; {meta.get('cpu_model', '')} "
             f"x{meta.get('nproc', '')}; load average at start {meta.get('loadavg_start')}; "
             f"{meta.get('pinning', '')})", ""]
    if "body_size" in g:
        lines += ["## Request body size (concurrency 1, cache miss)", "",
                  "| body | direct p50 ms | QLens p50 ms | overhead p50 ms | overhead p99 ms "
                  "| CPU ms/request (gateway+router+cache) | errors |", "|---|---|---|---|---|---|---|"]
        for name, r in g["body_size"].items():
            cpu = r["cpu_ms_per_request"]
            lines.append(f"| {name} | {r['direct_ms']['p50']:.3f} | {r['qlens_ms']['p50']:.3f} | "
                         f"{r['overhead_p50_ms']:.3f} | {r['overhead_p99_ms']:.3f} | "
                         f"{cpu.get('total', 'n/a')} "
                         f"({cpu.get('gateway')}+{cpu.get('router')}+{cpu.get('cache')}) | {r['errors']} |")
        lines.append("")
    if "stream_length" in g:
        lines += ["## Stream length (concurrency 1, chunks back to back)", "",
                  "| chunks | TTFB direct p50 ms | TTFB QLens p50 ms | TTFB overhead p50 ms "
                  "| whole stream QLens p50 ms | CPU ms/stream | errors |", "|---|---|---|---|---|---|---|"]
        for r in g["stream_length"].values():
            if not isinstance(r, dict):
                continue
            lines.append(f"| {r['chunks']} | {r['direct_ms']['p50']:.3f} | {r['qlens_ms']['p50']:.3f} | "
                         f"{r['overhead_p50_ms']:.3f} | {r['total_ms']['qlens']['p50']:.2f} | "
                         f"{r['cpu_ms_per_request'].get('total', 'n/a')} | {r['errors']} |")
        slope = g["stream_length"].get("cpu_us_per_chunk")
        lines += ["", f"CPU per chunk (slope, all three processes): {slope} µs", ""]
    if "open_streams" in g:
        o = g["open_streams"]
        lines += [f"## {o['streams']} open streams ({o['chunks']} chunks, {o['gap_ms']} ms apart: "
                  f"{o['ideal_stream_ms']} ms each)", "",
                  "| finished | starved | TTFB p50 / p99 / max ms | stream p50 / p99 / max ms "
                  "| RSS growth MB per 1,000 streams | CPU ms/stream |", "|---|---|---|---|---|---|",
                  f"| {o['finished']} | {o['starved']} | "
                  f"{o['ttfb_ms']['p50']:.1f} / {o['ttfb_ms']['p99']:.1f} / "
                  f"{o['ttfb_ms']['max']:.1f} | {o['stream_ms']['p50']:.0f} / {o['stream_ms']['p99']:.0f} / "
                  f"{o['stream_ms']['max']:.0f} | {o['rss_growth_mb_per_1000_streams']} | "
                  f"{o['cpu_ms_per_stream']['total']} |", "",
                  f"RSS at rest {o['rss_at_rest_mb']}, peak {o['rss_peak_mb']} (MB)", ""]
    return "\n".join(lines)


def _total(r: dict) -> float:
    return r["cpu_ms_per_request"].get("total", float("nan"))


def write(g: dict, meta: dict, out_dir: Path) -> list[Path]:
    from bench.report import pyplot, save_figure

    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "growth.md"]
    paths[0].write_text(markdown(g, meta))
    sub = f"{meta.get('cpu_model', '')} x{meta.get('nproc', '')}; load {meta.get('loadavg_start')}"
    if "body_size" in g:
        rows = list(g["body_size"].values())
        kb = [r["body_bytes"] / 1024 for r in rows]
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        ax[0].plot(kb, [_total(r) for r in rows], "o-", color="#d62728")
        ax[0].set_title("CPU per request (3 processes)")
        ax[0].set_ylabel("ms")
        ax[1].plot(kb, [r["overhead_p50_ms"] for r in rows], "o-", label="p50")
        ax[1].plot(kb, [r["overhead_p99_ms"] for r in rows], "s--", label="p99")
        ax[1].set_title("Overhead vs direct, concurrency 1")
        ax[1].set_ylabel("ms")
        ax[1].legend()
        for a in ax:
            a.set_xscale("log", base=2)
            a.set_xlabel("request body (KB)")
            a.grid(True, alpha=0.3)
        fig.suptitle(f"QLens cost vs request body size: {sub}", fontsize=9)
        paths.append(save_figure(fig, out_dir, "growth-body-size.png"))
    if "stream_length" in g:
        rows = [r for r in g["stream_length"].values() if isinstance(r, dict)]
        n = [r["chunks"] for r in rows]
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        ax[0].plot(n, [_total(r) for r in rows], "o-", color="#9467bd")
        ax[0].set_title(f"CPU per stream ({g['stream_length'].get('cpu_us_per_chunk')} µs per chunk)")
        ax[0].set_ylabel("ms")
        ax[0].set_yscale("log")
        ax[1].plot(n, [r["direct_ms"]["p50"] for r in rows], "o-", color="#555555", label="direct")
        ax[1].plot(n, [r["qlens_ms"]["p50"] for r in rows], "o-", color="#9467bd", label="QLens")
        ax[1].set_title("Time to first chunk p50")
        ax[1].set_ylabel("ms")
        ax[1].legend()
        for a in ax:
            a.set_xscale("log")
            a.set_xlabel("chunks per stream")
            a.grid(True, alpha=0.3)
        fig.suptitle(f"QLens cost vs stream length: {sub}", fontsize=9)
        paths.append(save_figure(fig, out_dir, "growth-stream-length.png"))
    if "open_streams" in g:
        o = g["open_streams"]
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        names = list(o["rss_at_rest_mb"])
        x = range(len(names))
        ax[0].bar([i - 0.2 for i in x], [o["rss_at_rest_mb"][k] for k in names], 0.4, label="at rest")
        ax[0].bar([i + 0.2 for i in x], [o["rss_peak_mb"][k] for k in names], 0.4,
                  label=f"{o['streams']} streams open")
        ax[0].set_xticks(list(x), names)
        ax[0].set_ylabel("RSS MB")
        ax[0].set_title(f"Memory: +{o['rss_growth_mb_per_1000_streams']} MB per 1,000 streams")
        ax[0].legend()
        ax[1].bar(["TTFB p50", "TTFB p99", "TTFB max"], [o["ttfb_ms"][k] for k in ("p50", "p99", "max")])
        ax[1].set_ylabel("ms")
        ax[1].set_title(f"{o['finished']} finished, {o['starved']} starved")
        fig.suptitle(f"{o['streams']} open streams, slow upstream ({o['gap_ms']} ms per chunk): {sub}",
                     fontsize=9)
        paths.append(save_figure(fig, out_dir, "growth-open-streams.png"))
    return paths


def run_all(env: BenchEnv, *, quick: bool, open_count: int) -> dict:
    t0 = time.monotonic()
    rounds, per, warm = (1, 10, 2) if quick else (3, 40, 5)
    out: dict = {"body_size": body_size(env, rounds=rounds, per_round=per, warmup=warm)}
    out["stream_length"] = stream_length(env, rounds=rounds, per_round=max(5, per // 2), warmup=warm)
    if open_count:
        out["open_streams"] = open_streams(env, streams=open_count)
    out["wall_s"] = round(time.monotonic() - t0, 1)
    return out
