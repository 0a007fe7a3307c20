"""A local stand-in for the Bedrock runtime, speaking its wire protocol so real boto3 runs end to end.

    POST /model/{modelId}/converse          JSON in, JSON out (Converse)
    POST /model/{modelId}/converse-stream   JSON in, AWS event stream out (ConverseStream)

As strict as the service about what it is sent, so a translation bug fails here and not in
production:

- Signatures: SigV4 is verified for real. The signature is recomputed with botocore's own signer
  from the known secret, region and service `bedrock`, over exactly the headers the client signed;
  a wrong secret, a credential scoped to another region or service, or a request dated more than
  5 minutes from the fake's clock (`fake.clock`) is refused with AWS's 403.
- Conversations (`check_conversation`): messages non-empty, each `user` or `assistant` with a
  non-empty list of content blocks (a string is refused), the first from `user`, roles
  alternating, no blank text block, `inferenceConfig` keys only maxTokens, temperature, topP and
  stopSequences; with toolUse or toolResult blocks, a `toolConfig` naming tools, and each user turn
  after an assistant's toolUse blocks answering exactly those ids. A refusal is a 400
  `ValidationException` with the service's message.

Errors are what botocore parses for rest-json: the status, an `x-amzn-ErrorType` header and
`{"message": ...}`. Streams are `application/vnd.amazon.eventstream` frames (prelude with total and
header lengths and its CRC32, string headers `:message-type`, `:event-type`, `:content-type`, the
JSON payload, the message CRC32), one per event: messageStart, contentBlockDelta...,
contentBlockStop, messageStop, metadata (usage). A failure inside a stream is an `exception`
frame, as Bedrock sends it. The answer names the model and repeats the last user message, noting
its images (`(+1 image/png)`); image blocks must carry a png/jpeg/gif/webp format and base64 bytes.
Tools: while the toolConfig offers a tool the conversation has not called yet (and toolChoice is
not none), the answer is a toolUse of the next such tool with input `{"input": <the first user
text>}` (stopReason tool_use; streamed as contentBlockStart + two input fragments); once every
tool was called, the text answer lists the tool results: `[model] results: a; b`.
Misbehaviour: see `_common.py`.

    python -m tests.fakes.bedrock --port 9200 [--access-key AKID...] [--secret-key ...] [--region ...]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import hmac
import re
import struct
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import orjson

from tests.fakes._common import (
    FakeServer,
    Scope,
    count_tokens,
    last_user_text,
    read_body,
    send_bytes,
    serve_forever,
    words,
)

ERROR_TYPES = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}


SERVICE = "bedrock"  # the signing name of bedrock-runtime
IMAGE_FORMATS = ("png", "jpeg", "gif", "webp")
COHERE_INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")
MAX_SKEW_SECONDS = 300  # how far a request's X-Amz-Date may be from the service's clock
SIGV4_TIMESTAMP = "%Y%m%dT%H%M%SZ"
AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<credential>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),"
    r"\s*Signature=(?P<signature>[0-9a-f]{64})$"
)
# the service's own definition (botocore's bedrock-runtime model; tests/unit/test_fakes_bedrock.py
# checks these against it)
INFERENCE_CONFIG_KEYS = ("maxTokens", "temperature", "topP", "stopSequences")
CONTENT_BLOCK_KEYS = frozenset({
    "text", "image", "document", "video", "audio", "toolUse", "toolResult", "guardContent", "cachePoint",
    "reasoningContent", "citationsContent", "searchResult", "toolAddition", "toolRemoval",
})

# the service's messages, word for word where we know them
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS "
    "Secret Access Key and signing method. Consult the service documentation for details."
)
INVALID_TOKEN = "The security token included in the request is invalid."
MUST_START_WITH_USER = (
    "A conversation must start with a user message. Try again with a conversation that starts with a "
    "user message."
)
MUST_ALTERNATE = (
    "A conversation must alternate between user and assistant roles. Make sure the conversation "
    "alternates between user and assistant roles and try again."
)


class Refusal(Exception):
    """What the service answers to a request it does not accept: status, error type, message."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime(SIGV4_TIMESTAMP)


def check_signature(
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    now: float,
) -> None:
    """Raise `Refusal` unless the request carries a valid SigV4 signature by `access_key`.

    `target` is the raw path and query as sent, `headers` the request's (lower-case names). The
    expected signature is recomputed by botocore's SigV4Auth from our secret, region and service
    over the headers the client says it signed, dated by its X-Amz-Date: any difference in secret,
    region, service, method, path, signed header or body changes it."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    authorization = headers.get("authorization")
    if not authorization:
        raise Refusal(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
    match = AUTHORIZATION.match(authorization)
    if match is None:
        raise Refusal(403, "IncompleteSignatureException", "Authorization header requires 'Credential', "
                      "'Signature' and 'SignedHeaders' parameters.")
    parts = match["credential"].split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise Refusal(403, "IncompleteSignatureException", "Credential is malformed.")
    key_id, day, scope_region, scope_service, _ = parts
    if key_id != access_key:
        raise Refusal(403, "UnrecognizedClientException", INVALID_TOKEN)
    if scope_region != region:
        raise Refusal(403, "InvalidSignatureException",
                      f"Credential should be scoped to a valid region, not '{scope_region}'.")
    if scope_service != SERVICE:
        raise Refusal(403, "InvalidSignatureException",
                      f"Credential should be scoped to correct service: '{SERVICE}'.")
    signed = match["signed"].split(";")
    amz_date = headers.get("x-amz-date", "")
    if "host" not in signed or "x-amz-date" not in signed or not amz_date:
        raise Refusal(403, "IncompleteSignatureException", "The host and x-amz-date headers must be signed.")
    try:
        dated = datetime.strptime(amz_date, SIGV4_TIMESTAMP).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise Refusal(403, "IncompleteSignatureException", f"Date must be in ISO-8601 'basic format'. "
                      f"Got '{amz_date}'.") from None
    if dated < now - MAX_SKEW_SECONDS:
        raise Refusal(403, "InvalidSignatureException", f"Signature expired: {amz_date} is now earlier than "
                      f"{_stamp(now - MAX_SKEW_SECONDS)} ({_stamp(now)} - 5 min.)")
    if dated > now + MAX_SKEW_SECONDS:
        raise Refusal(403, "InvalidSignatureException", f"Signature not yet current: {amz_date} is still "
                      f"later than {_stamp(now + MAX_SKEW_SECONDS)} ({_stamp(now)} + 5 min.)")
    if day != amz_date[:8]:
        raise Refusal(403, "InvalidSignatureException", SIGNATURE_MISMATCH)
    declared = headers.get("x-amz-content-sha256")
    if declared is not None and declared != hashlib.sha256(body).hexdigest():
        raise Refusal(400, "XAmzContentSHA256Mismatch",
                      "The provided 'x-amz-content-sha256' header does not match what was computed.")
    # http://: botocore signs the payload's SHA-256 over plain HTTP, as the client did
    request = AWSRequest(method=method, url=f"http://{headers.get('host', '')}{target}",
                         headers={name: headers.get(name, "") for name in signed}, data=body)
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(access_key, secret_key), SERVICE, region)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    if signer.signed_headers(signer.headers_to_sign(request)) != match["signed"] or not hmac.compare_digest(
        expected, match["signature"]
    ):
        raise Refusal(403, "InvalidSignatureException", SIGNATURE_MISMATCH)


def _invalid(message: str) -> Refusal:
    return Refusal(400, "ValidationException", message)


def check_conversation(body: Any) -> None:
    """Raise `Refusal` (400 ValidationException) for a Converse body the service would refuse."""
    if not isinstance(body, dict):
        raise _invalid("Malformed input request, please reformat your input and try again.")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _invalid("1 validation error detected: Value at 'messages' failed to satisfy constraint: "
                       "Member must not be null and must be a list")
    if not messages:
        raise _invalid("The messages field is empty. Add at least one message to the messages field "
                       "and try again.")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            role = message.get("role") if isinstance(message, dict) else None
            raise _invalid(f"1 validation error detected: Value '{role}' at 'messages.{i}.member.role' "
                           "failed to satisfy constraint: Member must satisfy enum value set: "
                           "[user, assistant]")
        content = message.get("content")
        if not isinstance(content, list):
            raise _invalid(f"1 validation error detected: Value at 'messages.{i}.member.content' failed to "
                           "satisfy constraint: Member must not be null and must be a list of ContentBlock")
        if not content:
            raise _invalid(f"The content field in the Message object at messages.{i} is empty. Add a "
                           "ContentBlock object to the content field and try again.")
        for j, block in enumerate(content):
            _check_block(block, f"messages.{i}.content.{j}")
    if messages[0]["role"] != "user":
        raise _invalid(MUST_START_WITH_USER)
    if any(a["role"] == b["role"] for a, b in zip(messages, messages[1:], strict=False)):
        raise _invalid(MUST_ALTERNATE)
    _check_tools(messages, body.get("toolConfig"))
    system = body.get("system", [])
    if not isinstance(system, list):
        raise _invalid("1 validation error detected: Value at 'system' failed to satisfy constraint: "
                       "Member must be a list of SystemContentBlock")
    for j, block in enumerate(system):
        _check_block(block, f"system.{j}")
    inference = body.get("inferenceConfig", {})
    if not isinstance(inference, dict):
        raise _invalid("1 validation error detected: Value at 'inferenceConfig' failed to satisfy "
                       "constraint: Member must be a structure")
    unknown = sorted(set(inference) - set(INFERENCE_CONFIG_KEYS))
    if unknown:
        raise _invalid(f"The inferenceConfig field contains unknown keys: {', '.join(unknown)}. Valid keys "
                       f"are {', '.join(INFERENCE_CONFIG_KEYS)}.")


def _check_tools(messages: list[dict[str, Any]], tool_config: Any) -> None:
    """Tool use: a toolConfig with tools whenever the conversation has toolUse or toolResult blocks,
    and each user turn after an assistant turn with toolUse blocks answers exactly those ids."""
    uses = [b["toolUse"] for m in messages for b in m["content"] if "toolUse" in b]
    results = [b["toolResult"] for m in messages for b in m["content"] if "toolResult" in b]
    if (uses or results) and tool_config is None:
        raise _invalid("The toolConfig field must be defined when using toolUse and toolResult content "
                       "blocks.")
    if tool_config is not None:
        tools = tool_config.get("tools") if isinstance(tool_config, dict) else None
        if not isinstance(tools, list) or not tools:
            raise _invalid(f"1 validation error detected: Value '{tools}' at 'toolConfig.tools' failed to "
                           "satisfy constraint: Member must have length greater than or equal to 1")
        for k, tool in enumerate(tools):
            spec = tool.get("toolSpec") if isinstance(tool, dict) else None
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(
                (spec.get("inputSchema") or {}).get("json"), dict
            ):
                raise _invalid(f"The toolSpec at toolConfig.tools.{k} needs a name and an inputSchema.json.")
    for block in (*uses, *results):
        if not isinstance(block, dict) or not isinstance(block.get("toolUseId"), str):
            raise _invalid("Each toolUse and toolResult block needs a toolUseId.")
    asked: list[str] = []  # the toolUse ids of the previous (assistant) turn
    for i, m in enumerate(messages):
        ids = [b["toolResult"]["toolUseId"] for b in m["content"] if "toolResult" in b]
        if m["role"] == "user":
            if len(ids) > len(asked) or not set(ids) <= set(asked):
                raise _invalid(f"The number of toolResult blocks at messages.{i}.content exceeds the number "
                               "of toolUse blocks of previous turn.")
            if missing := [t for t in asked if t not in ids]:
                raise _invalid(f"Expected toolResult blocks at messages.{i}.content for the following Ids: "
                               + ", ".join(missing))
        asked = [b["toolUse"]["toolUseId"] for b in m["content"] if "toolUse" in b]


def _check_block(block: Any, where: str) -> None:
    if not isinstance(block, dict) or len(block) != 1 or next(iter(block)) not in CONTENT_BLOCK_KEYS:
        raise _invalid(f"The ContentBlock object at {where} must set exactly one of its members.")
    if "image" in block:
        image = block["image"]
        source = image.get("source") if isinstance(image, dict) else None
        if not isinstance(image, dict) or image.get("format") not in IMAGE_FORMATS:
            raise _invalid(f"1 validation error detected: Value at '{where}.image.format' failed to satisfy "
                           f"constraint: Member must satisfy enum value set: [{', '.join(IMAGE_FORMATS)}]")
        try:
            base64.b64decode(source["bytes"], validate=True)  # a blob travels as base64 in JSON
        except (TypeError, KeyError, ValueError, binascii.Error):
            raise _invalid(f"The image source at {where} must carry base64 bytes.") from None
    if "text" in block and (not isinstance(block["text"], str) or not block["text"].strip()):
        raise _invalid(f"The text field in the ContentBlock object at {where} is blank. Add text to the "
                       "text field, and try again.")


def _vector(text: str, dims: int) -> list[float]:
    """A deterministic unit vector for a text (SHA-256 expanded)."""
    seed = text.encode()
    raw = b"".join(hashlib.sha256(seed + n.to_bytes(4, "big")).digest() for n in range(dims // 32 + 1))
    vector = [b / 127.5 - 1.0 for b in raw[:dims]]
    norm = sum(v * v for v in vector) ** 0.5 or 1.0
    return [v / norm for v in vector]


def next_tool_use(body: dict[str, Any]) -> dict[str, Any] | None:
    """The toolUse block the fake answers with: the next offered tool not called yet (see above)."""
    config = body.get("toolConfig") or {}
    names = [t["toolSpec"]["name"] for t in config.get("tools") or () if "toolSpec" in t]
    choice = config.get("toolChoice") or {}
    if "tool" in choice:
        names = [choice["tool"]["name"]]
    called = {b["toolUse"]["name"] for m in body["messages"] for b in m["content"] if "toolUse" in b}
    todo = [n for n in names if n not in called]
    if not todo:
        return None
    first_user = next((str(b["text"]) for m in body["messages"] if m["role"] == "user"
                       for b in m["content"] if "text" in b), "")
    digest = hashlib.sha256(f"{todo[0]}|{len(called)}|{first_user}".encode()).hexdigest()[:20]
    return {"toolUseId": f"tooluse_{digest}", "name": todo[0], "input": {"input": first_user}}


def encode_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (lengths + CRC), string headers, payload, message CRC."""
    encoded = b""
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        encoded += bytes([len(n)]) + n + b"\x07" + struct.pack(">H", len(v)) + v  # 7 = string
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + encoded + payload
    return message + struct.pack(">I", binascii.crc32(message) & 0xFFFFFFFF)


def event_frame(event_type: str, body: dict[str, Any]) -> bytes:
    return encode_frame(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
        orjson.dumps(body),
    )


def exception_frame(exception_type: str, message: str) -> bytes:
    return encode_frame(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        orjson.dumps({"message": message}),
    )


class FakeBedrock(FakeServer):
    name = "fake-bedrock"

    def __init__(
        self,
        access_key: str = "AKIDFAKEFAKEFAKE",
        secret_key: str = "fake-bedrock-secret-key",
        region: str = "us-east-1",
        models: tuple[str, ...] | None = None,
        port: int | None = None,
        seed: int = 0,
    ) -> None:
        """Requests must be signed by `access_key`/`secret_key` for `region`; `models`: the only
        model ids that exist (None: any)."""
        super().__init__(port, seed)
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        self.models = set(models) if models is not None else None
        self.clock: Callable[[], float] = time.time  # the service's clock, for the skew check
        self.last_request: dict[str, Any] | None = None  # the last Converse body, to check translation

    def client_env(self) -> dict[str, str]:
        """The router's environment for calling this server through boto3 with its credentials."""
        return {"AWS_ENDPOINT_URL_BEDROCK_RUNTIME": self.url, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": self.region}

    async def handle(self, scope: Scope, receive: Any, send: Any) -> None:
        raw_path = scope.get("raw_path") or scope["path"].encode()
        parts = raw_path.decode().split("?")[0].split("/")
        # ["", "model", "<modelId>", "converse" | "converse-stream"]
        if (
            scope["method"] != "POST"
            or len(parts) != 4
            or parts[1] != "model"
            or parts[3] not in ("converse", "converse-stream", "invoke")
        ):
            await send_bytes(
                send,
                404,
                b'{"message": "no such operation"}',
                headers=[(b"x-amzn-errortype", b"UnknownOperationException")],
            )
            return
        model_id, stream = unquote(parts[2]), parts[3] == "converse-stream"
        raw = await read_body(receive)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = scope.get("query_string", b"")
        target = raw_path.decode() + ("?" + query.decode() if query else "")
        try:
            check_signature(scope["method"], target, headers, raw, access_key=self.access_key,
                            secret_key=self.secret_key, region=self.region, now=self.clock())
            if self.models is not None and model_id not in self.models:
                raise Refusal(404, "ResourceNotFoundException", f"Model {model_id} not found")
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise _invalid("Malformed input request, please reformat your input and try again.") from None
            if parts[3] == "invoke":
                await self._invoke(send, model_id, body)
                return
            check_conversation(body)
        except Refusal as refusal:
            await self._error(send, model_id, stream, refusal.status, refusal.message, refusal.error_type)
            return
        messages = body["messages"]
        self.last_request = body
        failure = self._failure()
        self._record(model_id, stream, failure or 200)  # on arrival: a client that gives up is still seen
        await self.pause()
        if failure is not None:
            await self._error(send, model_id, stream, failure, f"fake failure {failure}", record=False)
            return
        use = next_tool_use(body)
        images = [b["image"]["format"] for m in messages for b in m["content"] if "image" in b]
        text = f"[{model_id}] {last_user_text(messages)}" + "".join(f" (+1 image/{f})" for f in images)
        results = [b["toolResult"] for m in messages for b in m["content"] if "toolResult" in b]
        if results and use is None:
            said = [str(c.get("text", "")) for r in results for c in r.get("content", [])]
            text = f"[{model_id}] results: " + "; ".join(said)
        limit = (body.get("inferenceConfig") or {}).get("maxTokens")
        stop = "end_turn"
        if isinstance(limit, int) and count_tokens(text) > limit:
            text, stop = text[: limit * 4], "max_tokens"
        blocks = [*body.get("system", []), *(b for m in messages for b in m["content"])]
        prompt = " ".join(str(b["text"]) for b in blocks if "text" in b)
        usage = {"inputTokens": count_tokens(prompt), "outputTokens": count_tokens(text)}
        usage["totalTokens"] = usage["inputTokens"] + usage["outputTokens"]
        if use is not None:
            stop = "tool_use"
            usage["outputTokens"] = count_tokens(orjson.dumps(use["input"]).decode())
        if stream:
            await self._stream(send, text, stop, usage, use)
            return
        content = [{"toolUse": use}] if use is not None else [{"text": text}]
        answer = {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop,
            "usage": usage,
            "metrics": {"latencyMs": 1},
        }
        await send_bytes(send, 200, orjson.dumps(answer), headers=[(b"x-amzn-requestid", b"fake-request")])

    async def _invoke(self, send: Any, model_id: str, body: Any) -> None:
        """InvokeModel for the embedding models: Titan Text Embeddings v2 (one `inputText`,
        `dimensions` 256/512/1024, `inputTextTokenCount` back) and Cohere Embed (`texts` (1-96) and
        an `input_type`; the token count in the x-amzn-bedrock-input-token-count header)."""
        if model_id.startswith("amazon.titan-embed-text-v2"):
            text, dims = body.get("inputText"), body.get("dimensions", 1024)
            if not isinstance(text, str) or not text.strip():
                raise _invalid("Malformed input request: #: required key [inputText] not found")
            if dims not in (256, 512, 1024):
                raise _invalid("Malformed input request: #/dimensions: 300 is not a valid enum value"
                               .replace("300", str(dims)))
            self._record(model_id, False, 200)
            answer = {"embedding": _vector(text, dims), "inputTextTokenCount": count_tokens(text)}
            await send_bytes(send, 200, orjson.dumps(answer))
            return
        if model_id.startswith("cohere.embed"):
            texts = body.get("texts")
            ok = isinstance(texts, list) and 1 <= len(texts) <= 96 and all(isinstance(t, str) for t in texts)
            if not ok:
                raise _invalid("Malformed input request: #/texts: expected 1 to 96 strings")
            if body.get("input_type") not in COHERE_INPUT_TYPES:
                raise _invalid("Malformed input request: #: required key [input_type] not found")
            self._record(model_id, False, 200)
            answer = {"id": "fake", "response_type": "embeddings_floats", "texts": texts,
                      "embeddings": [_vector(t, 1024) for t in texts]}
            tokens = sum(count_tokens(t) for t in texts)
            await send_bytes(send, 200, orjson.dumps(answer),
                             headers=[(b"x-amzn-bedrock-input-token-count", str(tokens).encode())])
            return
        raise Refusal(400, "ValidationException", f"The provided model identifier is invalid: {model_id}")

    async def _error(
        self,
        send: Any,
        model_id: str,
        stream: bool,
        status: int,
        message: str,
        error_type: str | None = None,
        record: bool = True,
    ) -> None:
        if record:
            self._record(model_id, stream, status)
        error_type = error_type or ERROR_TYPES.get(status, "InternalServerException")
        await send_bytes(
            send,
            status,
            orjson.dumps({"message": message}),
            headers=[(b"x-amzn-errortype", f"{error_type}:http://internal.amazon.com/".encode())],
        )

    async def _stream(self, send: Any, text: str, stop: str, usage: dict[str, int],
                      use: dict[str, Any] | None = None) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/vnd.amazon.eventstream"),
                    (b"x-amzn-requestid", b"fake-request"),
                ],
            }
        )

        async def emit(frame: bytes) -> None:
            await send({"type": "http.response.body", "body": frame, "more_body": True})

        await emit(event_frame("messageStart", {"role": "assistant"}))
        if self.behaviour.fail_before_content:
            await send({"type": "http.response.body",
                        "body": exception_frame("internalServerException", "fake failure before content")})
            return
        if use is not None:  # a toolUse block: its start, then its input JSON in two fragments
            start = {"toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}
            await emit(event_frame("contentBlockStart", {"contentBlockIndex": 0, "start": start}))
            raw = orjson.dumps(use["input"]).decode()
            for piece in (raw[: len(raw) // 2], raw[len(raw) // 2:]):
                await emit(event_frame("contentBlockDelta", {"contentBlockIndex": 0,
                                                             "delta": {"toolUse": {"input": piece}}}))
        for i, piece in enumerate(words(text) if use is None else []):
            if self.behaviour.chunk_delay:
                await asyncio.sleep(self.behaviour.chunk_delay)
            await emit(event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}}))
            if i == 0 and self.behaviour.stall:
                await asyncio.sleep(self.behaviour.stall)
            if i == 0 and self.behaviour.fail_mid_stream:
                await send(
                    {
                        "type": "http.response.body",
                        "body": exception_frame("internalServerException", "fake failure mid-stream"),
                    }
                )
                return
        await emit(event_frame("contentBlockStop", {"contentBlockIndex": 0}))
        if self.behaviour.drop_terminator:  # cut off: no messageStop (nor metadata)
            await send({"type": "http.response.body", "body": b""})
            return
        await emit(event_frame("messageStop", {"stopReason": stop}))
        await send(
            {
                "type": "http.response.body",
                "body": event_frame("metadata", {"usage": usage, "metrics": {"latencyMs": 1}}),
            }
        )
        self.streams_finished += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--access-key", default="AKIDFAKEFAKEFAKE")
    parser.add_argument("--secret-key", default="fake-bedrock-secret-key")
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args()
    serve_forever(FakeBedrock(access_key=args.access_key, secret_key=args.secret_key, region=args.region,
                              port=args.port or None))


if __name__ == "__main__":
    main()
