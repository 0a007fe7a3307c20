"""`python -m bench.clients`: what one HTTP call costs the caller, client by client.

The gateway calls its peers and the router calls Azure OpenAI over HTTP (both with
services/common/http11.py since the router left the openai SDK; the SDK rows show what it cost);
both pay, per request, whatever their HTTP client costs in CPU. This measures that cost against
the fake provider (in its own process, on another core when there are two), for:

- `openai-sdk/httpx2`: AsyncAzureOpenAI with a plain `httpx2.AsyncClient` (httpcore2 + anyio + h11)
- `openai-sdk/aiohttp`: AsyncAzureOpenAI with `openai.DefaultAioHttpClient` (the SDK's own aiohttp
  transport: same SDK, same request building, aiohttp underneath)
- `aiohttp`: a bare aiohttp ClientSession POST (the floor for a Python asyncio client)
- `httpx2`: a bare httpx2.AsyncClient POST
- `qlens-http11`: QLens's own pool (services/common/http11.py `Pool.request`): gateway hops, router to Azure
- `httpcore`: httpcore's `AsyncConnectionPool.request` (what httpx runs on), the alternative
  issue 17 asks http11.py to be compared with

at concurrency 1 and 32, reporting CPU microseconds per request of this process (the caller's cost,
which is what a QLens service pays) and requests per second. Bounded: `--requests` per case.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable

from bench import procs, workload
from bench.stack import DEPLOYMENT, BenchEnv

API_VERSION = "2024-06-01"
BODY = {"model": DEPLOYMENT, "messages": [{"role": "user", "content": "bench"}], "max_tokens": 16}


async def _measure(call: Callable[[], Awaitable[object]], requests: int, concurrency: int) -> dict:
    for _ in range(20):  # warm-up: connections, lazy imports
        await call()
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            await call()

    cpu0, t0 = time.process_time(), time.perf_counter()
    if concurrency == 1:
        for _ in range(requests):
            await call()
    else:
        await asyncio.gather(*(one() for _ in range(requests)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    return {"cpu_us_per_request": round(1e6 * cpu / requests, 1), "rps": round(requests / wall, 1)}


def _cases(base: str) -> dict[str, tuple[Callable[[], object], Callable[[object], Callable]]]:
    """name -> (make client, make call)."""
    import aiohttp
    import httpcore
    import httpx2
    import openai

    from services.common.http11 import Pool

    raw = workload.body("x")

    def sdk(http_client: object) -> object:
        return openai.AsyncAzureOpenAI(azure_endpoint=base, api_key="bench", api_version=API_VERSION,
                                       max_retries=0, http_client=http_client)

    def sdk_call(client: object) -> Callable:
        return lambda: client.post("/chat/completions", body=BODY, cast_to=httpx2.Response)  # type: ignore[attr-defined]

    limits = httpx2.Limits(max_connections=200, max_keepalive_connections=100)
    url = f"{base}/openai/deployments/{DEPLOYMENT}/chat/completions?api-version={API_VERSION}"

    def aiohttp_call(session: object) -> Callable:
        async def call() -> bytes:
            async with session.post(url, data=raw, headers={"content-type": "application/json"}) as r:  # type: ignore[attr-defined]
                return await r.read()
        return call

    def httpx_call(client: object) -> Callable:
        return lambda: client.post(url, content=raw, headers={"content-type": "application/json"})  # type: ignore[attr-defined]

    path = url[len(base):]
    hdrs = {"content-type": "application/json"}

    def http11_call(pool: object) -> Callable:
        return lambda: pool.request("POST", path, raw, hdrs)  # type: ignore[attr-defined]

    def httpcore_call(pool: object) -> Callable:
        async def call() -> bytes:
            r = await pool.request("POST", url, content=raw, headers=hdrs)  # type: ignore[attr-defined]
            return r.content
        return call

    return {
        "qlens-http11": (lambda: Pool(base, limit=200), http11_call),
        "httpcore": (lambda: httpcore.AsyncConnectionPool(max_connections=200, max_keepalive_connections=100),
                     httpcore_call),
        "openai-sdk/httpx2": (lambda: sdk(httpx2.AsyncClient(limits=limits)), sdk_call),
        "openai-sdk/aiohttp": (lambda: sdk(openai.DefaultAioHttpClient(limits=limits)), sdk_call),
        "aiohttp": (lambda: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)), aiohttp_call),
        "httpx2": (lambda: httpx2.AsyncClient(limits=limits), httpx_call),
    }


async def _run(base: str, requests: int) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name, (make, call_of) in _cases(base).items():
        client = make()
        try:
            call = call_of(client)
            out[name] = {f"c{c}": await _measure(call, requests, c) for c in (1, 32)}
        finally:
            close = getattr(client, "close", None) or client.aclose  # type: ignore[attr-defined]
            await close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.clients", description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000)
    args = p.parse_args(argv)
    plan = procs.plan_cores()
    if plan.qlens is not None:
        os.sched_setaffinity(0, plan.qlens)  # the caller plays a QLens service; the provider is elsewhere
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    with BenchEnv(plan, qlens=False) as env:
        results = runner(_run(f"http://127.0.0.1:{env.provider_port}", args.requests))
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"HTTP client cost per request (caller CPU; {plan.note})")
    for col in ("client", "c=1 CPU µs/req", "c=1 req/s", "c=32 CPU µs/req", "c=32 req/s"):
        t.add_column(col, justify="left" if col == "client" else "right")
    for name, r in results.items():
        t.add_row(name, *(str(r[c][k]) for c in ("c1", "c32") for k in ("cpu_us_per_request", "rps")))
    Console().print(t)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
