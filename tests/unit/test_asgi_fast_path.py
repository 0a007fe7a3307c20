"""services/common/asgi.py driven with raw ASGI scope/receive/send: dispatch, fallthrough to
FastAPI (its 405), ClientGone on a disconnect, the body limit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from services.common.asgi import BodyTooLarge, ClientGone, FastPathApp, read_body


def scope(method: str, path: str) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
            "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
            "query_string": b"", "headers": [], "server": ("t", 80), "client": ("c", 1)}


def receiver(*messages: dict[str, Any]) -> Any:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        return queue.pop(0)
    return receive


def run(app: Any, method: str, path: str) -> tuple[list[dict[str, Any]], list[Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope(method, path), receiver({"type": "http.request", "body": b""}), send))
    return sent, calls


calls: list[Any] = []


async def fast(scope: dict[str, Any], receive: Any, send: Any, *params: str) -> None:
    calls.append((scope["method"], scope["path"], params))
    await send({"type": "http.response.start", "status": 299, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def app() -> FastPathApp:
    calls.clear()
    a = FastPathApp({("POST", "/v1/chat"): fast, ("GET", "/v1/c/{tenant}/{key}"): fast,
                     ("PUT", "/v1/c/{tenant}/{key}"): fast})

    async def other(request: Request) -> PlainTextResponse:
        return PlainTextResponse("framework")

    a.add_route("/v1/chat", other, methods=["GET"])
    a.add_route("/v1/c/stats", other, methods=["GET"])
    return a


def test_exact_and_template_routes_go_straight_to_their_handlers() -> None:
    a = app()
    assert run(a, "POST", "/v1/chat")[0][0]["status"] == 299
    assert run(a, "PUT", "/v1/c/t/k")[0][0]["status"] == 299
    assert calls == [("POST", "/v1/chat", ()), ("PUT", "/v1/c/t/k", ("t", "k"))]


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/chat", 200),  # another method on the fast path: FastAPI's route
    ("DELETE", "/v1/chat", 405),  # and FastAPI's 405
    ("GET", "/v1/c/stats", 200),  # one segment: not the template
    ("GET", "/v1/c/t/k/x", 404), ("GET", "/v1/c//k", 404), ("DELETE", "/v1/c/t/k", 404),
])
def test_everything_else_falls_through_to_fastapi(method: str, path: str, status: int) -> None:
    a = app()
    assert run(a, method, path)[0][0]["status"] == status
    assert calls == []


def test_exact_routes_share_one_method_and_parameters_are_whole_segments() -> None:
    with pytest.raises(ValueError):
        FastPathApp({("POST", "/a"): fast, ("GET", "/b"): fast})
    with pytest.raises(ValueError):
        FastPathApp({("GET", "/a/x{key}"): fast})


def test_read_body_joins_chunks_and_raises_client_gone_on_disconnect() -> None:
    chunks = receiver({"type": "http.request", "body": b"ab", "more_body": True},
                      {"type": "http.request", "body": b"", "more_body": True},
                      {"type": "http.request", "body": b"cd"})
    assert asyncio.run(read_body(chunks)) == b"abcd"
    assert asyncio.run(read_body(receiver({"type": "http.request"}))) == b""
    gone = receiver({"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.disconnect"})
    with pytest.raises(ClientGone):
        asyncio.run(read_body(gone))
    with pytest.raises(ClientGone):
        asyncio.run(read_body(receiver({"type": "http.disconnect"})))


def test_read_body_limit_by_content_length_and_while_reading() -> None:
    never = receiver()  # refused by Content-Length before anything is read
    with pytest.raises(BodyTooLarge):
        asyncio.run(read_body(never, 3, "4"))
    assert asyncio.run(read_body(receiver({"type": "http.request", "body": b"abc"}), 3, "3")) == b"abc"
    chunked = receiver({"type": "http.request", "body": b"ab", "more_body": True},
                       {"type": "http.request", "body": b"cd"})
    with pytest.raises(BodyTooLarge):
        asyncio.run(read_body(chunked, 3))
    with pytest.raises(BodyTooLarge):
        asyncio.run(read_body(receiver({"type": "http.request", "body": b"abcd"}), 3, "x"))
