"""The pooled HTTP/1.1 client (gateway hops, router to Azure) against a real socket server on
127.0.0.1 (scripted answers)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from qlensctl.local import free_port
from services.common.http11 import PeerBroken, PeerTimeout, PeerUnavailable, Pool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes, bytes], Awaitable[bool]]


class Server:
    """Reads requests (Content-Length bodies) and lets the test decide each answer."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                if not await self.handler(reader, writer, head, body):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def answer(body: bytes, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n".encode() + extra + b"\r\n" + body)


async def echo(reader, writer, head, body) -> bool:
    method = head.split(b" ")[0]
    writer.write(answer(method + b" " + body, extra=b"X-Thing: yes\r\n"))
    return True


async def test_requests_reuse_one_keep_alive_connection():
    async with Server(echo) as srv:
        pool = Pool(srv.url)
        first = await pool.request("POST", "/a", b"hello", {"x-request-id": "r1"})
        second = await pool.request("GET", "/b")
        await pool.close()
    assert (first.status, first.body) == (200, b"POST hello")
    assert first.headers["x-thing"] == "yes" and first.headers.get("X-THING".lower()) == "yes"
    assert second.body == b"GET "
    assert srv.connections == 1
    assert b"x-request-id: r1\r\n" in srv.requests[0] and srv.requests[0].startswith(b"POST /a HTTP/1.1\r\n")


async def test_a_stream_arrives_chunk_by_chunk_as_the_server_sends():
    release = asyncio.Event()

    async def chunked(reader, writer, head, body) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: text/event-stream\r\n\r\n")
        writer.write(b"7\r\ndata: 1\r\n")
        await writer.drain()
        await release.wait()  # the second chunk only after the client saw the first
        writer.write(b"7\r\ndata: 2\r\n0\r\n\r\n")
        return True

    async with Server(chunked) as srv:
        pool = Pool(srv.url)
        reply = await pool.stream("POST", "/s", b"{}", read_timeout=5)
        assert reply.status == 200 and reply.headers["content-type"] == "text/event-stream"
        seen = []
        async for chunk in reply.chunks():
            seen.append(chunk)
            release.set()
        reply.release()
        again = await pool.stream("POST", "/s", b"{}", read_timeout=5)  # the connection went back to the pool
        assert await again.read() == b"data: 1data: 2"
        again.release()
        await pool.close()
    assert seen == [b"data: 1", b"data: 2"]
    assert srv.connections == 1


async def test_refused_connection_is_peer_unavailable():
    pool = Pool(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(PeerUnavailable):
        await pool.request("GET", "/")


async def test_a_silent_peer_is_a_timeout():
    async def silent(reader, writer, head, body) -> bool:
        await asyncio.sleep(5)
        return False

    async with Server(silent) as srv:
        pool = Pool(srv.url)
        with pytest.raises(PeerTimeout):
            await pool.request("GET", "/", timeout=0.2)
        await pool.close()


async def test_a_connection_the_peer_closed_while_idle_is_replaced_transparently():
    async def once(reader, writer, head, body) -> bool:
        writer.write(answer(b"ok"))
        await writer.drain()
        return False  # close after each answer, without saying so

    async with Server(once) as srv:
        pool = Pool(srv.url)
        assert (await pool.request("GET", "/1")).body == b"ok"
        await asyncio.sleep(0.05)  # the server's close reaches the idle connection
        assert (await pool.request("GET", "/2")).body == b"ok"
        await pool.close()
    assert srv.connections == 2


async def test_a_connection_dropped_mid_answer_is_peer_broken():
    async def half(reader, writer, head, body) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        return False

    async with Server(half) as srv:
        pool = Pool(srv.url)
        with pytest.raises(PeerBroken):
            await pool.request("GET", "/")
        await pool.close()


async def test_garbage_is_peer_broken():
    async def garbage(reader, writer, head, body) -> bool:
        writer.write(b"SPEAKING NONSENSE\r\n\r\n")
        return True

    async with Server(garbage) as srv:
        pool = Pool(srv.url)
        with pytest.raises(PeerBroken):
            await pool.request("GET", "/", timeout=2)
        await pool.close()


async def test_connection_close_answers_are_not_reused():
    async def closing(reader, writer, head, body) -> bool:
        writer.write(answer(b"bye", extra=b"Connection: close\r\n"))
        return False

    async with Server(closing) as srv:
        pool = Pool(srv.url)
        for _ in range(3):
            assert (await pool.request("GET", "/")).body == b"bye"
        await pool.close()
    assert srv.connections == 3


async def test_the_pool_limit_queues_requests_instead_of_failing():
    async def slow(reader, writer, head, body) -> bool:
        await asyncio.sleep(0.02)
        writer.write(answer(body))
        return True

    async with Server(slow) as srv:
        pool = Pool(srv.url, limit=2)
        replies = await asyncio.gather(*(pool.request("POST", "/", str(i).encode()) for i in range(6)))
        await pool.close()
    assert sorted(r.body for r in replies) == [str(i).encode() for i in range(6)]
    assert srv.connections <= 2


def test_http_and_https_peers_only():
    for bad in ("ftp://example.com", "example.com:80", "https://"):
        with pytest.raises(ValueError):
            Pool(bad)
    tls = Pool("https://example.openai.azure.com")
    assert (tls.port, tls._host_header) == (443, b"example.openai.azure.com")  # no :443 in Host
    assert Pool("http://127.0.0.1:8080/base")._host_header == b"127.0.0.1:8080"


async def test_idle_connections_beyond_keepalive_are_closed():
    async def slow(reader, writer, head, body) -> bool:
        await asyncio.sleep(0.02)
        writer.write(answer(body))
        return True

    async with Server(slow) as srv:
        pool = Pool(srv.url, limit=4, keepalive=1)
        await asyncio.gather(*(pool.request("POST", "/", b"x") for _ in range(4)))
        assert srv.connections == 4 and len(pool._idle) == 1
        await pool.request("POST", "/", b"y")
        await pool.close()
    assert srv.connections == 4, "the one kept idle served the next request"


async def test_drain_reads_the_terminator_that_comes_late_so_the_connection_is_kept():
    """After an SSE stream's last event the chunked terminator may come in a later packet: drain()
    waits for it, and the connection goes back to the pool; a peer that never sends it costs
    only the drain's timeout and a closed connection."""
    terminate = asyncio.Event()

    async def late_end(reader, writer, head, body) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\ndata: 1\r\n")
        await writer.drain()
        if body == b"ends":
            await asyncio.sleep(0.05)
            writer.write(b"0\r\n\r\n")
            return True
        await terminate.wait()
        return False

    async with Server(late_end) as srv:
        pool = Pool(srv.url)
        reply = await pool.stream("POST", "/s", b"ends", read_timeout=5)
        assert await anext(reply.chunks()) == b"data: 1"
        await reply.drain(timeout=5)
        reply.release()
        assert len(pool._idle) == 1
        hung = await pool.stream("POST", "/s", b"hangs", read_timeout=5)
        assert await anext(hung.chunks()) == b"data: 1"
        await hung.drain(timeout=0.1)
        hung.release()
        assert len(pool._idle) == 0, "an answer never finished is not reused"
        terminate.set()
        await pool.close()
