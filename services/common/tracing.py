"""OpenTelemetry traces for the gateway, router and cache: off unless configured.

One trace per request across the three hops: the gateway's request span (children: auth, budget
reserve/settle, cache get/put, the router call), the router's span (a child per attempt) and the
provider call (GenAI semantic conventions). W3C `traceparent`/`tracestate` carry the context on
every HTTP call between the services; a client's own `traceparent` is continued.

On when `observability.tracing.enabled` is true or `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` is set,
off when `OTEL_SDK_DISABLED=true`. The SDK reads the other standard variables itself (sampler,
service name, resource attributes, batch sizes). Spans are exported over OTLP/HTTP by the
BatchSpanProcessor's own thread: the event loop only appends to its queue.

Off costs nothing measurable: every entry point checks the module flag `ENABLED` first and
returns a shared no-op, so no span, context or attribute dict is made; the SDK is not even
imported. Never put prompts, completions, keys or any request body text on a span.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

import orjson

from services.common.config import Tracing

ENABLED = False
_NOOP = contextlib.nullcontext(None)  # reusable: entering it returns None and allocates nothing
_tracer: Any = None
_provider: Any = None
_KIND: dict[str, Any] = {}

ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def wanted(config: Tracing) -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return config.enabled or any(os.environ.get(v) for v in ENDPOINT_VARS)


def setup(service: str, config: Tracing) -> bool:
    """Start exporting this process's spans when tracing is wanted; returns whether it is on."""
    global ENABLED, _tracer, _provider
    if not wanted(config):
        ENABLED = False
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from opentelemetry.trace import SpanKind

    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": f"qlens-{service}"}))
    # OTEL_TRACES_SAMPLER, when set, wins (the SDK reads it when no sampler is given)
    sampler = None
    if not os.environ.get("OTEL_TRACES_SAMPLER"):
        sampler = ParentBased(TraceIdRatioBased(config.sample_ratio))
    endpoint = config.endpoint.rstrip("/") + "/v1/traces" if config.endpoint else None
    if _provider is not None:
        _provider.shutdown()
    _provider = TracerProvider(resource=resource, sampler=sampler)
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    _tracer = _provider.get_tracer("qlens")
    _KIND.update(server=SpanKind.SERVER, client=SpanKind.CLIENT, internal=SpanKind.INTERNAL)
    ENABLED = True
    return True


def shutdown() -> None:
    """Export what is queued and stop the exporter thread (at service shutdown)."""
    global ENABLED, _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    ENABLED, _provider, _tracer = False, None, None


# --- spans ---------------------------------------------------------------------------------------


def span(name: str, attributes: Mapping[str, Any] | None = None, kind: str = "internal") -> Any:
    """A child of the current span, current while the `with` block runs (yields it, or None when off)."""
    if not ENABLED:
        return _NOOP
    return _tracer.start_as_current_span(name, attributes=attributes, kind=_KIND[kind],
                                         record_exception=False)


def server_span(name: str, headers: Mapping[str, str], attributes: Mapping[str, Any] | None = None) -> Any:
    """The span of a request served, continuing the caller's `traceparent` when it sent one."""
    if not ENABLED:
        return _NOOP
    from opentelemetry import propagate

    return _tracer.start_as_current_span(name, context=propagate.extract(headers), attributes=attributes,
                                         kind=_KIND["server"], record_exception=False)


def start(name: str, attributes: Mapping[str, Any] | None = None, kind: str = "internal") -> Any:
    """A span that outlives a `with` block (ended by `finish`); None when off."""
    if not ENABLED:
        return None
    return _tracer.start_span(name, attributes=attributes, kind=_KIND[kind])


def current(span_: Any) -> Any:
    """Make `span_` the parent of spans started in the `with` block (without ending it)."""
    if span_ is None:
        return _NOOP
    from opentelemetry.trace import use_span

    return use_span(span_, end_on_exit=False, record_exception=False, set_status_on_exception=False)


def finish(span_: Any, error: str | None = None, **attributes: Any) -> None:
    """End a span from `start`; `error` (a short failure kind, never a message) marks it failed."""
    if span_ is None:
        return
    if attributes:
        span_.set_attributes(attributes)
    if error:
        fail(span_, error)
    span_.end()


def fail(span_: Any, error: str) -> None:
    if span_ is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span_.set_attribute("error.type", error)
    span_.set_status(Status(StatusCode.ERROR))


def set_attributes(attributes: Mapping[str, Any]) -> None:
    """On the current span (no-op when off)."""
    if ENABLED:
        from opentelemetry import trace

        trace.get_current_span().set_attributes(attributes)


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's `traceparent` (and `tracestate`) to an outgoing request's headers."""
    if ENABLED:
        from opentelemetry import propagate

        propagate.inject(headers)


def trace_id() -> str | None:
    """The current trace's id (32 hex digits) for the log line; None when off or outside a span."""
    if not ENABLED:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


# --- the provider call: OpenTelemetry GenAI semantic conventions ------------------------------------


def genai_attributes(system: str, request_model: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The request half of a provider call's attributes. Only names and numbers: never messages."""
    attrs: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.system": system,
                             "gen_ai.provider.name": system, "gen_ai.request.model": request_model}
    for key, attr in (("max_tokens", "gen_ai.request.max_tokens"),
                      ("temperature", "gen_ai.request.temperature"), ("top_p", "gen_ai.request.top_p")):
        value = body.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attrs[attr] = value
    return attrs


def genai_response(span_: Any, body: bytes | None, input_tokens: int, output_tokens: int) -> None:
    """The answer half: token usage and, from a `chat.completion` body, its model and finish reasons."""
    if span_ is None:
        return
    span_.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    span_.set_attribute("gen_ai.usage.output_tokens", output_tokens)
    if body is None:
        return
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    if not isinstance(parsed, dict):
        return
    if isinstance(parsed.get("model"), str):
        span_.set_attribute("gen_ai.response.model", parsed["model"])
    if isinstance(parsed.get("id"), str):
        span_.set_attribute("gen_ai.response.id", parsed["id"])
    reasons = [c.get("finish_reason") for c in parsed.get("choices") or [] if isinstance(c, dict)]
    reasons = [r for r in reasons if isinstance(r, str)]
    if reasons:
        span_.set_attribute("gen_ai.response.finish_reasons", reasons)


_MODEL = re.compile(rb'"model":\s*"((?:[^"\\]|\\.)*)"')  # quotes inside a JSON string are escaped
_FINISH = re.compile(rb'"finish_reason":\s*"([^"\\]+)"')


class GenAIStream:
    """The answer half of a streamed provider call, read off the `chat.completion.chunk` events as
    they are relayed: the response model (from the first chunk that names one) and the finish
    reasons. Only bytes are searched (no chunk is parsed), and only while tracing is on."""

    __slots__ = ("model", "reasons")

    def __init__(self) -> None:
        self.model: str | None = None
        self.reasons: list[str] = []

    def observe(self, event: bytes) -> None:
        if self.model is None and (found := _MODEL.search(event)):
            self.model = orjson.loads(b'"' + found.group(1) + b'"')
        if b'"finish_reason":' in event:
            self.reasons += [r.decode() for r in _FINISH.findall(event)]

    def finish(self, span_: Any, input_tokens: int | None, output_tokens: int | None) -> None:
        """Set what the stream told (tokens only when it reported usage)."""
        if span_ is None:
            return
        if self.model:
            span_.set_attribute("gen_ai.response.model", self.model)
        if self.reasons:
            span_.set_attribute("gen_ai.response.finish_reasons", self.reasons)
        if input_tokens is not None and output_tokens is not None:
            span_.set_attribute("gen_ai.usage.input_tokens", input_tokens)
            span_.set_attribute("gen_ai.usage.output_tokens", output_tokens)
