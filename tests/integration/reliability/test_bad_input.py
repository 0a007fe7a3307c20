"""Hostile and careless input against a live gateway: never a 5xx, never a hang, every error in
OpenAI's format, and a refused request changes nothing.

- Property-based: schemathesis generates requests from the gateway's own /openapi.json (a fixed
  number of examples, derandomized so every run sends the same ones), valid and invalid.
- Hand-written: invalid JSON, wrong types, huge bodies and headers, huge max_tokens, empty messages,
  unknown roles and models, header injection through x-request-id, slow-loris clients.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from urllib.parse import urlparse

import httpx
import pytest

from services.gateway.schema import ChatCompletionRequest
from tests.integration.reliability.support import CHAT, chat, error_of, openai_error

pytestmark = pytest.mark.timeout(180)

FUZZ_EXAMPLES = 150  # per generation mode
SLOW_CLIENT_BOUND = 15.0  # seconds a slow client may hold a request before the gateway gives up


@pytest.fixture(scope="module")
def http(shared_stack):
    with httpx.Client(base_url=shared_stack.gateway_url, timeout=30) as client:
        yield client


# --- schemathesis ----------------------------------------------------------------------------


def live_schema(gateway_url: str) -> dict:
    r = httpx.get(gateway_url + "/openapi.json", timeout=10)
    assert r.status_code == 200
    return r.json()


def test_the_openapi_schema_describes_chat_completions(shared_stack):
    operation = live_schema(shared_stack.gateway_url)["paths"].get(CHAT, {}).get("post")
    assert operation is not None, "POST /v1/chat/completions is not in /openapi.json"
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body  # the request model (model, messages, ...) and the error responses
    assert {"400", "401", "404", "413", "429"} <= set(operation["responses"])


def with_chat_completions(schema: dict) -> dict:
    """The schema plus POST /v1/chat/completions from the gateway's own request model, if missing.

    Valid requests are steered to go deep instead of stopping at the first check: `model` is a
    served model or an unknown one, and a message has content and a role that needs nothing else
    (the per-role rules are validators the JSON schema does not express; negative cases still
    try the rest).
    """
    if CHAT in schema["paths"]:
        return schema
    request = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(request.pop("$defs", {}))
    request["properties"]["model"] = {"type": "string", "enum": ["echo", "no-such-model"]}
    message = components["Message"]
    message["required"] = ["role", "content"]
    message["properties"]["role"]["enum"] = ["system", "user", "assistant", "developer"]
    content = message["properties"]["content"]
    content["anyOf"] = [t for t in content["anyOf"] if t.get("type") != "null"]
    components["ChatCompletionRequest"] = request
    error = {"description": "OpenAI error", "content": {"application/json": {"schema": {"type": "object"}}}}
    schema["paths"][CHAT] = {"post": {
        "operationId": "chat_completions",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}}},
        "responses": {"200": {"description": "completion"}, "4XX": error},
    }}
    return schema


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzzed_requests_never_5xx_and_errors_are_openai_format(shared_stack, mode, capsys):
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings

    gw = shared_stack.gateway_url
    schema = schemathesis.openapi.from_dict(with_chat_completions(live_schema(gw)))
    strategy = schema.as_strategy(generation_mode=schemathesis.GenerationMode(mode))
    seen: Counter[str] = Counter()

    @settings(max_examples=FUZZ_EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case) -> None:
        r = case.call(base_url=gw, timeout=30)
        seen[f"{case.method} {case.path} {r.status_code}"] += 1
        assert r.status_code < 500, f"{r.status_code} {r.text[:300]}\n{case.as_curl_command()}"
        if r.status_code >= 400:
            headers = {k: v[0] if isinstance(v, list) else v for k, v in r.headers.items()}
            openai_error(r.status_code, r.content, headers)

    check()
    with capsys.disabled():
        print(f"\n[reliability] schemathesis {mode}: {sum(seen.values())} requests: "
              f"{dict(sorted(seen.items()))}")
    assert sum(n for k, n in seen.items() if k.startswith(f"POST {CHAT}")) >= FUZZ_EXAMPLES // 10
    if mode == "positive":  # valid requests got through to an answer, not only to refusals
        assert seen[f"POST {CHAT} 200"] > 0


# --- hand-written ----------------------------------------------------------------------------

M = [{"role": "user", "content": "x"}]


def j(**fields) -> bytes:
    """A chat body: model echo and one user message, unless `fields` say otherwise."""
    return json.dumps({"model": "echo", "messages": M, **fields}).encode()


BAD_BODIES = [
    (b"{not json", None),
    (b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}', None),
    (b'{"model": "echo", "messages": [{"role": "user", "content": "x"}]', None),
    (b"\x00\x01\x02", None),
    (b"\xef\xbb\xbf{}", None),  # a BOM, then an empty object
    (b"null", None),
    (b"[" * 100_000, None),
    (j(model=42), "model"),
    (j(messages="hello"), "messages"),
    (j(messages=["hello"]), "messages[0]"),
    (j(messages=[{"role": "user", "content": 42}]), "messages[0].content"),
    (j(messages=[{"content": "x"}]), "messages[0].role"),
    (j(stream="yes"), "stream"),
    (j(max_tokens="10"), "max_tokens"),
    (j(max_tokens=1.5), "max_tokens"),
    (j(max_tokens=0), "max_tokens"),
    (j(temperature=3), "temperature"),
    (j(n=0), "n"),
    (j(stop=["a", "b", "c", "d", "e"]), "stop"),
    (j(stream_options="x"), "stream_options"),
    (j(messages=[]), "messages"),
    (j(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role"),
    (j(messages=[{"role": "", "content": "x"}]), "messages[0].role"),
    (j(messages=[{"role": "tool", "content": "x"}]), "messages[0]"),
    (j(model=""), "model"),
    (j(model="m" * 300), "model"),
    (j(max_tokens=2**64), "max_tokens"),
    # a valid JSON number past 64 bits: a 400 naming the field
    (b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1' + b"0" * 400 + b"}",
     "max_tokens"),
]


@pytest.mark.parametrize(("content", "param"), BAD_BODIES, ids=[f"body{i}" for i in range(len(BAD_BODIES))])
def test_malformed_or_mistyped_bodies_are_400_naming_the_field(http, content, param):
    r = http.post(CHAT, content=content, headers={"content-type": "application/json"})
    err = error_of(r)
    assert r.status_code == 400, r.text
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] is not None and err["param"].startswith(param), err


@pytest.mark.parametrize("model", ["gpt-5", "../../etc/passwd", "echo ", "ÉCHO", "e\u0301cho", "echo\x00"])
def test_unknown_models_are_404_model_not_found(http, model):
    r = http.post(CHAT, json=chat("which model", model))
    assert r.status_code == 404 and error_of(r)["code"] == "model_not_found"
    assert error_of(r)["param"] == "model"


def test_huge_bodies_are_413_whether_announced_or_streamed(http, shared_stack):
    limit = 1024 * 1024  # gateway.maxBodyBytes default
    huge = json.dumps(chat("x" * (2 * limit))).encode()
    r = http.post(CHAT, content=huge)
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"

    def chunks():
        for _ in range(2 * limit // 65536 + 1):
            yield b" " * 65536

    r = http.post(CHAT, content=chunks())  # chunked: no Content-Length to refuse it by
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"
    # the gateway is still fine afterwards
    assert http.post(CHAT, json=chat("after huge bodies")).status_code == 200


def test_huge_max_tokens_is_refused_by_the_budget_and_changes_nothing(production):
    """Production's daily limits ($50 a user): a worst case of billions of tokens cannot be reserved."""
    stack = production.stack
    sent = production.azure.calls()
    with httpx.Client(base_url=stack.gateway_url, timeout=30, headers=stack.headers("alice")) as alice:
        before = alice.get("/v1/usage").json()
        for extra in ({"max_tokens": 2**31}, {"max_tokens": 2**63 - 1}, {"max_completion_tokens": 10**12},
                      {"max_tokens": 16384, "n": 128}):
            r = alice.post(CHAT, json=chat("a very long answer please", "gpt-4", **extra))
            err = error_of(r)
            assert r.status_code == 429 and err["code"] == "budget_exceeded", (extra, r.text)
            assert "budget" in err["message"]
        for content in BAD_BODIES[:10]:
            assert alice.post(CHAT, content=content[0]).status_code == 400
        after = alice.get("/v1/usage").json()
    assert after["user"] == before["user"] and after["tenant"] == before["tenant"]
    assert after["user"]["reserved"] == 0
    assert production.azure.calls() == sent  # nothing was sent on to the provider


def raw_exchange(url: str, request: bytes, timeout: float = 10) -> bytes:
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as s:
        s.sendall(request)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
    return out


def post_with_request_id(value: bytes) -> bytes:
    payload = json.dumps(chat("request id")).encode()
    return (b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            b"X-Request-Id: " + value + b"\r\nContent-Length: " + str(len(payload)).encode()
            + b"\r\nConnection: close\r\n\r\n" + payload)


INJECTED = [
    b"abc\r\nSet-Cookie: injected=1",
    b"abc\nX-Injected: 1",
    b"abc\rX-Injected: 1",
    b"x" * 10_000,
    "ünïcødé-ид-\u202e".encode(),
    b'abc","status":999,"tenant":"admin',  # a try at forging fields of the JSON log line
    b"abc%0d%0aSet-Cookie:%20injected=1",
]


@pytest.mark.parametrize("value", INJECTED, ids=[f"rid{i}" for i in range(len(INJECTED))])
def test_request_id_injection_is_never_reflected(shared_stack, value):
    answer = raw_exchange(shared_stack.gateway_url, post_with_request_id(value))
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    head = answer.split(b"\r\n\r\n", 1)[0]
    status = int(head.split(b" ", 2)[1])
    assert status < 500
    lowered = head.lower()
    assert b"set-cookie" not in lowered and b"x-injected" not in lowered and b"injected" not in lowered
    if status == 200:  # accepted by the HTTP parser: a fresh id replaces the unsafe one
        rid = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")[1:]
                   if line.lower().startswith(b"x-request-id:"))
        assert rid != value and rid.isalnum() and len(rid) <= 128
    log = shared_stack.log("gateway")
    assert '"status":999' not in log and '"tenant":"admin"' not in log
    assert value.decode("latin-1") not in log


def test_a_megabyte_of_headers_is_refused(shared_stack):
    padded = post_with_request_id(b"ok").replace(b"Host: gateway\r\n",
                                                 b"Host: gateway\r\nX-Padding: " + b"a" * (1 << 20) + b"\r\n")
    answer = raw_exchange(shared_stack.gateway_url, padded)
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    assert status in (400, 413, 431), answer[:200]


REQUEST_LINE = b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: gateway\r\n"


def slow_client(url: str, opening: bytes, drip: bytes, bound: float) -> tuple[float, bytes]:
    """Send `opening`, then one byte of `drip` a second; returns (seconds, answer) once the server
    answers, closes ("(closed)") or resets ("(reset)") the connection, or (bound, b"") when it
    still held the connection after `bound` seconds."""
    u = urlparse(url)
    start = time.monotonic()
    with socket.create_connection((u.hostname, u.port), timeout=bound) as s:
        s.sendall(opening)
        s.settimeout(1.0)
        for i in range(int(bound)):
            try:
                got = s.recv(65536)
                return time.monotonic() - start, got or b"(closed)"
            except TimeoutError:
                pass
            except ConnectionResetError:  # cut off by a reset: the gateway let go, an outcome too
                return time.monotonic() - start, b"(reset)"
            try:
                s.sendall(drip[i % len(drip):i % len(drip) + 1])
            except OSError:
                return time.monotonic() - start, b"(closed)"
    return bound, b""


def test_slow_loris_clients_are_cut_off(shared_stack):
    url = shared_stack.gateway_url
    cases = {
        "slow body": (REQUEST_LINE + b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{",
                      b" "),
        "slow headers": (REQUEST_LINE, b"X-Slow: yes\r\n"),
    }
    results: dict[str, tuple[float, bytes] | BaseException] = {}

    def run(name: str) -> None:
        try:
            results[name] = slow_client(url, *cases[name], SLOW_CLIENT_BOUND)
        except BaseException as exc:  # reported below: a client that crashed proves nothing
            results[name] = exc

    threads = [threading.Thread(target=run, args=(name,), daemon=True) for name in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SLOW_CLIENT_BOUND + 10)
    assert not [t for t in threads if t.is_alive()], "a slow client outlived its join"
    assert results.keys() == cases.keys()
    for name, result in results.items():
        assert not isinstance(result, BaseException), f"{name}: the client failed: {result!r}"
        seconds, answer = result
        assert answer, f"{name}: the gateway still held the connection after {seconds:.0f} s"
        if answer.startswith(b"HTTP/1.1 "):
            status = int(answer.split(b" ", 2)[1])
            assert status in (400, 408), answer[:200]
            if status == 408:
                openai_error(408, answer.split(b"\r\n\r\n", 1)[1])
