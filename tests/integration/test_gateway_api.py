"""The gateway's HTTP surface against a real stack: error statuses and bodies, headers, request ids,
cache opt-out, health, metrics and the log line. Raw HTTP (httpx, sockets) so nothing is smoothed
over by a client library."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from urllib.parse import urlparse

import httpx
import pytest

from tests.support.stack import RunningStack

pytestmark = pytest.mark.timeout(120)

CHAT = "/v1/chat/completions"


def body(text: str, **extra) -> dict:
    return {"model": "echo", "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture(scope="module")
def http(shared_stack: RunningStack):
    with httpx.Client(base_url=shared_stack.gateway_url, timeout=30) as client:
        yield client


def assert_openai_error(r: httpx.Response, status: int, *, param: str | None = None, code: str | None = None):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and isinstance(err["type"], str)
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    assert "Traceback" not in r.text
    assert r.headers["x-request-id"]
    return err


@pytest.mark.parametrize(
    ("content", "param", "code"),
    [
        (b"{not json", None, "invalid_json"),
        (b"\xff\xfe binary", None, "invalid_json"),
        (b"[" * 5000 + b"]" * 5000, None, "invalid_json"),  # nesting too deep for any parser
        (b"[1, 2]", None, "invalid_request_body"),
        (b'"a string"', None, "invalid_request_body"),
        (b"", None, "invalid_json"),
        (json.dumps({"model": "echo", "messages": []}).encode(), "messages", None),
        (json.dumps({"model": "echo"}).encode(), "messages", "missing_required_parameter"),
        (json.dumps({"model": "echo", "messages": [{"role": "wizard", "content": "x"}]}).encode(),
         "messages[0].role", None),
        (json.dumps(body("x", temperature="hot")).encode(), "temperature", None),
        (json.dumps(body("x", max_tokens=-1)).encode(), "max_tokens", None),
        (json.dumps(body("x", stream="yes")).encode(), "stream", None),
        (json.dumps(body("x") | {"model": ["echo"]}).encode(), "model", None),
    ],
)
def test_bad_requests_are_400_in_openai_format(http, content, param, code):
    r = http.post(CHAT, content=content, headers={"content-type": "application/json"})
    err = assert_openai_error(r, 400, param=param, code=code)
    assert err["type"] == "invalid_request_error"
    assert r.headers["x-qlens-cache"] == "bypass"


def test_unknown_model_is_404_model_not_found(http):
    err = assert_openai_error(http.post(CHAT, json=body("x") | {"model": "gpt-17"}), 404, param="model",
                              code="model_not_found")
    assert "gpt-17" in err["message"]


def test_framework_404_and_405_answer_in_openai_format(http):
    assert_openai_error(http.get("/v1/nothing-here"), 404)
    assert_openai_error(http.get(CHAT), 405)
    assert_openai_error(http.delete("/v1/models"), 405)


def test_body_over_the_limit_is_413_by_content_length(http):
    big = json.dumps(body("x" * (1024 * 1024 + 10))).encode()
    err = assert_openai_error(http.post(CHAT, content=big, headers={"content-type": "application/json"}), 413,
                              code="request_too_large")
    assert "1048576" in err["message"]


def test_chunked_body_over_the_limit_is_413_while_reading(http):
    def chunks():  # no Content-Length: the gateway has to count as it reads
        yield b'{"model": "echo", "messages": [{"role": "user", "content": "'
        for _ in range(300):
            yield b"y" * 4096
        yield b'"}]}'

    r = http.post(CHAT, content=chunks(), headers={"content-type": "application/json"})
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert_openai_error(r, 413, code="request_too_large")


def test_chunked_body_under_the_limit_is_served(http):
    def chunks():
        yield b'{"model": "echo", "messages": [{"role": "user", '
        yield b'"content": "chunked ok"}]}'

    r = http.post(CHAT, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Echo: chunked ok"


def test_headers_on_a_served_request(http):
    r = http.post(CHAT, json=body(f"headers please {uuid.uuid4().hex}"))  # asked for the first time
    assert r.status_code == 200
    assert r.headers["x-qlens-provider"] == "echo/echo"
    assert r.headers["x-qlens-cache"] == "miss"
    assert re.fullmatch(r"\d+\.\d{3}", r.headers["x-qlens-overhead-ms"])  # ms, three decimals
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])  # a fresh random 128-bit id


@pytest.mark.parametrize("rid", ["abc-123", "A.b_C-9", "x" * 128, "0"])
def test_a_safe_client_request_id_is_propagated(http, rid):
    r = http.post(CHAT, json=body("rid"), headers={"x-request-id": rid})
    assert r.headers["x-request-id"] == rid
    assert_openai_error(http.post(CHAT, content=b"{", headers={"x-request-id": rid}), 400)
    assert http.post(CHAT, content=b"{", headers={"x-request-id": rid}).headers["x-request-id"] == rid


UNSAFE_IDS = ["x" * 129, "has space", "semi;colon", 'quote"d', "%0d%0aset-cookie:%20a=b", ""]


@pytest.mark.parametrize("rid", UNSAFE_IDS)
def test_an_unsafe_request_id_is_replaced_not_reflected(http, rid):
    r = http.post(CHAT, json=body("rid"), headers={"x-request-id": rid})
    assert r.status_code == 200
    assert r.headers["x-request-id"] != rid and r.headers["x-request-id"].isalnum()
    assert "set-cookie" not in r.headers


def raw_request(url: str, head: bytes, payload: bytes) -> bytes:
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(head + b"Content-Length: " + str(len(payload)).encode() + b"\r\nConnection: close\r\n\r\n"
                  + payload)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_header_injection_attempts_never_reach_the_response(shared_stack: RunningStack):
    payload = json.dumps(body("inject")).encode()
    for value in (b"abc\rSet-Cookie: evil=1", b"abc\x00def", b"abc\x7fdef"):
        head = b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" \
               b"X-Request-Id: " + value + b"\r\n"
        answer = raw_request(shared_stack.gateway_url, head, payload)
        head_out = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert b"evil" not in head_out and b"\x00" not in head_out
        assert answer.startswith(b"HTTP/1.1 ")  # refused by the HTTP parser or answered with a new id


def test_client_cache_opt_out_bypasses_the_cache(http):
    for _ in range(2):
        r = http.post(CHAT, json=body("opt out"), headers={"cache-control": "no-cache"})
        assert r.status_code == 200 and r.headers["x-qlens-cache"] == "bypass"


def test_health_and_readiness_name_their_checks(http):
    assert http.get("/health").json()["status"] == "ok"
    ready = http.get("/health/ready")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert checks["router"]["ok"] and checks["cache"]["ok"]


def test_usage_reports_the_callers_spend(http):
    user = "usage-reporter"
    before = http.get("/v1/usage", params={"user": user}).json()
    assert before["tenant_id"] == "default" and before["user_id"] == user
    assert http.post(CHAT, json=body("spend a little", user=user, max_tokens=20)).status_code == 200
    after = http.get("/v1/usage", params={"user": user}).json()
    assert after["user"]["spent"] > before["user"]["spent"]
    assert after["user"]["reserved"] == 0  # settled, nothing left held


def test_metrics_are_exposed(http):
    http.post(CHAT, json=body("metrics"))
    text = http.get("/metrics").text
    assert 'qlens_requests_total{route="/v1/chat/completions",service="gateway",status="200"}' in text
    assert 'qlens_requests_total{route="/v1/chat/completions",service="gateway",status="400"}' in text
    assert "qlens_request_duration_seconds_bucket" in text
    assert "qlens_gateway_overhead_seconds_count" in text
    assert 'qlens_cache_requests_total{result="miss"}' in text
    assert 'qlens_tokens_total{kind="prompt",model="echo"}' in text
    assert 'qlens_cost_usd_total{scope="total"}' in text


def test_one_json_log_line_per_request_without_the_prompt(shared_stack: RunningStack, http):
    secret_prompt = "my-very-private-prompt-4711"
    http.post(CHAT, json=body(secret_prompt), headers={"x-request-id": "log-line-check"})
    # the line is written after the answer's bytes, and the shared stack's other requests may be
    # writing theirs while we read: parse only this request's lines, once complete
    deadline = time.monotonic() + 5
    while True:
        text = shared_stack.log("gateway")
        complete = text[: text.rfind("\n") + 1].splitlines()
        mine = [json.loads(line) for line in complete if line.startswith("{") and '"log-line-check"' in line]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(mine) == 1
    entry = mine[0]
    assert {"tenant", "model", "provider", "status", "latency_ms"} <= set(entry)
    assert entry["status"] == 200 and entry["model"] == "echo" and entry["provider"] == "echo/echo"
    for service in ("gateway", "router", "cache"):
        assert secret_prompt not in shared_stack.log(service)


# --- /openapi.json ------------------------------------------------------------------------------


def test_openapi_lists_every_path_the_openai_sdk_calls(shared_stack: RunningStack):
    """The real openai SDK's requests for each API QLens serves are recorded on the wire; every
    (method, path) is in /openapi.json, the model APIs with their request schemas and errors."""
    import httpx2
    import openai

    seen: set[tuple[str, str]] = set()
    record = lambda request: seen.add((request.method, request.url.path))  # noqa: E731
    with httpx2.Client(event_hooks={"request": [record]}) as wire:
        client = openai.OpenAI(base_url=shared_stack.base_url, api_key="no-key-needed", max_retries=0,
                               http_client=wire)
        user = [{"role": "user", "content": "x"}]
        calls = (lambda: client.chat.completions.create(model="echo", messages=user),
                 lambda: client.responses.create(model="echo", input="x"),
                 lambda: client.embeddings.create(model="echo", input="x"),  # a chat model: 400, still sent
                 lambda: client.models.list(), lambda: client.models.retrieve("echo"))
        for call in calls:
            try:
                call()
            except openai.APIStatusError:
                pass
    assert len(seen) == 5
    document = httpx.get(shared_stack.gateway_url + "/openapi.json", timeout=10).json()
    templates = {(method.upper(), re.sub(r"\{[^}]+\}", "[^/]+", path))
                 for path, item in document["paths"].items() for method in item}
    for method, path in seen:
        assert any(m == method and re.fullmatch(t, path) for m, t in templates), (method, path)
    schemas = document["components"]["schemas"]
    for path, request, takes in (("/v1/chat/completions", "ChatCompletionRequest", "messages"),
                                 ("/v1/responses", "ResponsesRequest", "input"),
                                 ("/v1/embeddings", "EmbeddingsRequest", "input")):
        operation = document["paths"][path]["post"]
        body = operation["requestBody"]["content"]["application/json"]
        assert body["schema"] == {"$ref": f"#/components/schemas/{request}"}
        assert body["example"]["model"] == "echo"
        assert {"model", takes} <= set(schemas[request]["required"])
        assert {"400", "401", "404", "429"} <= set(operation["responses"])
        assert operation["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/OpenAIError")
    assert "/v1/usage" in document["paths"]
