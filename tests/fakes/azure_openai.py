"""A local stand-in for Azure OpenAI, speaking its REST API so the real `openai` SDK runs end to end.

    POST /openai/deployments/{deployment}/chat/completions?api-version=2024-06-01
    api-key: <key>            (or Authorization: Bearer <Entra ID token>)

Entra ID: `GET /msi/token` is an App Service managed-identity endpoint (point `IDENTITY_ENDPOINT`
there, `IDENTITY_HEADER` = `fake.identity_header`), so azure-identity's DefaultAzureCredential
obtains a token that this fake then accepts as `Authorization: Bearer`.

JSON answers and `stream: true` server-sent events (`chat.completion.chunk`s, a usage chunk when
`stream_options.include_usage` is set, then `data: [DONE]`), with Azure's error bodies
(`{"error": {"code", "message"}}`) for 400/401/404/429/5xx. The answer names the deployment and
repeats the last user message: `[gpt-4] hello`. Misbehaviour on demand: see `_common.py`.

    python -m tests.fakes.azure_openai --port 9100 --api-key test-key [--delay-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from typing import Any

import orjson

from tests.fakes._common import (
    FakeServer,
    Scope,
    count_tokens,
    last_user_text,
    prompt_text,
    read_body,
    send_bytes,
    serve_forever,
    words,
)

PATH = re.compile(r"^/openai/deployments/([^/]+)/chat/completions$")

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


def azure_error(status: int, message: str) -> bytes:
    return orjson.dumps({"error": {"code": ERROR_CODES.get(status, str(status)), "message": message}})


class FakeAzureOpenAI(FakeServer):
    name = "fake-azure-openai"

    def __init__(
        self,
        api_key: str = "test-azure-key",
        tokens: tuple[str, ...] = (),
        deployments: tuple[str, ...] | None = None,
        port: int | None = None,
        seed: int = 0,
    ) -> None:
        """`tokens`: Entra ID bearer tokens accepted; `deployments`: the only ones that exist (None: any)."""
        super().__init__(port, seed)
        self.api_key = api_key
        self.tokens = set(tokens)
        self.deployments = set(deployments) if deployments is not None else None
        self.identity_header = "fake-identity-header"
        self.auth_kinds: set[str] = set()  # "api-key" and/or "bearer": how requests were authorized

    def client_env(self) -> dict[str, str]:
        """The router's environment for calling this server with its API key."""
        return {"AZURE_OPENAI_ENDPOINT": self.url, "AZURE_OPENAI_API_KEY": self.api_key}

    async def handle(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["path"] == "/msi/token":
            await self._issue_token(scope, send)
            return
        match = PATH.match(scope["path"])
        if scope["method"] != "POST" or match is None:
            await send_bytes(send, 404, azure_error(404, "Resource not found"))
            return
        deployment = match.group(1)
        raw = await read_body(receive)
        headers = dict(scope["headers"])
        if b"api-version=" not in scope.get("query_string", b""):
            await self._error(send, deployment, False, 404, "Resource not found (missing api-version)")
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
        if self.deployments is not None and deployment not in self.deployments:
            await self._error(
                send, deployment, False, 404, "The API deployment for this resource does not exist."
            )
            return
        try:
            body = orjson.loads(raw)
            messages = body["messages"]
            if not isinstance(messages, list) or not messages:
                raise ValueError
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            await self._error(send, deployment, False, 400, "'messages' is a required property")
            return
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

    async def _issue_token(self, scope: Scope, send: Any) -> None:
        """App Service managed identity: GET ?api-version=2019-08-01&resource=... with X-IDENTITY-HEADER."""
        if dict(scope["headers"]).get(b"x-identity-header", b"").decode() != self.identity_header:
            await send_bytes(send, 401, b'{"error": "bad identity header"}')
            return
        token = f"fake-entra-token-{len(self.tokens)}"
        self.tokens.add(token)
        resource = "https://cognitiveservices.azure.com"
        body = {
            "access_token": token,
            "expires_on": str(int(time.time()) + 3600),
            "resource": resource,
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

    async def _error(
        self, send: Any, deployment: str, stream: bool, status: int, message: str, record: bool = True
    ) -> None:
        if record:
            self._record(deployment, stream, status)
        extra = [(b"retry-after", b"1")] if status == 429 else []
        await send_bytes(send, status, azure_error(status, message), headers=extra)

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
        for i, piece in enumerate(words(text)):
            if self.behaviour.chunk_delay:
                await asyncio.sleep(self.behaviour.chunk_delay)
            await emit(chunk({"content": piece}))
            if i == 0 and self.behaviour.fail_mid_stream:
                error = {"error": {"code": "InternalServerError", "message": "fake failure mid-stream"}}
                await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(error) + b"\n\n"})
                return
        await emit(chunk({}, "stop"))
        if with_usage:
            await emit(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        self.streams_finished += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="test-azure-key")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    fake = FakeAzureOpenAI(api_key=args.api_key, port=args.port or None)
    fake.slow(args.delay_ms / 1000.0)
    serve_forever(fake)


if __name__ == "__main__":
    main()
