"""Wall time of `qlensctl --help` and `qlensctl render staging`: what an operator waits for.

Each command runs `runs` times after one unmeasured warm-up (so the page cache is warm, as it is
for anyone using the CLI twice); the median is reported. A command that fails (e.g. `render` before
the chart work lands) is reported as n/a with the first line it printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench import stats

ROOT = Path(__file__).resolve().parent.parent

COMMANDS = {
    "qlensctl --help": ["--help"],
    "qlensctl render staging": ["render", "staging"],
}


def qlensctl_argv() -> list[str]:
    script = Path(sys.executable).parent / "qlensctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "qlensctl.main"]


def time_command(args: list[str], runs: int, cores: frozenset[int] | None = None,
                 budget_s: float = 30.0) -> dict:
    """Median wall time of `runs` runs (fewer, but at least 3, if they exceed `budget_s` together)."""
    argv = qlensctl_argv() + args

    def pin() -> None:
        if cores is not None:
            os.sched_setaffinity(0, cores)

    def once() -> tuple[float, subprocess.CompletedProcess]:
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, cwd=str(ROOT), timeout=60, preexec_fn=pin,
                              env={**os.environ, "COLUMNS": "100", "NO_COLOR": "1"})
        return (time.perf_counter() - t0) * 1000, proc

    _, proc = once()
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
        return {"ok": False, "error": f"exit {proc.returncode}: {said[0][:200] if said else 'no output'}"}
    times: list[float] = []
    deadline = time.monotonic() + budget_s
    while len(times) < runs and (len(times) < 3 or time.monotonic() < deadline):
        ms, proc = once()
        times.append(ms)
    return {"ok": True, "median_ms": round(stats.percentile(sorted(times), 50), 1),
            "min_ms": round(min(times), 1), "runs": len(times)}


def time_cli(runs: int, cores: frozenset[int] | None = None) -> dict[str, dict]:
    return {label: time_command(args, runs, cores) for label, args in COMMANDS.items()}
