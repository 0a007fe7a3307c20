"""A small keep-alive HTTP/1.1 client: the gateway's two private hops (router, cache), and the
router's calls to Azure OpenAI's REST API (over TLS).

Why not aiohttp: measured on the gateway's miss path (cache GET, router POST, cache PUT per
request) aiohttp's client was ~40% of the gateway's CPU, mostly per-request bookkeeping
(URL objects, header multidicts, timeout handles, tracing hooks) that a private hop to a known
peer does not need. This client writes the request bytes straight to a pooled connection and
parses the answer with httptools (the C parser uvicorn uses). It covers exactly what the hops
use: one request at a time per connection, Content-Length or chunked answers, streaming reads
with back-pressure, timeouts, and a bounded pool.

Errors are three types its callers map to statuses or retry kinds: `PeerUnavailable` (could not connect: 503),
`PeerTimeout` (504) and `PeerBroken` (the connection failed mid-answer: 502).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import httptools

# below uvicorn's keep-alive (30 s, services/common/server.py): a socket is never reused as it dies
IDLE_SECONDS = 10.0
HIGH_WATER = 1 << 20  # a stream's unread bytes above which we stop reading the socket


class PeerError(Exception):
    """Talking to a peer failed."""


class PeerUnavailable(PeerError):
    """No connection could be opened (refused, unreachable, connect timeout)."""


class PeerTimeout(PeerError):
    """The peer did not answer in time."""


class PeerBroken(PeerError):
    """The connection broke or the answer was not valid HTTP."""


class Headers:
    """Response headers: raw pairs, looked up case-insensitively (names lowered once)."""

    __slots__ = ("_map",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._map = {k.lower().decode("latin-1"): v.decode("latin-1") for k, v in raw}

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._map.get(name, default)

    def __getitem__(self, name: str) -> str:
        return self._map[name]

    def __contains__(self, name: object) -> bool:
        return name in self._map


class _Connection(asyncio.Protocol):
    """One socket to the peer; its parser feeds the current exchange."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.used = False
        self._reset(stream=False)

    def _reset(self, stream: bool) -> None:
        self.stream = stream
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = True
        self.error: PeerError | None = None
        self.got_bytes = False
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(PeerBroken(f"invalid HTTP answer: {exc}"))
            self.close()
            return
        if self.stream and self.buffered > HIGH_WATER and not self.paused and self.transport:
            self.paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            self._fail(PeerBroken("the peer closed the connection"))

    # --- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True
        if self.stream:
            self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        if self.stream:
            self.buffered += len(body)
            self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # --- used by the pool -------------------------------------------------------------------

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, error: PeerError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def wait(self, deadline: float | None) -> None:
        """Until the parser has something new (or the connection failed)."""
        if self.error is not None:
            raise self.error
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        handle = None
        if deadline is not None:
            handle = loop.call_at(deadline, self._fail, PeerTimeout("the peer did not answer in time"))
        try:
            await self.waiter
        finally:
            self.waiter = None
            if handle is not None:
                handle.cancel()
        if self.error is not None:
            raise self.error

    def take(self) -> bytes:
        data = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data


class Reply:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class StreamReply:
    """A streamed answer: iterate `chunks()`, then `release()`; `close()` drops the connection."""

    def __init__(self, pool: Pool, conn: _Connection, read_timeout: float | None) -> None:
        self._pool = pool
        self._conn = conn
        self._read_timeout = read_timeout
        self._finished = False
        self.status = conn.status
        self.headers = Headers(conn.raw_headers)

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        loop = asyncio.get_running_loop()
        while True:
            if conn.chunks:
                yield conn.take()
                continue
            if conn.complete:
                return
            deadline = loop.time() + self._read_timeout if self._read_timeout else None
            await conn.wait(deadline)

    async def read(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    async def drain(self, timeout: float = 1.0) -> None:
        """Read and drop what is left of the answer (after an SSE stream's last event, its chunked
        terminator), so `release()` can keep the connection; gives up after `timeout`."""
        conn = self._conn
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while not conn.complete:
                conn.take()
                await conn.wait(deadline)
        except PeerError:
            pass  # release() closes the connection instead
        conn.take()

    def release(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._conn.complete and self._conn.error is None:
            self._pool._release(self._conn)
        else:
            self._pool._discard(self._conn)

    def close(self) -> None:
        if not self._finished:
            self._finished = True
            self._pool._discard(self._conn)


class Pool:
    """Keep-alive connections to one peer (`http://host:port` or `https://host`), at most `limit`
    at a time and at most `keepalive` of them idle."""

    def __init__(self, base_url: str, limit: int = 100, connect_timeout: float = 2.0,
                 keepalive: int | None = None, tls: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"peer URL must be http://host:port or https://host, got {base_url!r}")
        self.host = parts.hostname
        # https verifies the peer against the system's CAs (OpenSSL honours SSL_CERT_FILE)
        self._tls = (tls or ssl.create_default_context()) if parts.scheme == "https" else None
        default_port = 443 if self._tls else 80
        self.port = parts.port or default_port
        self.prefix = parts.path.rstrip("/")
        host = self.host if self.port == default_port else f"{self.host}:{self.port}"
        self._host_header = host.encode("ascii")
        self.connect_timeout = connect_timeout
        self._keepalive = limit if keepalive is None else keepalive
        self._idle: deque[_Connection] = deque()
        self._slots = asyncio.Semaphore(limit)
        self._closed = False

    # --- requests ---------------------------------------------------------------------------

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: Mapping[str, str] | None = None, timeout: float = 30.0) -> Reply:
        """One exchange, the answer read whole."""
        deadline = asyncio.get_running_loop().time() + timeout
        async with self._slots:
            conn = await self._exchange(method, path, body, headers, deadline, stream=False)
            reply = Reply(conn.status, Headers(conn.raw_headers), conn.take())
            self._release(conn)
            return reply

    async def stream(self, method: str, path: str, body: bytes = b"",
                     headers: Mapping[str, str] | None = None, timeout: float = 30.0,
                     read_timeout: float | None = None) -> StreamReply:
        """Send, wait for the answer's headers (within `timeout`), and hand back the open stream."""
        deadline = asyncio.get_running_loop().time() + timeout
        await self._slots.acquire()
        try:
            conn = await self._exchange(method, path, body, headers, deadline, stream=True)
        except BaseException:
            self._slots.release()
            raise
        return StreamReply(self, conn, read_timeout)

    async def _exchange(self, method: str, path: str, body: bytes, headers: Mapping[str, str] | None,
                        deadline: float, stream: bool) -> _Connection:
        """Write the request; wait for the whole answer (or, streaming, its headers).

        A reused connection that turns out dead before any answer byte is retried once on a fresh
        one: the peer closed it while it sat idle, so it never saw the request.
        """
        data = self._encode(method, path, body, headers)
        for attempt in (0, 1):
            conn = await self._connect(deadline, fresh=attempt == 1)
            reused = conn.used
            conn._reset(stream)
            conn.used = True
            try:
                conn.transport.write(data)  # type: ignore[union-attr]
                while not (conn.headers_done if stream else conn.complete):
                    await conn.wait(deadline)
                return conn
            except PeerBroken:
                conn.close()
                if reused and not conn.got_bytes and attempt == 0:
                    continue
                raise
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    def _encode(self, method: str, path: str, body: bytes, headers: Mapping[str, str] | None) -> bytes:
        lines = [f"{method} {self.prefix}{path} HTTP/1.1\r\nHost: ".encode(), self._host_header,
                 b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n"]
        if headers:
            lines.append("".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1"))
        lines.append(b"\r\n")
        lines.append(body)
        return b"".join(lines)

    # --- the pool ---------------------------------------------------------------------------

    async def _connect(self, deadline: float, fresh: bool) -> _Connection:
        if self._closed:
            raise PeerUnavailable("client is closed")
        if not fresh:
            now = time.monotonic()
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed and now - conn.idle_since < IDLE_SECONDS:
                    return conn
                conn.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(min(deadline, loop.time() + self.connect_timeout)):
                _, conn = await loop.create_connection(_Connection, self.host, self.port, ssl=self._tls)
        except TimeoutError:
            raise PeerUnavailable(f"connecting to {self.host}:{self.port} timed out") from None
        except OSError as exc:  # ssl.SSLError (a certificate that does not verify) included
            reason = exc.strerror or getattr(exc, "reason", None) or type(exc).__name__
            raise PeerUnavailable(f"cannot connect to {self.host}:{self.port}: {reason}") from None
        return conn

    def _release(self, conn: _Connection) -> None:
        if conn.stream:  # a request's slot is released by its `async with`
            self._slots.release()
        if self._closed or conn.closed or not conn.keep_alive or len(self._idle) >= self._keepalive:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def _discard(self, conn: _Connection) -> None:
        if conn.stream:
            self._slots.release()
        conn.close()

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
