"""uvicorn's httptools protocol with the limits it lacks: how long and how large a request may be.

uvicorn bounds neither the time a client takes to send a request nor the size of its headers: a
client sending one byte a second (slow-loris), or a 16 MiB header, holds a connection and its
memory for as long as it likes. The three services run this subclass instead (server.py), which:

- gives a request `READ_TIMEOUT_SECONDS` (env `QLENS_READ_TIMEOUT_SECONDS`, default 10) for its
  head, and as long again for its body; past either the client gets 408 (OpenAI error body) and
  the connection is closed. An ASGI app waiting for the rest of that body sees a disconnect;
- refuses a request head larger than `MAX_HEAD_BYTES` with 431;
- closes a new connection that sends nothing within uvicorn's keep-alive timeout, as uvicorn
  already does for an idle connection between requests;
- while draining (after SIGTERM, services/common/server.py) answers every request with
  `connection: close`: keep-alive clients reconnect, and reach a pod that is not going away.

Cost on the hot path: a request whose bytes arrive together (what the gateway's own peer client
and most HTTP clients send) arms no timer at all; only one still incomplete after a read gets one
(a single `call_later`), cancelled when the rest arrives. The checks read the state uvicorn already
keeps (its current request cycle and scope), so nothing is added per header or per body chunk.
"""

from __future__ import annotations

import asyncio
import logging
import os

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from services.common.errors import error_body
from services.common.health import drain
from services.common.logging import log_event

READ_TIMEOUT_SECONDS = float(os.environ.get("QLENS_READ_TIMEOUT_SECONDS") or 10.0)
MAX_HEAD_BYTES = 64 * 1024  # request line and headers; browsers and SDKs send a few KiB at most
# after refusing a request, its remaining bytes are read and dropped for at most this long before
# the socket closes: closing with unread data would reset the connection and the client could
# lose the answer before reading it
LINGER_SECONDS = 2.0

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}

log = logging.getLogger("qlens.server")


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    _read_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0
    _refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn arms its keep-alive timeout only after a response: arm it for the first request
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if drain.active:  # SIGTERM received: answer, then close, so the client reconnects elsewhere
            self.cycle.keep_alive = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: drop what the client still sends
        before = self.cycle
        super().data_received(data)
        cycle = self.cycle
        if (cycle is not before and cycle.scope is self.scope and not cycle.more_body
                and self._read_timer is None):
            return  # the common case: a whole request in one read, nothing pending, nothing to do
        if self.transport.is_closing():
            return
        if cycle is not before:  # a request's head completed: its deadline is met
            self._cancel_read_timer()
        pending = self._pending()
        if pending == "head":
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                if self.cycle is not None and not self.cycle.response_complete:
                    self.transport.close()  # a pipelined head: an earlier answer is still to come
                else:
                    message = f"Request headers larger than {MAX_HEAD_BYTES} bytes."
                    self._refuse(431, message, "request_headers_too_large")
                return
        else:
            self._head_bytes = 0
        if pending is None:
            self._cancel_read_timer()
        elif self._read_timer is None:
            self._read_timer = self.loop.call_later(READ_TIMEOUT_SECONDS, self._read_timed_out)

    def _pending(self) -> str | None:
        """What is still to come: a request's "head" or "body", the "rest" of a request already
        answered, or None (a complete request is being served). uvicorn creates its cycle when a
        head completes, so a scope without a cycle is a head still arriving."""
        cycle = self.cycle
        if cycle is None or cycle.scope is not self.scope:
            return "head"
        if cycle.response_complete:
            return "rest"
        return "body" if cycle.more_body else None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        pending = self._pending()
        cycle = self.cycle
        if self.transport.is_closing() or pending is None:
            return
        if pending == "head" and (cycle is None or cycle.response_complete):
            self._refuse(408, f"The request headers were not received within {READ_TIMEOUT_SECONDS:g} s.")
        elif pending == "body" and cycle is not None and not cycle.response_started:
            # the app is waiting for the body: it sees a disconnect, and answers nothing more
            cycle.disconnected = True
            cycle.message_event.set()
            self._refuse(408, f"The request body was not received within {READ_TIMEOUT_SECONDS:g} s.")
        else:  # the rest of an answered request, or mid-response: nothing to answer, just close
            self.transport.close()

    def _refuse(self, status: int, message: str, code: str = "request_timeout") -> None:
        """Answer `status` in OpenAI's format, then stop reading requests and close."""
        log_event(log, "request refused", logging.WARNING, status=status, reason=code)
        body = error_body(status, message, code=code)
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                     % len(body))
        self._refused = True
        self._cancel_read_timer()
        self._unset_keepalive_if_required()
        self.transport.write(b"".join(head) + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
