"""Turn a results dict into the terminal tables, the targets verdict, the JSON file and the PNG plot."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

# (label, goal text, how to read the measured value, limit, higher is better)
Target = tuple[str, str, Callable[[dict], float | None], float, bool]


def _get(d: dict, *path: str) -> float | None:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d if isinstance(d, int | float) else None


def overhead(results: dict, scenario: str, base: str, metric: str, p: str) -> float | None:
    q = _get(results, "sequential", scenario, metric, p)
    b = _get(results, "sequential", base, metric, p)
    return None if q is None or b is None else round(q - b, 3)


def _cpu(results: dict) -> float | None:
    return _get(results, "wrk", "miss", "cpu_ms_per_request", "total") or \
        _get(results, "sequential", "miss", "cpu_ms_per_request", "total")


def _rss(results: dict) -> float | None:
    values = [m.get("rss_at_rest_mb") for m in results.get("memory", {}).values()]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _rps_clean(results: dict) -> float | None:
    miss = results.get("wrk", {}).get("miss")
    if not miss:
        return None
    return miss["rps"] if not miss["errors"] else 0.0


def _spread(results: dict, scenario: str) -> float | None:
    """p50 of (last chunk - first chunk): how long a stream keeps arriving after it started."""
    total = _get(results, "sequential", scenario, "latency_ms", "p50")
    first = _get(results, "sequential", scenario, "ttfb_ms", "p50")
    return None if total is None or first is None else total - first


def _unbuffered(results: dict) -> float | None:
    """Streams through QLens arrive spread out like the provider's (1.0 = same spread; a proxy
    that buffers whole answers sends everything at once, near 0)."""
    q, d = _spread(results, "stream-miss"), _spread(results, "stream-direct")
    return None if q is None or not d else round(q / d, 2)


def _worst_feature(results: dict) -> float | None:
    """The largest p50 one optional feature adds to the miss path (all-on is not one feature)."""
    added = [v["added_p50_ms"] for k, v in results.get("features", {}).items()
             if isinstance(v, dict) and "added_p50_ms" in v and k not in ("off", "all-on")]
    return max(added) if added else None


def _vs_portkey(results: dict) -> float | None:
    q = _rps_clean(results)
    p = _get(results, "peers", "portkey", "wrk", "rps")
    return None if q is None or not p else round(q / p, 2)


# issue 15's targets (round two)
TARGETS: list[Target] = [
    ("miss overhead p50, c=1", "<= 1.0 ms",
     lambda r: overhead(r, "miss", "direct", "latency_ms", "p50"), 1.0, False),
    ("miss overhead p99, c=1", "<= 2.5 ms",
     lambda r: overhead(r, "miss", "direct", "latency_ms", "p99"), 2.5, False),
    ("hit p50 end to end, c=1", "<= 0.4 ms",
     lambda r: _get(r, "sequential", "hit", "latency_ms", "p50"), 0.4, False),
    ("miss req/s, c=32, no errors", ">= 1700", _rps_clean, 1700.0, True),
    ("miss req/s over Portkey's, c=32", ">= 2x", _vs_portkey, 2.0, True),
    ("CPU per miss request, all services", "<= 0.55 ms", _cpu, 0.55, False),
    ("RSS per service at rest (largest)", "<= 120 MB", _rss, 120.0, False),
    ("stream TTFB over direct, p50", "<= 1.5 ms",
     lambda r: overhead(r, "stream-miss", "stream-direct", "ttfb_ms", "p50"), 1.5, False),
    ("stream chunks forwarded as they arrive", "spread ratio >= 0.5", _unbuffered, 0.5, True),
    ("RSS per 1,000 open streams", "<= 100 MB",
     lambda r: _get(r, "growth", "open_streams", "rss_growth_mb_per_1000_streams"), 100.0, False),
    ("open streams starved", "0", lambda r: _get(r, "growth", "open_streams", "starved"), 0.0, False),
    ("p50 added by one optional feature (worst)", "<= 0.2 ms", _worst_feature, 0.2, False),
    ("scaling out: 2 replicas on 2 cores / 1 on 1", ">= 1.7x",
     lambda r: _get(r, "scaling", "ratio"), 1.7, True),
    ("qlensctl --help", "<= 120 ms", lambda r: _get(r, "cli", "qlensctl --help", "median_ms"), 120.0, False),
    ("qlensctl render staging", "<= 300 ms",
     lambda r: _get(r, "cli", "qlensctl render staging", "median_ms"), 300.0, False),
]


def breakdown(results: dict) -> dict[str, float] | None:
    """Where the miss path's p50 at concurrency 1 goes, hop by hop (medians do not add exactly;
    this is an attribution, good to a few tenths of a millisecond)."""
    p = {n: _get(results, "sequential", n, "latency_ms", "p50")
         for n in ("direct", "miss", "hop-router", "hop-cache")}
    if any(v is None for v in p.values()):
        return None
    router = p["hop-router"] - p["direct"]  # type: ignore[operator]
    gateway = p["miss"] - p["hop-router"] - p["hop-cache"]  # type: ignore[operator]
    out = {"provider (direct)": p["direct"], "router + Azure adapter (REST)": round(router, 3),
           "cache GET round trip": p["hop-cache"],  # type: ignore[dict-item]
           "gateway (own work, its HTTP in and out)": round(gateway, 3),
           "total overhead (miss - direct)": round(p["miss"] - p["direct"], 3)}  # type: ignore[operator]
    s = {n: _get(results, "sequential", n, "ttfb_ms", "p50")
         for n in ("stream-direct", "stream-miss", "hop-router-stream")}
    if all(v is not None for v in s.values()):
        out["stream first chunk: router + Azure adapter"] = round(
            s["hop-router-stream"] - s["stream-direct"], 3)  # type: ignore[operator]
        out["stream first chunk: gateway (incl. cache GET)"] = round(
            s["stream-miss"] - s["hop-router-stream"], 3)  # type: ignore[operator]
    return out


def evaluate(results: dict) -> list[dict]:
    out = []
    for label, goal, read, limit, higher in TARGETS:
        value = read(results)
        ok = None if value is None else (value >= limit if higher else value <= limit)
        out.append({"target": label, "goal": goal, "measured": value, "met": ok})
    return out


# --- terminal ------------------------------------------------------------------------------------


def _f(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def print_report(results: dict, console: Console) -> None:
    meta = results["meta"]
    console.print(f"[bold]QLens benchmark[/bold]  {meta['started']}  {meta['cpu_model']} x{meta['nproc']}")
    console.print(f"pinning: {meta['pinning']}")
    console.print(f"load average at start: {meta['loadavg_start']}  ·  fake provider: {meta['provider']}")
    if "reference_loop_ms_start" in meta:
        console.print(f"reference loop on the QLens core: {meta['reference_loop_ms_start']} ms at start, "
                      f"{meta.get('reference_loop_ms_end')} ms at the end (lower = faster core; compare runs "
                      "whose figures agree)")
    if meta["loadavg_start"][0] > 0.5 * (meta["nproc"] or 1):
        console.print("[yellow]the machine was busy when this run started: latency figures include waiting "
                      "for a core; CPU per request is the steadier figure[/yellow]")
    if meta.get("qlens_error"):
        console.print(f"[red]QLens did not start:[/red] {meta['qlens_error']} "
                      "(only the direct scenarios ran)")

    seq = results.get("sequential", {})
    if seq:
        t = Table(title="Latency at concurrency 1 (ms; sequential keep-alive requests, interleaved)")
        for col in ("scenario", "n", "p50", "p90", "p99", "+p50 vs direct", "+p99 vs direct", "errors",
                    "x-qlens-cache", "stream total p50"):
            t.add_column(col, justify="left" if col in ("scenario", "x-qlens-cache") else "right")
        t.caption = "streams: p50/p90/p99 are the time to the first chunk; the last column, the whole stream"
        for name, r in seq.items():
            stream = "ttfb_ms" in r  # a stream's first chunk came before its end
            lat = r["ttfb_ms"] if stream else r["latency_ms"]
            base = "stream-direct" if stream else "direct"
            metric = "ttfb_ms" if stream else "latency_ms"
            is_base = name == base
            o50 = None if is_base else overhead(results, name, base, metric, "p50")
            o99 = None if is_base else overhead(results, name, base, metric, "p99")
            t.add_row(f"{name} (TTFB)" if stream else name, str(lat["n"]),
                      _f(lat["p50"]), _f(lat["p90"]), _f(lat["p99"]),
                      "" if is_base else _f(o50), "" if is_base else _f(o99), str(r["errors"]),
                      " ".join(f"{k}:{v}" for k, v in r.get("x_qlens_cache", {}).items()),
                      _f(r["latency_ms"]["p50"]) if stream else "")
        console.print(t)

    hops = results.get("breakdown_c1_p50_ms")
    if hops:
        t = Table(title="Where the miss path's time goes (concurrency 1, p50 ms; from the hop-* rows)")
        t.add_column("part")
        t.add_column("ms", justify="right")
        t.add_column("CPU ms/req", justify="right")
        t.caption = "CPU of a stream is the whole stream's, not just its first chunk"
        cpu = {
            "router + Azure adapter (REST)": _get(seq, "hop-router", "cpu_ms_per_request", "router"),
            "cache GET round trip": _get(seq, "hop-cache", "cpu_ms_per_request", "cache"),
            "gateway (own work, its HTTP in and out)": _get(seq, "miss", "cpu_ms_per_request", "gateway"),
            "total overhead (miss - direct)": _get(seq, "miss", "cpu_ms_per_request", "total"),
            "stream first chunk: router + Azure adapter":
                _get(seq, "hop-router-stream", "cpu_ms_per_request", "router"),
            "stream first chunk: gateway (incl. cache GET)":
                _get(seq, "stream-miss", "cpu_ms_per_request", "gateway"),
        }
        for part, ms in hops.items():
            t.add_row(part, _f(ms), _f(cpu.get(part)) if cpu.get(part) is not None else "")
        console.print(t)

    w = results.get("wrk", {})
    if w:
        t = Table(title=f"Throughput at {results['meta']['connections']} connections (wrk; latency ms)")
        for col in ("scenario", "req/s", "p50", "p99", "errors", "provider calls/req",
                    "CPU ms/req gw", "router", "cache", "total"):
            t.add_column(col, justify="left" if col == "scenario" else "right")
        for name, r in w.items():
            cpu = r.get("cpu_ms_per_request", {})
            t.add_row(name, _f(r["rps"], 0), _f(r["latency_ms"]["p50"]), _f(r["latency_ms"]["p99"]),
                      str(sum(r["errors"].values())) if r["errors"] else "0",
                      _f(r["provider_calls_per_request"]),
                      *(_f(cpu.get(k)) for k in ("gateway", "router", "cache", "total")))
        console.print(t)

    mem = results.get("memory", {})
    if mem:
        t = Table(title="Memory of the QLens processes (MB)")
        for col in ("service", "RSS at rest", "peak RSS (VmHWM)"):
            t.add_column(col, justify="left" if col == "service" else "right")
        for name, m in mem.items():
            t.add_row(name, _f(m.get("rss_at_rest_mb"), 1), _f(m.get("peak_rss_mb"), 1))
        console.print(t)

    cli = results.get("cli", {})
    if cli:
        t = Table(title="qlensctl wall time (ms)")
        t.add_column("command")
        t.add_column("median", justify="right")
        t.add_column("fastest", justify="right")
        t.add_column("runs", justify="right")
        for name, c in cli.items():
            if c.get("ok"):
                t.add_row(name, _f(c.get("median_ms"), 0), _f(c.get("min_ms"), 0), str(c.get("runs")))
            else:
                t.add_row(name, f"n/a ({c.get('error')})", "", "")
        console.print(t)

    t = Table(title="Targets")
    for col in ("target", "goal", "measured", "met"):
        t.add_column(col, justify="right" if col == "measured" else "left")
    for row in results["targets"]:
        met = {True: "[green]yes[/green]", False: "[red]NO[/red]", None: "[dim]n/a[/dim]"}[row["met"]]
        t.add_row(row["target"], row["goal"], _f(row["measured"]), met)
    console.print(t)


# --- files ---------------------------------------------------------------------------------------


def write_json(results: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = results["meta"]["started"].replace(":", "").replace("-", "")
    path = out_dir / f"bench-{stamp}.json"
    text = json.dumps(results, indent=2)
    path.write_text(text)
    (out_dir / "latest.json").write_text(text)
    return path


def write_plot(samples: dict[str, list[float]], ttfb: dict[str, list[float]], rps: dict[str, float],
               out_dir: Path, subtitle: str) -> Path | None:
    """Latency distributions (empirical CDFs, log time axis) direct vs miss vs hit, stream TTFB, req/s."""
    plt = pyplot()
    colors = {"direct": "#555555", "miss": "#d62728", "hit": "#2ca02c",
              "stream-direct": "#555555", "stream-miss": "#9467bd"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [3, 3, 2]})

    def ecdf(ax, data: dict[str, list[float]], title: str) -> None:
        for name, values in data.items():
            if not values:
                continue
            s = sorted(values)
            ys = [(i + 1) / len(s) for i in range(len(s))]
            ax.step(s, ys, where="post", label=f"{name} (p50 {s[len(s) // 2]:.2f} ms)",
                    color=colors.get(name))
        ax.set_xscale("log")
        ax.set_xlabel("ms (log scale)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(title)
        for q in (0.5, 0.99):
            ax.axhline(q, color="#bbbbbb", lw=0.6, ls="--")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(loc="lower right", fontsize=8)

    ecdf(axes[0], samples, "Latency, concurrency 1")
    ecdf(axes[1], ttfb, "Streaming: time to first chunk, concurrency 1")
    names = list(rps)
    axes[2].bar(names, [rps[n] for n in names], color=[colors.get(n, "#1f77b4") for n in names])
    axes[2].set_title("Throughput, 32 connections (req/s, log scale)")
    if rps and min(rps.values()) > 0:
        axes[2].set_yscale("log")
    axes[2].tick_params(axis="x", labelrotation=30)
    for i, n in enumerate(names):
        axes[2].text(i, rps[n], f"{rps[n]:.0f}", ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"QLens benchmark: {subtitle}", fontsize=10)
    return save_figure(fig, out_dir, "latency.png", dpi=110)


def pyplot():  # noqa: ANN201 (matplotlib.pyplot, a module)
    """matplotlib's pyplot on the file-only backend (no display here or in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_dir: Path, name: str, dpi: int = 100) -> Path:
    """Lay out, write out_dir/name, close (figures pile up in pyplot's registry otherwise)."""
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path
