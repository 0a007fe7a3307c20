"""A local stand-in for Azure OpenAI, speaking its REST API so the real `openai` SDK runs end to end.

    POST /openai/deployments/{deployment}/chat/completions?api-version=2024-06-01
    POST /openai/v1/responses     (the Responses API of the v1 API: tests/fakes/azure_responses.py)
    api-key: <key>            (or Authorization: Bearer <Entra ID token>)

As strict as the service about what it is sent (each refusal is tested in
tests/unit/test_fakes_azure_openai.py):

- `api-version` must be one the environment configures (`api_versions`): a missing or other
  version is Azure's 404 "Resource not found", so the configured apiVersion is checked on the wire.
- The deployment must be one of `deployments`: 404 DeploymentNotFound otherwise. There is no
  accept-all: a test names the deployments it calls (`for_environment` reads them from an
  environment's models, as the router resolves them).
- The body must be sent as JSON (`content-type: application/json`) and the messages must be valid
  chat messages (`check_messages`): known roles, content a string or a list of parts of the types
  the role allows, `tool` messages with a `tool_call_id` answering a preceding assistant's
  `tool_calls` (each `{id, type: "function", function: {name, arguments}}`, every one answered).
  A refusal is a 400 in OpenAI's error format, which Azure uses for request validation.
- Entra ID: `GET /msi/token` is an App Service managed-identity endpoint (point `IDENTITY_ENDPOINT`
  there, `IDENTITY_HEADER` = `fake.identity_header`); it issues a token only for the Azure OpenAI
  resource (`https://cognitiveservices.azure.com`), which this fake then accepts as
  `Authorization: Bearer`. A token asked for any other resource is refused, as Entra ID refuses it.

JSON answers and `stream: true` server-sent events (`chat.completion.chunk`s, a usage chunk when
`stream_options.include_usage` is set, then `data: [DONE]`), with Azure's error bodies
(`{"error": {"code", "message"}}`) for 401/404/429/5xx. The answer names the deployment and
repeats the last user message: `[gpt-4] hello`. Misbehaviour on demand: see `_common.py`.

    python -m tests.fakes.azure_openai --port 9100 --api-key test-key --deployment gpt-4 \
        [--api-version 2024-06-01] [--delay-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import math
import re
import struct
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs

import orjson

from tests.fakes import azure_responses
from tests.fakes._common import (
    FakeServer,
    Invalid,
    Scope,
    count_tokens,
    last_user_text,
    prompt_text,
    read_body,
    send_bytes,
    serve_forever,
    words,
)

PATH = re.compile(r"^/openai/deployments/([^/]+)/(chat/completions|embeddings)$")
EMBEDDING_DIMENSIONS = 1536

ERROR_CODES = {
    400: "BadRequest",
    401: "401",
    404: "DeploymentNotFound",
    408: "Timeout",
    429: "429",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
}


# the api-version the router sends when an environment names none (services/common/config.py),
# written here as a literal so that a changed default is seen on the wire
DEFAULT_API_VERSION = "2024-06-01"
ENTRA_RESOURCE = "https://cognitiveservices.azure.com"  # what an Azure OpenAI token is issued for
TENANT = "72f988bf-0000-4000-8000-000000azopenai"
MISSING_DEPLOYMENT = (
    "The API deployment for this resource does not exist. If you created the deployment within the "
    "last 5 minutes, please wait a moment and try again."
)
ROLES = ("system", "assistant", "user", "function", "tool", "developer")
# the content part types each role may send (the chat completions API's message schemas)
PART_TYPES = {
    "system": ("text",),
    "developer": ("text",),
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
}


def azure_error(status: int, message: str, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"code": code or ERROR_CODES.get(status, str(status)), "message": message}})


def _not(value: Any, what: str, where: str) -> Invalid:
    """The schema validator's wording: `<value> is not of type 'string' - 'messages.1.content'`."""
    return Invalid(f"{orjson.dumps(value).decode()[:200]} is not {what} - '{where}'")


def _missing(name: str, where: str) -> Invalid:
    return Invalid(f"'{name}' is a required property - '{where}'")


UNANSWERED_CALLS = (
    "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
    "'tool_call_id'. The following tool_call_ids did not have response messages: "
)
TOOL_WITHOUT_CALL = (
    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with "
    "'tool_calls'."  # sic: the service's spelling
)


def check_messages(messages: Any) -> None:
    """Raise `Invalid` for a `messages` value the chat completions API refuses."""
    if messages is None:
        raise Invalid("'messages' is a required property")
    if not isinstance(messages, list):
        raise _not(messages, "of type 'array'", "messages")
    if not messages:
        raise Invalid("[] is too short - 'messages'")
    open_calls: list[str] = []  # tool_call_ids of the last assistant message not answered yet
    for i, m in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(m, dict):
            raise _not(m, "of type 'object'", where)
        role = m.get("role")
        if role is None:
            raise _missing("role", where)
        if role not in ROLES:
            raise _not(role, f"one of {list(ROLES)}", f"{where}.role")
        if role != "tool" and open_calls:
            raise Invalid(UNANSWERED_CALLS + ", ".join(open_calls), param=f"{where}.role")
        content = m.get("content")
        if role == "assistant" and m.get("tool_calls") is not None:
            open_calls = _check_tool_calls(m["tool_calls"], where)
            if content is None:  # an assistant making calls may leave the content out
                continue
        elif role == "tool":
            call_id = m.get("tool_call_id")
            if call_id is None:
                raise _missing("tool_call_id", where)
            if not isinstance(call_id, str):
                raise _not(call_id, "of type 'string'", f"{where}.tool_call_id")
            if call_id not in open_calls:
                raise Invalid(TOOL_WITHOUT_CALL, param=f"{where}.role")
            open_calls.remove(call_id)
        elif role == "function":  # deprecated, still served: it needs the function's name
            if not isinstance(m.get("name"), str):
                raise _missing("name", where)
            continue
        _check_content(content, role, where)
    if open_calls:
        raise Invalid(UNANSWERED_CALLS + ", ".join(open_calls), param="messages")


def _check_content(content: Any, role: str, where: str) -> None:
    if content is None:
        raise _missing("content", where)
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _not(content, "of type 'string', 'array'", f"{where}.content")
    allowed = PART_TYPES[role]
    for j, part in enumerate(content):
        at = f"{where}.content.{j}"
        if not isinstance(part, dict):
            raise _not(part, "of type 'object'", at)
        kind = part.get("type")
        if kind not in allowed:
            supported = ", ".join(f"'{t}'" for t in allowed)
            raise Invalid(f"Invalid value: {orjson.dumps(kind).decode()}. Supported values are: {supported}.",
                          param=f"{at}.type", code="invalid_value")
        if kind in ("text", "refusal") and not isinstance(part.get(kind), str):
            raise _missing(kind, at)
        if kind == "image_url" and not isinstance((part.get("image_url") or {}).get("url"), str):
            raise _missing("url", f"{at}.image_url")


def _check_tool_calls(tool_calls: Any, where: str) -> list[str]:
    """The ids of a valid assistant `tool_calls` list."""
    if not isinstance(tool_calls, list):
        raise _not(tool_calls, "of type 'array'", f"{where}.tool_calls")
    if not tool_calls:
        raise Invalid(f"[] is too short - '{where}.tool_calls'")
    ids = []
    for k, call in enumerate(tool_calls):
        at = f"{where}.tool_calls.{k}"
        if not isinstance(call, dict):
            raise _not(call, "of type 'object'", at)
        for name in ("id", "type", "function"):
            if name not in call:
                raise _missing(name, at)
        if not isinstance(call["id"], str):
            raise _not(call["id"], "of type 'string'", f"{at}.id")
        if call["type"] != "function":
            raise _not(call["type"], "one of ['function']", f"{at}.type")
        function = call["function"]
        if not isinstance(function, dict):
            raise _not(function, "of type 'object'", f"{at}.function")
        for name in ("name", "arguments"):
            if name not in function:
                raise _missing(name, f"{at}.function")
            if not isinstance(function[name], str):
                raise _not(function[name], "of type 'string'", f"{at}.function.{name}")
        ids.append(call["id"])
    return ids


def json_body(headers: dict[bytes, bytes], raw: bytes) -> dict[str, Any]:
    """The request's JSON object, or `Invalid` as Azure words it."""
    content_type = headers.get(b"content-type", b"").decode("latin-1")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise Invalid(
            f"Unsupported content type: '{content_type}'. This API method only accepts "
            f"'application/json' requests, but you specified the header 'Content-Type: "
            f"{content_type}'. Please try again with a supported content type."
        )
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Invalid("We could not parse the JSON body of your request. The API expects a JSON "
                      "payload, but what was sent was not valid JSON.") from None
    if not isinstance(body, dict):
        raise Invalid(f"{orjson.dumps(body).decode()[:100]} is not of type 'object'")
    return body


def azure_deployments(environment: Mapping[str, Any]) -> tuple[str, ...]:
    """The Azure deployment names an environment's models call: each azureOpenAI target, through
    `providers.azureOpenAI.deployments` when it maps it (as the router resolves targets)."""
    names = ((environment.get("providers") or {}).get("azureOpenAI") or {}).get("deployments") or {}
    out: list[str] = []
    for model in (environment.get("models") or {}).values():
        for d in model.get("deployments") or []:
            if d.get("provider") == "azureOpenAI":
                name = names.get(d["target"], d["target"])
                name = name if isinstance(name, str) else name["name"]  # {name, api} entries
                if name not in out:
                    out.append(name)
    return tuple(out)


class FakeAzureOpenAI(FakeServer):
    name = "fake-azure-openai"

    def __init__(
        self,
        api_key: str = "test-azure-key",
        *,
        deployments: Iterable[str],
        api_versions: Iterable[str] = (DEFAULT_API_VERSION,),
        tokens: tuple[str, ...] = (),
        port: int | None = None,
        seed: int = 0,
    ) -> None:
        """`deployments`: the only ones that exist; `api_versions`: the only ones served; `tokens`:
        Entra ID bearer tokens accepted (besides those `/msi/token` issues)."""
        super().__init__(port, seed)
        self.api_key = api_key
        self.tokens = set(tokens)
        self.deployments = set(deployments)
        self.api_versions = set(api_versions)
        self.identity_header = "fake-identity-header"
        self.auth_kinds: set[str] = set()  # "api-key" and/or "bearer": how requests were authorized
        self.responses_calls = 0  # requests to the Responses API (/openai/v1/responses)
        self.stored = 0  # Responses requests that asked Azure to store the response (store not false)
        self.wire: list[dict[str, Any]] | None = None  # a list: every request is kept in it, whole
        self.token_lifetime = 3600  # seconds an issued Entra ID token is valid

    @classmethod
    def for_environment(cls, environment: Mapping[str, Any], **kw: Any) -> Any:
        """A fake serving exactly the deployments and apiVersion `environment` (a dict, as the
        environment file says) configures; `kw` as for the constructor."""
        azure = (environment.get("providers") or {}).get("azureOpenAI") or {}
        return cls(deployments=azure_deployments(environment),
                   api_versions=(azure.get("apiVersion", DEFAULT_API_VERSION),), **kw)

    def reset(self) -> None:
        super().reset()
        self.auth_kinds.clear()
        self.responses_calls = self.stored = 0

    def client_env(self) -> dict[str, str]:
        """The router's environment for calling this server with its API key."""
        return {"AZURE_OPENAI_ENDPOINT": self.url, "AZURE_OPENAI_API_KEY": self.api_key}

    async def handle(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["path"] == "/msi/token":
            await self._issue_token(scope, send)
            return
        match = PATH.match(scope["path"])
        responses = scope["path"] == azure_responses.PATH
        if scope["method"] != "POST" or (match is None and not responses):
            await send_bytes(send, 404, azure_error(404, "Resource not found", "404"))
            return
        raw = await read_body(receive)
        headers = dict(scope["headers"])
        if self.wire is not None:
            self.wire.append({"method": scope["method"], "path": scope["path"],
                              "query": parse_qs(scope.get("query_string", b"").decode()),
                              "headers": {k.decode(): v.decode() for k, v in headers.items()}, "body": raw})
        versions = parse_qs(scope.get("query_string", b"").decode()).get("api-version", [])
        if responses:
            await self._responses(send, raw, headers, versions)
            return
        assert match is not None
        deployment = match.group(1)
        if len(versions) != 1 or versions[0] not in self.api_versions:  # Azure: 404, whatever the version
            await self._error(send, deployment, False, 404, "Resource not found", code="404")
            return
        auth = self._auth(headers)
        if auth is None:
            await self._error(
                send,
                deployment,
                False,
                401,
                "Access denied due to invalid subscription key or wrong API endpoint.",
            )
            return
        self.auth_kinds.add(auth)
        if deployment not in self.deployments:
            await self._error(send, deployment, False, 404, MISSING_DEPLOYMENT)
            return
        try:
            body = json_body(headers, raw)
            if match.group(2) == "embeddings":
                await self._embeddings(send, deployment, body)
                return
            check_messages(body.get("messages"))
        except Invalid as invalid:
            self._record(deployment, False, 400)
            await send_bytes(send, 400, invalid.body())
            return
        messages = body["messages"]
        stream = body.get("stream") is True
        failure = self._failure()
        self._record(deployment, stream, failure or 200)  # on arrival: a client that gives up is still seen
        await self.pause()
        if failure is not None:
            await self._error(send, deployment, stream, failure, f"fake failure {failure}", record=False)
            return
        text = f"[{deployment}] {last_user_text(messages)}"
        usage = {
            "prompt_tokens": count_tokens(prompt_text(messages)),
            "completion_tokens": count_tokens(text),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if stream:
            options = body.get("stream_options") or {}
            await self._stream(send, deployment, text, usage, bool(options.get("include_usage")))
            return
        answer = {
            "id": f"chatcmpl-fake-{int(time.time() * 1000)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": deployment,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "logprobs": None,
                    "message": {"role": "assistant", "content": text},
                }
            ],
            "usage": usage,
        }
        await send_bytes(send, 200, orjson.dumps(answer))

    async def _responses(self, send: Any, raw: bytes, headers: dict[bytes, bytes],
                         versions: list[str]) -> None:
        """POST /openai/v1/responses (tests/fakes/azure_responses.py): the deployment is the body's model."""
        if versions and (len(versions) != 1 or versions[0] not in azure_responses.API_VERSIONS):
            await send_bytes(send, 400, azure_error(400, f"API version not supported: {versions}. The v1 API "
                                                         "takes no api-version, or 'preview'.", "BadRequest"))
            return
        auth = self._auth(headers)
        if auth is None:
            await self._error(send, "", False, 401,
                              "Access denied due to invalid subscription key or wrong API endpoint.")
            return
        self.auth_kinds.add(auth)
        deployment = ""
        try:
            body = json_body(headers, raw)
            deployment = str(body.get("model") or "")
            if deployment and deployment not in self.deployments:
                await self._error(send, deployment, False, 404, MISSING_DEPLOYMENT)
                return
            azure_responses.check_request(body)
            if body.get("previous_response_id") is not None:
                raise Invalid(f"Previous response with id '{body['previous_response_id']}' not found.",
                              param="previous_response_id", code="previous_response_not_found")
        except Invalid as invalid:
            self._record(deployment, False, 400)
            await send_bytes(send, 400, invalid.body())
            return
        stream = body.get("stream") is True
        self.responses_calls += 1
        if body.get("store") is not False:
            self.stored += 1
        failure = self._failure()
        self._record(deployment, stream, failure or 200)
        await self.pause()
        if failure is not None:
            await self._error(send, deployment, stream, failure, f"fake failure {failure}", record=False)
            return
        if not stream:
            await send_bytes(send, 200, azure_responses.complete(deployment, body))
        elif await azure_responses.stream(self, send, deployment, body):
            self.streams_finished += 1

    async def _issue_token(self, scope: Scope, send: Any) -> None:
        """App Service managed identity: GET ?api-version=2019-08-01&resource=... with X-IDENTITY-HEADER.
        A token only for the Azure OpenAI resource: one asked for another is refused as Entra ID
        refuses a resource it does not know for this app (AADSTS500011)."""
        if dict(scope["headers"]).get(b"x-identity-header", b"").decode() != self.identity_header:
            await send_bytes(send, 401, b'{"error": "bad identity header"}')
            return
        query = parse_qs(scope.get("query_string", b"").decode())
        resource = (query.get("resource") or [""])[0]
        if resource.rstrip("/") != ENTRA_RESOURCE:
            body = {
                "error": "invalid_resource",
                "error_description": f"AADSTS500011: The resource principal named {resource} was not found "
                f"in the tenant named {TENANT}. This can happen if the application has not been installed "
                "by the administrator of the tenant or consented to by any user in the tenant.",
            }
            await send_bytes(send, 400, orjson.dumps(body))
            return
        token = f"fake-entra-token-{len(self.tokens)}"
        self.tokens.add(token)
        body = {
            "access_token": token,
            "expires_on": str(int(time.time()) + self.token_lifetime),
            "resource": ENTRA_RESOURCE,
            "token_type": "Bearer",
        }
        await send_bytes(send, 200, orjson.dumps(body))

    def _auth(self, headers: dict[bytes, bytes]) -> str | None:
        key = headers.get(b"api-key")
        if key is not None:
            return "api-key" if key.decode() == self.api_key else None
        bearer = headers.get(b"authorization", b"").decode()
        if bearer.startswith("Bearer ") and bearer[7:] in self.tokens:
            return "bearer"
        return None

    async def _embeddings(self, send: Any, deployment: str, body: dict[str, Any]) -> None:
        """Deterministic unit vectors of each input (SHA-256 expanded), as floats or base64 float32."""
        items = body.get("input")
        items = [items] if isinstance(items, str) or (items and isinstance(items[0], int)) else items
        if not isinstance(items, list) or not items:
            raise Invalid("'input' is a required property")
        dims = body.get("dimensions") or EMBEDDING_DIMENSIONS
        failure = self._failure()
        self._record(deployment, False, failure or 200)
        if failure is not None:
            await self._error(send, deployment, False, failure, f"fake failure {failure}", record=False)
            return
        data = []
        for i, item in enumerate(items):
            seed = item.encode() if isinstance(item, str) else orjson.dumps(item)
            raw = b"".join(hashlib.sha256(seed + n.to_bytes(4, "big")).digest() for n in range(dims // 8 + 1))
            vector = [b / 127.5 - 1.0 for b in raw[:dims]]
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            vector = [v / norm for v in vector]
            out: Any = vector
            if body.get("encoding_format") == "base64":
                out = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": out})
        tokens = sum(count_tokens(t) if isinstance(t, str) else len(t) for t in items)
        answer = {"object": "list", "data": data, "model": deployment,
                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        await send_bytes(send, 200, orjson.dumps(answer))

    async def _error(
        self, send: Any, deployment: str, stream: bool, status: int, message: str, record: bool = True,
        code: str | None = None,
    ) -> None:
        if record:
            self._record(deployment, stream, status)
        extra = [(b"retry-after", b"1")] if status == 429 else []
        wait = self.behaviour.retry_after_ms
        if wait is not None and status in (429, 503):
            extra = [(b"retry-after", str(math.ceil(wait / 1000)).encode()),
                     (b"retry-after-ms", str(wait).encode()), (b"x-ms-retry-after-ms", str(wait).encode())]
        code = code or self.behaviour.fail_code
        await send_bytes(send, status, azure_error(status, message, code), headers=extra)

    async def _stream(
        self, send: Any, deployment: str, text: str, usage: dict[str, int], with_usage: bool
    ) -> None:
        created = int(time.time())
        base = {
            "id": f"chatcmpl-fake-{created}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": deployment,
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            c: dict[str, Any] = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if with_usage:
                c["usage"] = None
            return b"data: " + orjson.dumps(c) + b"\n\n"

        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
            }
        )

        async def emit(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        await emit(chunk({"role": "assistant", "content": ""}))
        if self.behaviour.fail_before_content:
            error = {"error": {"code": "InternalServerError", "message": "fake failure before content"}}
            await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(error) + b"\n\n"})
            return
        for i, piece in enumerate(words(text)):
            if self.behaviour.chunk_delay:
                await asyncio.sleep(self.behaviour.chunk_delay)
            await emit(chunk({"content": piece}))
            if i == 0 and self.behaviour.stall:
                await asyncio.sleep(self.behaviour.stall)
            if i == 0 and self.behaviour.fail_mid_stream:
                error = {"error": {"code": "InternalServerError", "message": "fake failure mid-stream"}}
                await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(error) + b"\n\n"})
                return
        await emit(chunk({}, "stop"))
        if with_usage:
            await emit(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
        if self.behaviour.drop_terminator:
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        self.streams_finished += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="test-azure-key")
    parser.add_argument("--deployment", action="append", required=True, help="one that exists (repeatable)")
    parser.add_argument("--api-version", action="append", help=f"one served (repeatable; default "
                        f"{DEFAULT_API_VERSION})")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    fake = FakeAzureOpenAI(api_key=args.api_key, deployments=args.deployment,
                           api_versions=args.api_version or (DEFAULT_API_VERSION,), port=args.port or None)
    fake.slow(args.delay_ms / 1000.0)
    serve_forever(fake)


if __name__ == "__main__":
    main()
