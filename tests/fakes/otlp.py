"""A local OTLP/HTTP trace receiver: what an OpenTelemetry collector is to QLens, for tests.

    POST /v1/traces   Content-Type: application/x-protobuf   (ExportTraceServiceRequest)

The body is decoded with `opentelemetry-proto` (the same messages a collector decodes) and every
span kept as a `ReceivedSpan`; tests then wait for the spans of a trace and check names, parent
links and attributes. Runs in a thread of the test process:

    with OTLPReceiver() as otlp:
        env = otlp.client_env()          # OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:PORT, ...
        ...
        spans = otlp.wait_for(lambda spans: len(spans) >= 5)
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from qlensctl.local import free_port


@dataclass(frozen=True)
class ReceivedSpan:
    service: str  # the resource's service.name
    name: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root span
    kind: str  # SPAN_KIND_SERVER, SPAN_KIND_CLIENT, SPAN_KIND_INTERNAL, ...
    attributes: dict[str, Any] = field(default_factory=dict)
    status: str = "STATUS_CODE_UNSET"
    events: tuple[str, ...] = ()

    def text(self) -> str:
        """Everything the span carries as text: to prove a prompt never reached it."""
        return " ".join([self.name, *map(str, self.attributes.values()), *self.attributes, *self.events])


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def decode(body: bytes) -> list[ReceivedSpan]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    out = []
    for rs in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(ReceivedSpan(
                    service=str(resource.get("service.name", "")),
                    name=s.name,
                    trace_id=s.trace_id.hex(),
                    span_id=s.span_id.hex(),
                    parent_span_id=s.parent_span_id.hex(),
                    kind=Span.SpanKind.Name(s.kind),
                    attributes={kv.key: _value(kv.value) for kv in s.attributes},
                    status=Status.StatusCode.Name(s.status.code),
                    events=tuple(e.name for e in s.events),
                ))
    return out


class OTLPReceiver:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self.errors: list[str] = []
        self._lock = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client_env(self) -> dict[str, str]:
        """A service's environment for exporting here, flushed quickly (100 ms batches)."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}

    def wait_for(self, done: Callable[[list[ReceivedSpan]], bool],
                 timeout: float = 15.0) -> list[ReceivedSpan]:
        """The spans received once `done(spans)` holds; AssertionError (with what came) after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not done(list(self.spans)):
                left = deadline - time.monotonic()
                if left <= 0:
                    names = sorted(f"{s.service}:{s.name}" for s in self.spans)
                    raise AssertionError(f"spans not received within {timeout}s; got {names}, "
                                         f"errors {self.errors}")
                self._lock.wait(left)
            return list(self.spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def _received(self, body: bytes, encoding: str) -> None:
        if encoding == "gzip":
            body = gzip.decompress(body)
        spans = decode(body)
        with self._lock:
            self.requests += 1
            self.spans.extend(spans)
            self._lock.notify_all()

    def __enter__(self) -> OTLPReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                try:
                    receiver._received(body, self.headers.get("content-encoding", ""))
                except Exception as exc:  # a malformed export is the exporter's bug: record it
                    receiver.errors.append(f"{type(exc).__name__}: {exc}")
                    self.send_error(400)
                    return
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
