"""The concurrency-1 load generator: one keep-alive HTTP/1.1 connection, a blocking socket.

A raw socket rather than httpx or http.client, so the client adds tens of microseconds, not
hundreds, to what it measures. It understands exactly what the fake provider and uvicorn send:
Content-Length bodies and chunked bodies. For a chunked (streamed) answer it also records when the
first chunk arrived: the time to first byte a streaming client sees.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed_ns: int  # request written -> last byte read
    first_chunk_ns: int  # request written -> first body chunk read (== elapsed_ns for plain bodies)


@dataclass
class Connection:
    host: str
    port: int
    timeout: float = 30.0
    sock: socket.socket | None = field(default=None, repr=False)
    buf: bytearray = field(default_factory=bytearray, repr=False)

    def connect(self) -> None:
        self.close()
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def request_bytes(self, method: str, path: str, body: bytes = b"",
                      headers: dict[str, str] | None = None) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def send(self, raw: bytes) -> Response:
        """Write a pre-built request and read the whole answer; reconnects once if the peer closed."""
        if self.sock is None:
            self.connect()
        try:
            return self._exchange(raw)
        except (ConnectionError, _PeerClosed):
            self.connect()
            return self._exchange(raw)

    def request(self, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> Response:
        return self.send(self.request_bytes(method, path, body, headers))

    # --- reading -------------------------------------------------------------------------------

    def _exchange(self, raw: bytes) -> Response:
        assert self.sock is not None
        t0 = time.perf_counter_ns()
        self.sock.sendall(raw)
        end = self._fill_until(b"\r\n\r\n")
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[:end + 4]
        status = int(head[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body, first = self._read_chunked(t0)
        else:
            length = int(headers.get("content-length", "0"))
            self._fill(length)
            body = bytes(self.buf[:length])
            del self.buf[:length]
            first = 0
        elapsed = time.perf_counter_ns() - t0
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Response(status, headers, body, elapsed, first or elapsed)

    def _read_chunked(self, t0: int) -> tuple[bytes, int]:
        parts = []
        first = 0
        while True:
            end = self._fill_until(b"\r\n")
            size = int(bytes(self.buf[:end]).split(b";", 1)[0], 16)
            del self.buf[:end + 2]
            self._fill(size + 2)
            if size == 0:
                del self.buf[:2]  # no trailers from our peers
                return b"".join(parts), first
            parts.append(bytes(self.buf[:size]))
            del self.buf[:size + 2]
            if not first:
                first = time.perf_counter_ns() - t0

    def _recv(self) -> None:
        assert self.sock is not None
        data = self.sock.recv(65536)
        if not data:
            raise _PeerClosed()
        self.buf += data

    def _fill_until(self, marker: bytes) -> int:
        start = 0
        while (end := self.buf.find(marker, start)) < 0:
            start = max(0, len(self.buf) - len(marker) + 1)
            self._recv()
        return end

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            self._recv()


class _PeerClosed(ConnectionError):
    pass
