"""`python -m bench --profile`: where each QLens service spends its CPU under load.

py-spy samples the gateway, router and cache (each its own py-spy, in its default blocking mode:
each sample pauses the process for a moment, which slows it a little but keeps the stacks exact;
`--nonblocking` was seen to pin samples on the wrong frame) while wrk drives one scenario. The
collapsed stacks are written to the results folder (open them in speedscope.app, or
`flamegraph.pl`) and summarised here: share of samples by package (uvicorn, starlette, fastapi,
pydantic, httpx, openai, our own modules, ...) and the functions with the most self time and the
most inclusive time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def package_of(path: str) -> str:
    """A readable owner for a source file: the site-packages top level, our module, or the stdlib."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    m = re.search(r"(services/[a-z_]+(?:/[a-z_]+)?|qlensctl)/", path)
    if m:
        return m.group(1)
    m = re.search(r"python3\.\d+/(?:lib-dynload/)?([A-Za-z_]+)", path)
    if m:
        return f"stdlib:{m.group(1).removesuffix('.py')}"
    return path.rsplit("/", 1)[-1]


# leaves that are waiting, not working: an idle thread-pool worker blocked on its queue (py-spy
# cannot always tell), and the event loop's own C code (uvloop: I/O, epoll wait, callbacks)
IDLE_LEAVES = ("_worker (stdlib:concurrent:thread.py)",)
LOOP_LEAF = "Runner.run (stdlib:asyncio:runners.py)"


def summarise(collapsed: str, top: int = 15) -> dict:
    """Shares of the samples that did Python work (idle workers dropped; the event loop's C time,
    the Runner.run leaf, reported apart as `event_loop_pct`)."""
    total = 0
    idle = 0
    loop = 0
    self_time: Counter = Counter()
    incl_time: Counter = Counter()
    by_package: Counter = Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f for f in stack.split(";") if f]
        # py-spy puts the thread name first ("process 123:\"python\"" / "thread (0x...)")
        frames = [f for f in frames if _FRAME.match(f)]
        if not frames:
            continue
        leaf = _FRAME.match(frames[-1])
        assert leaf is not None
        if _short(leaf) in IDLE_LEAVES:
            total -= n
            idle += n
            continue
        if _short(leaf) == LOOP_LEAF:
            loop += n
        self_time[_short(leaf)] += n
        by_package[package_of(leaf.group("file"))] += n
        for f in set(frames):
            m = _FRAME.match(f)
            if m:
                incl_time[_short(m)] += n

    def pct(c: Counter) -> list[list]:
        return [[k, round(100 * v / total, 1)] for k, v in c.most_common(top)] if total else []

    return {"samples": total, "idle_thread_samples": idle,
            "event_loop_pct": round(100 * loop / total, 1) if total else 0.0,
            "self_by_package_pct": pct(by_package), "self_pct": pct(self_time),
            "inclusive_pct": pct(incl_time)}


def _short(m: re.Match) -> str:
    return f"{m.group('func')} ({package_of(m.group('file'))}:{m.group('file').rsplit('/', 1)[-1]})"


def start(pids: dict[str, int], duration_s: float, out_dir: Path, rate: int = 250) -> dict[str, tuple]:
    """Start one py-spy per service; returns {name: (Popen, output path)}."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed: `.venv/bin/pip install py-spy`")
    out_dir.mkdir(parents=True, exist_ok=True)
    running = {}
    for name, pid in pids.items():
        path = out_dir / f"profile-{name}.collapsed"
        cmd = [binary, "record", "--pid", str(pid), "--duration", str(int(duration_s)), "--rate", str(rate),
               "--format", "raw", "--full-filenames", "--output", str(path)]
        running[name] = (subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), path)
    return running


def finish(running: dict[str, tuple], timeout: float) -> dict[str, dict]:
    out = {}
    for name, (proc, path) in running.items():
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode != 0 or not path.exists():
            out[name] = {"error": (err or b"").decode(errors="replace").strip()[-300:]}
            continue
        out[name] = {"file": str(path), **summarise(path.read_text())}
    return out


# --- reading a profile: `python -m bench.profile FILE [--focus NAME] [--depth N] [--min PCT]` -------


def tree(collapsed: str, focus: str | None = None, depth: int = 12, min_pct: float = 1.0) -> list[str]:
    """A top-down call tree of inclusive sample shares, optionally rooted at frames named `focus`
    (every occurrence, merged), pruned below `min_pct` percent of all samples."""
    root: dict = {"n": 0, "kids": {}}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [m for m in (_FRAME.match(f) for f in stack.split(";")) if m]
        names = [_short(m) for m in frames]
        if names and names[-1] in IDLE_LEAVES:
            continue
        total += n
        if focus is not None:
            idx = next((i for i, name in enumerate(names) if focus in name), None)
            if idx is None:
                continue
            names = names[idx:]
        node = root
        node["n"] += n
        for name in names[:depth]:
            node = node["kids"].setdefault(name, {"n": 0, "kids": {}})
            node["n"] += n
    out = [f"{root['n']} of {total} samples" + (f" under {focus!r}" if focus else "")]

    def walk(node: dict, indent: int) -> None:
        for name, kid in sorted(node["kids"].items(), key=lambda kv: -kv[1]["n"]):
            pct = 100 * kid["n"] / total if total else 0
            if pct < min_pct:
                continue
            out.append(f"{'  ' * indent}{pct:5.1f}% {name}")
            walk(kid, indent + 1)

    walk(root, 0)
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.profile",
                                     description="Print a py-spy profile as a tree.")
    parser.add_argument("file", type=Path)
    parser.add_argument("--focus", help="root the tree at frames whose name contains this")
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--min", type=float, default=1.0, dest="min_pct")
    a = parser.parse_args()
    print("\n".join(tree(a.file.read_text(), a.focus, a.depth, a.min_pct)))
