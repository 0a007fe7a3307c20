"""A local stand-in for the Bedrock runtime, speaking its wire protocol so real boto3 runs end to end.

    POST /model/{modelId}/converse          JSON in, JSON out (Converse)
    POST /model/{modelId}/converse-stream   JSON in, AWS event stream out (ConverseStream)

Requests must be SigV4-signed by the configured access key (boto3 does it with any dummy
credentials; the signature itself is not checked). Errors are what botocore parses for rest-json:
the status, an `x-amzn-ErrorType` header and `{"message": ...}`. Streams are
`application/vnd.amazon.eventstream` frames (prelude with total and header lengths and its CRC32,
string headers `:message-type`, `:event-type`, `:content-type`, the JSON payload, the message
CRC32), one per event: messageStart, contentBlockDelta..., contentBlockStop, messageStop,
metadata (usage). A failure inside a stream is an `exception` frame, as Bedrock sends it.
The answer names the model and repeats the last user message. Misbehaviour: see `_common.py`.

    python -m tests.fakes.bedrock --port 9200
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import struct
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
        models: tuple[str, ...] | None = None,
        port: int | None = None,
        seed: int = 0,
    ) -> None:
        """`models`: the only model ids that exist (None: any)."""
        super().__init__(port, seed)
        self.access_key = access_key
        self.models = set(models) if models is not None else None
        self.last_request: dict[str, Any] | None = None  # the last Converse body, to check translation

    def client_env(self, secret_key: str = "dummy") -> dict[str, str]:
        """The router's environment for calling this server through boto3 (any secret key signs:
        only the access key is checked)."""
        return {"AWS_ENDPOINT_URL_BEDROCK_RUNTIME": self.url, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": secret_key, "AWS_REGION": "us-east-1"}

    async def handle(self, scope: Scope, receive: Any, send: Any) -> None:
        parts = scope.get("raw_path", scope["path"].encode()).decode().split("?")[0].split("/")
        # ["", "model", "<modelId>", "converse" | "converse-stream"]
        if (
            scope["method"] != "POST"
            or len(parts) != 4
            or parts[1] != "model"
            or parts[3] not in ("converse", "converse-stream")
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
        authorization = dict(scope["headers"]).get(b"authorization", b"").decode()
        if not authorization.startswith(f"AWS4-HMAC-SHA256 Credential={self.access_key}/"):
            await self._error(
                send,
                model_id,
                stream,
                403,
                "The security token included in the request is invalid.",
                "UnrecognizedClientException",
            )
            return
        if self.models is not None and model_id not in self.models:
            await self._error(send, model_id, stream, 404, f"Model {model_id} not found")
            return
        try:
            body = orjson.loads(raw)
            messages = body["messages"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            await self._error(send, model_id, stream, 400, "messages is required")
            return
        self.last_request = body
        failure = self._failure()
        self._record(model_id, stream, failure or 200)  # on arrival: a client that gives up is still seen
        await self.pause()
        if failure is not None:
            await self._error(send, model_id, stream, failure, f"fake failure {failure}", record=False)
            return
        text = f"[{model_id}] {last_user_text(messages)}"
        limit = (body.get("inferenceConfig") or {}).get("maxTokens")
        stop = "end_turn"
        if isinstance(limit, int) and count_tokens(text) > limit:
            text, stop = text[: limit * 4], "max_tokens"
        prompt = " ".join(str(b.get("text", "")) for m in messages for b in m.get("content", []))
        prompt += " ".join(str(b.get("text", "")) for b in body.get("system", []))
        usage = {"inputTokens": count_tokens(prompt), "outputTokens": count_tokens(text)}
        usage["totalTokens"] = usage["inputTokens"] + usage["outputTokens"]
        if stream:
            await self._stream(send, text, stop, usage)
            return
        answer = {
            "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
            "stopReason": stop,
            "usage": usage,
            "metrics": {"latencyMs": 1},
        }
        await send_bytes(send, 200, orjson.dumps(answer), headers=[(b"x-amzn-requestid", b"fake-request")])

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

    async def _stream(self, send: Any, text: str, stop: str, usage: dict[str, int]) -> None:
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
        for i, piece in enumerate(words(text)):
            if self.behaviour.chunk_delay:
                await asyncio.sleep(self.behaviour.chunk_delay)
            await emit(event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}}))
            if i == 0 and self.behaviour.fail_mid_stream:
                await send(
                    {
                        "type": "http.response.body",
                        "body": exception_frame("internalServerException", "fake failure mid-stream"),
                    }
                )
                return
        await emit(event_frame("contentBlockStop", {"contentBlockIndex": 0}))
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
    args = parser.parse_args()
    serve_forever(FakeBedrock(access_key=args.access_key, port=args.port or None))


if __name__ == "__main__":
    main()
