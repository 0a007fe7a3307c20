"""Server-sent events split on bytes: the gateway and the router relay streams event by event.

Splitting the raw bytes on the blank line that ends an event is several times cheaper than an HTTP
client's line iterator (decode to str, split lines, re-encode), and what is forwarded stays the
bytes that arrived.
"""

from __future__ import annotations


class SSESplitter:
    """Bytes in, complete events out (each without its blank-line terminator)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data if self._buf else data
        if b"\r\n" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        parts = buf.split(b"\n\n")
        self._buf = parts.pop()
        return [p for p in parts if p]

    @property
    def rest(self) -> bytes:
        """What arrived after the last complete event (a last event without its blank line)."""
        return self._buf
