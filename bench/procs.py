"""What the harness reads from /proc and how it pins processes to cores.

CPU time is utime+stime of /proc/<pid>/stat (every thread of the process, in clock ticks: 10 ms on
most kernels, so it is only read around runs of hundreds of requests). Memory is VmRSS (now) and
VmHWM (peak) of /proc/<pid>/status.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields after the ")" start at field 3 (state): utime is field 14, stime 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_mb(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                out["rss_mb" if name == "VmRSS" else "peak_rss_mb"] = round(int(value.split()[0]) / 1024, 1)
    return out


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before}


@dataclass(frozen=True)
class CorePlan:
    """Which cores run QLens, and which run the load generator and the fake provider."""

    qlens: frozenset[int] | None
    loadgen: frozenset[int] | None
    provider: frozenset[int] | None
    note: str

    @property
    def pinned(self) -> bool:
        return self.qlens is not None


def plan_cores(enabled: bool = True) -> CorePlan:
    """Two cores: QLens on the first, load generator + fake provider on the second. Three or more:
    the fake provider gets its own. One core (or pinning off): nothing is pinned, and we say so."""
    cores = sorted(os.sched_getaffinity(0))
    if not enabled:
        return CorePlan(None, None, None, "not pinned (--no-pin)")
    if len(cores) < 2:
        return CorePlan(None, None, None, f"not pinned: only {len(cores)} core available")
    qlens = frozenset({cores[0]})
    if len(cores) == 2:
        other = frozenset({cores[1]})
        return CorePlan(qlens, other, other,
                        f"QLens (gateway, router, cache) on core {cores[0]}; "
                        f"load generator + fake provider on core {cores[1]}")
    provider = frozenset({cores[1]})
    loadgen = frozenset(cores[2:])
    return CorePlan(qlens, loadgen, provider,
                    f"QLens on core {cores[0]}; fake provider on core {cores[1]}; "
                    f"load generator on cores {','.join(map(str, sorted(loadgen)))}")


def pin(pid: int, cores: frozenset[int] | None) -> None:
    """Pin every thread of `pid` (threads created later inherit from the thread that creates them)."""
    if cores is None:
        return
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cores)
        except (ProcessLookupError, PermissionError):
            pass


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def reference_loop_ms(cores: frozenset[int] | None, repeats: int = 5) -> float:
    """Fastest of `repeats` runs of a fixed pure-Python loop on `cores` (the QLens core).

    On a shared or SMT machine a busy neighbour slows every instruction, so CPU time per request
    rises with it; this figure, taken before and after the runs, says how fast the core was. Runs
    compare fairly only when their reference loops agree.
    """
    import time

    mine = os.sched_getaffinity(0)
    if cores is not None:
        os.sched_setaffinity(0, cores)
    try:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            x = 0
            for i in range(200_000):
                x += i * i
            best = min(best, time.perf_counter() - t0)
        return round(best * 1000, 2)
    finally:
        os.sched_setaffinity(0, mine)
