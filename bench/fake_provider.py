"""A fake OpenAI-compatible provider, much cheaper than anything it is used to measure.

It answers POST `/v1/chat/completions` (the "direct" floor: the load generator talks to it with no
QLens in between) and the Azure OpenAI path `/openai/deployments/{name}/chat/completions?api-version=`
(so the router's real Azure adapter is what runs through QLens).
Every answer is the same small completion with `usage`; `"stream": true` gets the same completion as
SSE chunks (plus the usage chunk when `stream_options.include_usage` is asked for), optionally with a
gap between chunks so a proxy that buffers shows up as a late first byte. `GET /stats` counts the
calls, so the harness can check that a cache hit never reached the provider.

It is a raw asyncio protocol (uvloop when installed), not a web framework: parsing is a header
scan and a Content-Length read, answers are pre-built bytes. Run it in its own process:
`python -m bench.fake_provider --port N [--delay-ms X] [--stream-chunks K] [--stream-gap-ms G]`;
it prints `ready <port>` on stdout once it listens (127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from dataclasses import dataclass, field

COMPLETION_TEXT = "QLens bench: a fixed small answer."
USAGE = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}


@dataclass
class Settings:
    delay_ms: float = 0.0
    stream_chunks: int = 4
    stream_gap_ms: float = 0.0
    track_bodies: bool = False  # count distinct request bodies (tests of the load generators)


@dataclass
class Counters:
    direct: int = 0
    azure: int = 0
    streams: int = 0
    traces: int = 0  # OTLP/HTTP exports received (bench.features: tracing on)
    other: int = 0
    by_deployment: dict[str, int] = field(default_factory=dict)
    bodies: set[int] = field(default_factory=set)

    def as_dict(self) -> dict:
        return {"direct": self.direct, "azure": self.azure, "streams": self.streams,
                "traces": self.traces, "other": self.other, "by_deployment": dict(self.by_deployment),
                "distinct_bodies": len(self.bodies)}


def completion_body(model: str = "gpt-4") -> bytes:
    return json.dumps({
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": COMPLETION_TEXT}}],
        "usage": USAGE,
    }, separators=(",", ":")).encode()


def stream_events(chunks: int, include_usage: bool, model: str = "gpt-4") -> list[bytes]:
    """The SSE events of one streamed completion: role, `chunks` content pieces, stop, [usage], DONE."""
    words = COMPLETION_TEXT.split(" ")
    if chunks > len(words):  # long streams (bench.growth): exactly `chunks` one-word pieces
        pieces = [words[i % len(words)] + " " for i in range(chunks)]
    else:
        size = max(1, -(-len(words) // max(1, chunks)))
        pieces = [" ".join(words[i:i + size]) + (" " if i + size < len(words) else "")
                  for i in range(0, len(words), size)]
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": model}

    def event(choices: list, **extra: object) -> bytes:
        data = json.dumps({**base, "choices": choices, **extra}, separators=(",", ":"))
        return f"data: {data}\n\n".encode()

    out = [event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
    out += [event([{"index": 0, "delta": {"content": p}, "finish_reason": None}]) for p in pieces]
    out.append(event([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    if include_usage:
        out.append(event([], usage=USAGE))
    out.append(b"data: [DONE]\n\n")
    return out


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + content_type
            + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
               b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")


class ProviderProtocol(asyncio.Protocol):
    """One keep-alive connection. Requests are handled in order; no pipelining tricks needed."""

    def __init__(self, settings: Settings, counters: Counters, canned: dict[str, bytes]) -> None:
        self.settings = settings
        self.counters = counters
        self.canned = canned
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.busy = False  # a delayed or streamed answer is still being written

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._drain()

    def _drain(self) -> None:
        while not self.busy and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            try:
                method, target, _ = lines[0].split(" ", 2)
            except ValueError:
                self._finish(_response("400 Bad Request", b'{"error":{"message":"bad request line"}}'), True)
                return
            length = 0
            close = False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip() or 0)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            self._handle(method, target, body, close)

    def _handle(self, method: str, target: str, body: bytes, close: bool) -> None:
        path = target.split("?", 1)[0]
        c = self.counters
        azure = path.startswith("/openai/deployments/") and path.endswith("/chat/completions")
        if method == "POST" and (azure or path == "/v1/chat/completions"):
            if azure:
                c.azure += 1
                name = path[len("/openai/deployments/"):-len("/chat/completions")]
                c.by_deployment[name] = c.by_deployment.get(name, 0) + 1
            else:
                c.direct += 1
            if self.settings.track_bodies:
                c.bodies.add(hash(body))
            # a byte scan, not a JSON parse: the SDK writes `"stream": true`, wrk `"stream":true`
            if b'"stream": true' in body or b'"stream":true' in body:
                c.streams += 1
                usage = b'"include_usage": true' in body or b'"include_usage":true' in body
                self._stream(usage, close, *_stream_shape(body))
                return
            self._finish(self.canned["completion"], close)
        elif method == "POST" and path == "/v1/traces":  # an OTLP collector that keeps nothing
            c.traces += 1
            self._write(self.canned["otlp_ok"], close)
        elif method == "GET" and path == "/stats":
            self._finish(_response("200 OK", json.dumps(c.as_dict()).encode()), close)
        elif method == "GET" and path in ("/health", "/"):
            self._finish(self.canned["health"], close)
        else:
            c.other += 1
            self._finish(self.canned["not_found"], close)

    def _finish(self, data: bytes, close: bool) -> None:
        delay = self.settings.delay_ms / 1000
        if delay > 0:
            self.busy = True
            self.loop.call_later(delay, self._write_later, data, close)
        else:
            self._write(data, close)

    def _write_later(self, data: bytes, close: bool) -> None:
        self.busy = False
        self._write(data, close)
        self._drain()

    def _write(self, data: bytes, close: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(data)
        if close:
            self.transport.close()
            self.transport = None

    def _stream(self, include_usage: bool, close: bool, chunks: int | None = None,
                gap_ms: float | None = None) -> None:
        if chunks is None:
            events = self.canned["stream_usage"] if include_usage else self.canned["stream"]
        else:  # a per-request length (bench.growth), built once per length
            key = f"stream-{chunks}-{include_usage}"
            if key not in self.canned:
                self.canned[key] = stream_events(chunks, include_usage)
            events = self.canned[key]
        parts = [STREAM_HEAD + _chunk(events[0])] + [_chunk(e) for e in events[1:]] + [b"0\r\n\r\n"]
        gap = (self.settings.stream_gap_ms if gap_ms is None else gap_ms) / 1000
        if gap <= 0 and self.settings.delay_ms <= 0:
            self._write(b"".join(parts), close)
            return
        self.busy = True
        self.loop.call_later(self.settings.delay_ms / 1000, self._stream_step, parts, 0, gap, close)

    def _stream_step(self, parts: list[bytes], i: int, gap: float, close: bool) -> None:
        if self.transport is None:
            self.busy = False
            return
        # the role chunk and the first content chunk go together: that is the "first token"
        if i == 0:
            self.transport.write(parts[0] + parts[1])
            i = 2
        else:
            self.transport.write(parts[i])
            i += 1
        if i < len(parts):
            self.loop.call_later(gap, self._stream_step, parts, i, gap, close)
            return
        self.busy = False
        if close:
            self.transport.close()
            self.transport = None
            return
        self._drain()


SHAPE_RE = re.compile(rb"bench-(chunks|gap-ms)=(\d+)")


def _stream_shape(body: bytes) -> tuple[int | None, float | None]:
    """Markers in the prompt (`bench-chunks=N`, `bench-gap-ms=G`) override the stream's length and
    pace for that request: the router forwards the messages untouched, so the growth scenarios
    vary them per request through QLens without restarting anything."""
    if b"bench-" not in body:
        return None, None
    found = {k: int(v) for k, v in SHAPE_RE.findall(body)}
    chunks = found.get(b"chunks")
    gap = found.get(b"gap-ms")
    return (max(1, min(chunks, 100_000)) if chunks is not None else None,
            float(gap) if gap is not None else None)


def canned_answers(settings: Settings) -> dict:
    return {
        "completion": _response("200 OK", completion_body()),
        "health": _response("200 OK", b'{"status":"ok"}'),
        "otlp_ok": _response("200 OK", b"", b"application/x-protobuf"),  # an empty ExportTraceServiceResponse
        "not_found": _response("404 Not Found", b'{"error":{"message":"not found",'
                               b'"type":"invalid_request_error","param":null,"code":"not_found"}}'),
        "stream": stream_events(settings.stream_chunks, include_usage=False),
        "stream_usage": stream_events(settings.stream_chunks, include_usage=True),
    }


async def serve(port: int, settings: Settings, host: str = "127.0.0.1",
                ready: asyncio.Future | None = None) -> None:
    """Listen until cancelled. `port=0` picks a free port; `ready` receives the bound port."""
    loop = asyncio.get_running_loop()
    counters = Counters()
    canned = canned_answers(settings)
    server = await loop.create_server(lambda: ProviderProtocol(settings, counters, canned), host, port,
                                      backlog=1024, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    if ready is not None:
        ready.set_result(bound)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fake_provider",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0,
                        help="wait before answering (and before a stream)")
    parser.add_argument("--stream-chunks", type=int, default=4, help="content chunks in a streamed answer")
    parser.add_argument("--stream-gap-ms", type=float, default=0.0, help="pause between streamed chunks")
    parser.add_argument("--track-bodies", action="store_true", help="count distinct request bodies in /stats")
    args = parser.parse_args(argv)
    settings = Settings(args.delay_ms, args.stream_chunks, args.stream_gap_ms, args.track_bodies)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # the stdlib loop is slower but still far cheaper than what is measured
        runner = asyncio.run

    async def run() -> None:
        ready: asyncio.Future = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(serve(args.port, settings, ready=ready))
        port = await ready
        sys.stdout.write(f"ready {port}\n")
        sys.stdout.flush()
        await task

    try:
        runner(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
