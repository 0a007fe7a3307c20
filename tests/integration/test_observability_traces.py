"""Traces across the real stack: gateway -> router -> the real openai SDK -> a local Azure OpenAI.

The services export over OTLP/HTTP (the real SDK exporter) to tests/fakes/otlp.py, which decodes
the protobuf with opentelemetry-proto. One chat request must arrive as one trace (the client's
traceparent continued) with the gateway's request span and its children, the router's span with
one child per attempt, and the provider call span with the GenAI attributes, and no prompt or
completion text anywhere. A request retried after a provider 500 shows two attempt spans.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator

import pytest

from tests.fakes.azure_openai import FakeAzureOpenAI
from tests.fakes.otlp import OTLPReceiver, ReceivedSpan
from tests.support.stack import RunningStack, running_stack

AZURE_ENV = {
    "providers": {"azureOpenAI": {"enabled": True, "deployments": {"gpt-4": "gpt-4-prod"}}},
    "models": {
        "gpt-4": {"pricing": {"input": 0.03, "output": 0.06},
                  "deployments": [{"provider": "azureOpenAI", "target": "gpt-4"}]},
    },
    "routing": {"retries": {"maxAttempts": 2, "backoffBaseMs": 1, "backoffMaxMs": 5}},
}
GATEWAY, ROUTER, CACHE = "qlens-gateway", "qlens-router", "qlens-cache"
SERVER_SPAN = "POST /v1/chat/completions"
CACHE_GET, CACHE_PUT = "GET /v1/cache/{tenant}/{key}", "PUT /v1/cache/{tenant}/{key}"


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningStack, OTLPReceiver, FakeAzureOpenAI]]:
    with OTLPReceiver() as otlp, FakeAzureOpenAI(deployments=("gpt-4-prod",)) as azure:
        env = {**otlp.client_env(), **azure.client_env()}
        with running_stack(tmp_path_factory.mktemp("traced"), AZURE_ENV, extra_env=env) as stack:
            yield stack, otlp, azure


def _client_traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _trace(otlp: OTLPReceiver, trace_id: str, *, attempts: int) -> list[ReceivedSpan]:
    """Wait for the whole trace: the gateway's request span ends last among the synchronous ones,
    the background cache store and settle may come after it."""
    def complete(spans: list[ReceivedSpan]) -> bool:
        mine = [s for s in spans if s.trace_id == trace_id]
        names = [(s.service, s.name) for s in mine]
        return ((GATEWAY, SERVER_SPAN) in names and (ROUTER, SERVER_SPAN) in names
                and (GATEWAY, "gateway.cache.put") in names and (GATEWAY, "gateway.budget.settle") in names
                and (CACHE, CACHE_GET) in names and (CACHE, CACHE_PUT) in names
                and names.count((ROUTER, "router.attempt")) >= attempts)

    otlp.wait_for(complete)
    return otlp.trace(trace_id)


def _request_lines(stack: RunningStack, service: str, rid: str) -> list[dict]:
    """The service's request log lines for `rid`, once written (a line follows the answer's bytes)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(x) for x in stack.log(service).splitlines() if x.startswith("{")]
        mine = [x for x in lines if x.get("request_id") == rid and x.get("msg") == "request"]
        if mine or time.monotonic() > deadline:
            return mine
        time.sleep(0.05)


def _one(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    found = [s for s in spans if s.service == service and s.name == name]
    assert len(found) == 1, (service, name, [(s.service, s.name) for s in spans])
    return found[0]


def test_one_request_is_one_trace_across_gateway_router_and_provider(traced) -> None:
    stack, otlp, azure = traced
    azure.reset()
    traceparent, trace_id, client_span = _client_traceparent()
    prompt = f"tell nobody the word {secrets.token_hex(6)}"
    reply = stack.openai().chat.completions.with_raw_response.create(
        model="gpt-4", messages=[{"role": "user", "content": prompt}], max_tokens=50,
        extra_headers={"traceparent": traceparent, "x-request-id": "trace-test-1"})
    completion = reply.parse()
    assert completion.choices[0].message.content == f"[gpt-4-prod] {prompt}"

    spans = _trace(otlp, trace_id, attempts=1)
    assert {s.trace_id for s in spans} == {trace_id}
    by_id = {s.span_id: s for s in spans}

    # the gateway continues the client's trace: its request span's parent is the client's span
    request = _one(spans, GATEWAY, SERVER_SPAN)
    assert request.parent_span_id == client_span and request.kind == "SPAN_KIND_SERVER"
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["qlens.request_id"] == "trace-test-1"
    for child in ("gateway.auth", "gateway.cache.get", "gateway.budget.reserve", "gateway.router",
                  "gateway.budget.settle", "gateway.cache.put"):
        assert _one(spans, GATEWAY, child).parent_span_id == request.span_id, child
    assert _one(spans, GATEWAY, "gateway.cache.get").attributes["qlens.cache"] == "miss"
    # the cache hop continues in the cache service: a server span under each gateway cache call
    for call, served_name, status in (("gateway.cache.get", CACHE_GET, 404),
                                      ("gateway.cache.put", CACHE_PUT, 204)):
        hop = _one(spans, CACHE, served_name)
        assert hop.parent_span_id == _one(spans, GATEWAY, call).span_id and hop.kind == "SPAN_KIND_SERVER"
        assert hop.attributes["http.response.status_code"] == status
    assert _one(spans, CACHE, CACHE_GET).attributes["qlens.cache"] == "miss"

    # gateway.router -> the router's span -> one attempt -> the provider call
    router_call = _one(spans, GATEWAY, "gateway.router")
    assert router_call.kind == "SPAN_KIND_CLIENT"
    served = _one(spans, ROUTER, SERVER_SPAN)
    assert served.parent_span_id == router_call.span_id and served.kind == "SPAN_KIND_SERVER"
    attempt = _one(spans, ROUTER, "router.attempt")
    assert attempt.parent_span_id == served.span_id
    assert attempt.attributes == {
        "qlens.deployment": "azureOpenAI/gpt-4", "qlens.provider": "azureOpenAI", "qlens.model": "gpt-4",
        "qlens.attempt": 1, "qlens.circuit_state": "closed", "qlens.retry_delay_ms": 0.0,
        "qlens.outcome": "success",
    }
    provider = _one(spans, ROUTER, "chat gpt-4-prod")
    assert provider.parent_span_id == attempt.span_id and provider.kind == "SPAN_KIND_CLIENT"
    usage = completion.usage
    assert usage is not None
    a = provider.attributes
    assert a["gen_ai.system"] == "azure.ai.openai" and a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "gpt-4-prod" and a["gen_ai.request.max_tokens"] == 50
    assert a["gen_ai.response.model"] == completion.model
    assert a["gen_ai.usage.input_tokens"] == usage.prompt_tokens > 0
    assert a["gen_ai.usage.output_tokens"] == usage.completion_tokens > 0
    assert a["gen_ai.response.finish_reasons"] == [completion.choices[0].finish_reason]

    # every parent is in the trace (or is the client's span): no broken links
    assert all(s.parent_span_id in by_id or s.span_id == request.span_id for s in spans)
    # never the prompt or the completion on a span
    for s in spans:
        assert "tell nobody" not in s.text() and prompt.split()[-1] not in s.text(), s.name

    # the trace id sits beside the request id in both services' log lines
    for service in ("gateway", "router"):
        mine = _request_lines(stack, service, "trace-test-1")
        assert [x["trace_id"] for x in mine] == [trace_id], service


def test_a_streamed_provider_span_has_the_response_model_finish_reasons_and_usage(traced) -> None:
    stack, otlp, azure = traced
    azure.reset()
    traceparent, trace_id, _ = _client_traceparent()
    chunks = list(stack.openai().chat.completions.create(
        model="gpt-4", messages=[{"role": "user", "content": f"stream it {trace_id}"}], stream=True,
        stream_options={"include_usage": True}, extra_headers={"traceparent": traceparent}))
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0
    # only the provider span matters here (the whole trace, cache hops included, is checked above;
    # waiting for it too failed once under load, when a slow cache lookup made the request bypass)
    otlp.wait_for(lambda got: any(x.trace_id == trace_id and x.name == "chat gpt-4-prod" for x in got))
    spans = otlp.trace(trace_id)
    a = _one(spans, ROUTER, "chat gpt-4-prod").attributes
    assert a["gen_ai.response.model"] == chunks[0].model == "gpt-4-prod"
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["gen_ai.usage.input_tokens"] == usage.prompt_tokens > 0
    assert a["gen_ai.usage.output_tokens"] == usage.completion_tokens
    assert all(f"stream it {trace_id}" not in s.text() for s in spans)


def test_a_retried_request_shows_two_attempt_spans(traced) -> None:
    stack, otlp, azure = traced
    azure.reset()
    azure.fail(500, times=1)
    traceparent, trace_id, _ = _client_traceparent()
    completion = stack.openai().chat.completions.create(
        model="gpt-4", messages=[{"role": "user", "content": f"retry me {trace_id}"}],
        extra_headers={"traceparent": traceparent})
    assert completion.choices[0].message.content.startswith("[gpt-4-prod] retry me")

    spans = _trace(otlp, trace_id, attempts=2)
    served = _one(spans, ROUTER, SERVER_SPAN)
    attempts = sorted((s for s in spans if s.name == "router.attempt"),
                      key=lambda s: s.attributes["qlens.attempt"])
    assert [s.attributes["qlens.attempt"] for s in attempts] == [1, 2]
    assert [s.attributes["qlens.outcome"] for s in attempts] == ["server_error", "success"]
    assert all(s.parent_span_id == served.span_id for s in attempts)
    assert attempts[0].status == "STATUS_CODE_ERROR"
    assert attempts[0].attributes["error.type"] == "server_error"
    assert attempts[0].attributes["qlens.retry_delay_ms"] == 0.0
    assert 0.0 < attempts[1].attributes["qlens.retry_delay_ms"] <= 5.0
    # a provider call span under each attempt, the failed one marked failed
    calls = {s.parent_span_id: s for s in spans if s.name == "chat gpt-4-prod"}
    assert calls[attempts[0].span_id].status == "STATUS_CODE_ERROR"
    assert calls[attempts[1].span_id].attributes["gen_ai.usage.output_tokens"] > 0
    assert azure.calls() == 2


def test_tracing_is_off_unless_enabled(make_stack) -> None:
    """An endpoint in observability.tracing without `enabled`, and no OTEL_* variable: tracing stays
    off (no trace id in the log line, nothing exported)."""
    with OTLPReceiver() as otlp:
        stack = make_stack({"observability": {"tracing": {"enabled": False, "endpoint": otlp.url}}})
        stack.openai().chat.completions.create(model="echo", messages=[{"role": "user", "content": "quiet"}],
                                               extra_headers={"x-request-id": "untraced-1"})
        mine = _request_lines(stack, "gateway", "untraced-1")
        assert len(mine) == 1 and "trace_id" not in mine[0]
        assert otlp.requests == 0
