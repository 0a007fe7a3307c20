"""The concurrency-32 load generator: Debian's `wrk` driven by a generated Lua script.

The script POSTs the workload body (bench/workload.py); with `unique=True` every request carries
its own id (the cache-miss path), otherwise one pre-formatted request is repeated (cache hit, or the
fake provider directly). wrk's own latency histogram gives the percentiles; `done()` prints them as
one JSON line so nothing has to scrape wrk's human output.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import workload

MARKER = "WRKJSON "

_SCRIPT = r"""
local pre = [==[%(pre)s]==]
local post = [==[%(post)s]==]
local path = [==[%(path)s]==]
local headers = {%(headers)s}
local unique = %(unique)s
local prefix = "w"
local n = 0
local static_request = nil
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
end

function init(args)
  if args[1] then prefix = args[1] end
  prefix = prefix .. "t" .. tostring(tid or 0) .. "-"
  if not unique then
    static_request = wrk.format("POST", path, headers, pre .. prefix .. "static" .. post)
  end
end

function request()
  if static_request then return static_request end
  n = n + 1
  return wrk.format("POST", path, headers, pre .. prefix .. n .. post)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(marker)s{"requests":%%d,"duration_us":%%d,"bytes":%%d,' ..
    '"errors":{"connect":%%d,"read":%%d,"write":%%d,"status":%%d,"timeout":%%d},' ..
    '"latency_us":{"min":%%d,"mean":%%.1f,"max":%%d,"p50":%%d,"p90":%%d,"p99":%%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    errors: dict[str, int]
    latency_ms: dict[str, float]

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def lua_script(path: str, api_key: str | None, unique: bool, stream: bool = False,
               extra_headers: dict[str, str] | None = None) -> str:
    """The Lua script for one scenario. The request-id `prefix` comes from wrk's args (`-- PREFIX`)."""
    all_headers = {**workload.headers(api_key), **(extra_headers or {})}
    hdrs = ", ".join(f'["{k}"] = [==[{v}]==]' for k, v in all_headers.items())
    return _SCRIPT % {
        "pre": workload.BODY_PREFIX,
        "post": workload.suffix(stream),
        "path": path,
        "headers": hdrs,
        "unique": "true" if unique else "false",
        "marker": MARKER,
    }


def parse_output(stdout: str) -> WrkResult:
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            data = json.loads(line[len(MARKER):])
            return WrkResult(
                requests=data["requests"],
                duration_s=data["duration_us"] / 1e6,
                errors=data["errors"],
                latency_ms={k: v / 1000 for k, v in data["latency_us"].items()},
            )
    raise RuntimeError(f"wrk printed no result line; its output was:\n{stdout[-2000:]}")


def run(url: str, path: str, *, api_key: str | None, unique: bool, stream: bool = False,
        connections: int = 32, threads: int = 1, duration_s: float = 4.0, prefix: str = "w",
        timeout_s: float = 10.0, extra_headers: dict[str, str] | None = None) -> WrkResult:
    """Run wrk once against `url` + `path`; bounded by `duration_s` (and killed if it overstays)."""
    binary = wrk_binary()
    if binary is None:
        raise RuntimeError("wrk is not installed: `apt-get install -y wrk`")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua_script(path, api_key, unique, stream, extra_headers))
        script = f.name
    try:
        cmd = [binary, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration_s))}s",
               "--timeout", f"{int(timeout_s)}s", "-s", script, url, "--", prefix]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + timeout_s + 15)
    finally:
        Path(script).unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return parse_output(proc.stdout)
