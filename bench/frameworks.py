"""`python -m bench.frameworks`: what one request costs a service before it does any work.

Each QLens miss crosses four inbound HTTP handlers (gateway, router, cache GET, cache PUT), so
the per-request cost of the server stack is paid four times. This serves the same fixed JSON
answer to a POST with uvicorn (uvloop + httptools, as the services run) behind three app styles:

- `fastapi`: `app.add_api_route(path, handler)` with a `Request` parameter (what the services use)
- `fastapi-route`: the same FastAPI app with the handler added as a plain Starlette route
  (`app.router.add_route`): no dependency solving, FastAPI's middleware stack still in front
- `starlette`: a bare `Starlette(routes=[Route(...)])`
- `asgi`: a plain ASGI callable (no framework)

and drives each with wrk at 32 connections, the server pinned to the first core and wrk to the
second, reporting the server's CPU microseconds per request and req/s. Bounded: `--duration` s each.
"""

# no `from __future__ import annotations` here: FastAPI must see the real `Request` class in the
# handler's signature (a string annotation naming a function-local import reads as a query param)
import argparse
import os
import subprocess
import sys
import time

from bench import procs, wrk

ANSWER = b'{"ok":true}'


def fastapi_app():  # pragma: no cover - runs in the server process
    from fastapi import FastAPI, Request
    from starlette.responses import Response

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    async def handler(request: Request) -> Response:
        await request.body()
        return Response(ANSWER, media_type="application/json")

    app.add_api_route("/v1/chat/completions", handler, methods=["POST"])
    return app


def fastapi_route_app():  # pragma: no cover
    from fastapi import FastAPI
    from starlette.requests import Request
    from starlette.responses import Response

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    async def handler(request: Request) -> Response:
        await request.body()
        return Response(ANSWER, media_type="application/json")

    # a plain Starlette route on the FastAPI app: no dependency solving, same middleware stack
    app.router.add_route("/v1/chat/completions", handler, methods=["POST"])
    return app


def starlette_app():  # pragma: no cover
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def handler(request: Request) -> Response:
        await request.body()
        return Response(ANSWER, media_type="application/json")

    return Starlette(routes=[Route("/v1/chat/completions", handler, methods=["POST"])])


def asgi_app():  # pragma: no cover
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": ANSWER})

    return app


APPS = {"fastapi": "bench.frameworks:fastapi_app", "fastapi-route": "bench.frameworks:fastapi_route_app",
        "starlette": "bench.frameworks:starlette_app",
        "asgi": "bench.frameworks:asgi_app"}


def serve(factory: str, port: int, cores: frozenset[int] | None) -> subprocess.Popen:
    def pin() -> None:
        if cores is not None:
            os.sched_setaffinity(0, cores)

    code = (f"import uvicorn; uvicorn.run({factory!r}, factory=True, host='127.0.0.1', port={port}, "
            "loop='uvloop', http='httptools', access_log=False, log_level='warning')")
    return subprocess.Popen([sys.executable, "-c", code], preexec_fn=pin, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    from qlensctl.local import free_port, stop_pid

    p = argparse.ArgumentParser(prog="python -m bench.frameworks", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=4.0)
    args = p.parse_args(argv)
    plan = procs.plan_cores()
    if plan.loadgen is not None:
        os.sched_setaffinity(0, plan.loadgen)
    rows = []
    for name, factory in APPS.items():
        port = free_port()
        proc = serve(factory, port, plan.qlens)
        try:
            _wait_port(port)
            wrk.run(f"http://127.0.0.1:{port}", "/v1/chat/completions", api_key=None, unique=False,
                    duration_s=1)  # warm-up
            before = procs.cpu_seconds(proc.pid)
            res = wrk.run(f"http://127.0.0.1:{port}", "/v1/chat/completions", api_key=None, unique=False,
                          duration_s=args.duration)
            cpu = procs.cpu_seconds(proc.pid) - before
            rows.append((name, round(1e6 * cpu / max(res.requests, 1)), round(res.rps), res.error_count))
        finally:
            stop_pid(proc.pid, timeout=5)
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Server cost per request, uvicorn + uvloop + httptools ({plan.note})")
    for col in ("app", "server CPU µs/req", "req/s at 32 connections", "errors"):
        t.add_column(col, justify="left" if col == "app" else "right")
    for row in rows:
        t.add_row(*map(str, row))
    Console().print(t)
    return 0


def _wait_port(port: int, timeout: float = 15.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


if __name__ == "__main__":
    raise SystemExit(main())
