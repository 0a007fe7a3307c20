"""AWS Bedrock through boto3's `bedrock-runtime` Converse and ConverseStream APIs.

boto3 blocks, so every call runs in a worker thread of this provider's own pool (sized like the
connection pool, so the loop's default executor is never the bottleneck). A stream is pumped by a
thread that pushes each event through an asyncio queue as it arrives: chunks reach the client
while the model is still writing.

One boto3 client, created once, with a botocore Config for the pool size and connect/read
timeouts, and botocore's own retries off (the router retries). Region and credentials come from
the standard AWS environment (`AWS_REGION`, `AWS_ACCESS_KEY_ID`, ...; `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`
points it elsewhere, which the tests use).

The translation OpenAI <-> Converse lives in plain functions (`to_converse`, `from_converse`,
`stream_items`) so it is tested without any network.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import re
import threading
from collections.abc import AsyncGenerator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from pydantic import Field

from services.common.config import Model, Pool, Timeouts
from services.router.providers.base import (
    ChunkWriter,
    Completion,
    ProviderError,
    StreamItem,
    Usage,
    completion_body,
    embedding_body,
    max_tokens,
    message_text,
    new_completion_id,
    stop_sequences,
    text_inputs,
    tool_call,
    wants_usage,
)
from services.router.providers.spec import Credential, ProviderConfig, ProviderSpec
from services.router.retry import FailureKind, kind_for_status

# Converse stopReason -> OpenAI finish_reason
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "content_filtered": "content_filter",
    "guardrail_intervened": "content_filter",
}

# Bedrock error codes whose meaning is clearer than their HTTP status
ERROR_KINDS = {
    "ThrottlingException": FailureKind.RATE_LIMITED,
    "ServiceQuotaExceededException": FailureKind.RATE_LIMITED,
    "ModelNotReadyException": FailureKind.SERVER,
    "ModelTimeoutException": FailureKind.TIMEOUT,
    "ModelErrorException": FailureKind.SERVER,
    "ModelStreamErrorException": FailureKind.SERVER,
    "InternalServerException": FailureKind.SERVER,
    "ServiceUnavailableException": FailureKind.SERVER,
    "ValidationException": FailureKind.CLIENT,
    "AccessDeniedException": FailureKind.DEPLOYMENT,
    "ResourceNotFoundException": FailureKind.DEPLOYMENT,
    "UnrecognizedClientException": FailureKind.DEPLOYMENT,
}


# --- OpenAI -> Converse ----------------------------------------------------------------------


TITAN_DIMENSIONS = (256, 512, 1024)
COHERE_BATCH = 96  # Cohere Embed's limit of texts per call

# image_url data URLs Converse takes: data:image/<format>;base64,<bytes>
_DATA_URL = re.compile(r"^data:image/(png|jpeg|jpg|gif|webp);base64,(.+)$", re.S)


def _refuse(message: str) -> ProviderError:
    return ProviderError(FailureKind.CLIENT, message, status=400)


def _image_block(part: dict[str, Any]) -> dict[str, Any]:
    """An `image_url` part as a Converse image block; only data URLs (QLens never fetches a URL
    on a client's behalf)."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise _refuse("an image_url part needs image_url.url")
    if url.startswith(("http://", "https://")):
        raise _refuse("image URLs are not fetched for awsBedrock models: send the image as a data URL "
                      "(data:image/png;base64,...)")
    m = _DATA_URL.match(url)
    if m is None:
        raise _refuse("an image for awsBedrock models must be a base64 data URL of a png, jpeg, gif or webp")
    try:
        data = base64.b64decode(m.group(2), validate=True)
    except (binascii.Error, ValueError):
        raise _refuse("the image data URL is not valid base64") from None
    fmt = "jpeg" if m.group(1) == "jpg" else m.group(1)
    return {"image": {"format": fmt, "source": {"bytes": data}}}


def _content_blocks(content: Any) -> list[dict[str, Any]]:
    """Converse content blocks of an OpenAI message content (string or parts): text and images,
    and no blank text (Converse refuses a block that is empty or only whitespace)."""
    if isinstance(content, list):
        blocks: list[dict[str, Any]] = []
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "image_url":
                blocks.append(_image_block(part))
            elif part.get("type") != "text":
                raise _refuse(f"content part type {part.get('type')!r} is not supported by awsBedrock models")
            elif str(part.get("text") or "").strip():
                blocks.append({"text": str(part["text"])})
        return blocks
    text = message_text(content)
    return [{"text": text}] if text.strip() else []


def _tool_use_blocks(calls: Any) -> list[dict[str, Any]]:
    """An assistant's `tool_calls` as Converse toolUse blocks (arguments parsed: Converse wants JSON)."""
    blocks = []
    for call in calls if isinstance(calls, list) else ():
        fn = call.get("function") or {} if isinstance(call, dict) else {}
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            raise _refuse(f"tool call {call.get('id')!r} has arguments that are not JSON") from None
        blocks.append({"toolUse": {"toolUseId": str(call.get("id")), "name": str(fn.get("name")),
                                   "input": args}})
    return blocks


def _tool_config(body: dict[str, Any]) -> dict[str, Any] | None:
    """OpenAI `tools` / `tool_choice` as Converse's toolConfig (None: no tools, or tool_choice none)."""
    tools = [t.get("function") for t in body.get("tools") or () if isinstance(t, dict)]
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none":
        return None
    specs = []
    for fn in tools:
        if not isinstance(fn, dict) or not fn.get("name"):
            raise _refuse("each tool needs a function name")
        schema = fn.get("parameters") or {"type": "object", "properties": {}}
        spec: dict[str, Any] = {"name": fn["name"], "inputSchema": {"json": schema}}
        if fn.get("description"):
            spec["description"] = fn["description"]
        specs.append({"toolSpec": spec})
    config: dict[str, Any] = {"tools": specs}
    if choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict):
        config["toolChoice"] = {"tool": {"name": str((choice.get("function") or {}).get("name"))}}
    elif choice == "auto":
        config["toolChoice"] = {"auto": {}}
    return config


# Before a conversation that opens with the assistant (a greeting the client shows, a history cut
# to its last turns), Converse wants a user turn: "A conversation must start with a user message".
# We put this placeholder there rather than fold the assistant's words into the system prompt
# (they would become instructions) or into the next user turn (the user would seem to have said
# them) or drop them (the model would lose what it said): every turn keeps its speaker, for a few
# tokens. Not blank: Converse refuses blank text blocks too.
LEADING_USER_TURN = "(conversation start)"


def to_converse(model_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `converse`/`converse_stream` for an OpenAI request body.

    System (and developer) messages become `system` blocks; user and assistant messages keep
    their order, with consecutive messages of one role merged (Converse wants the roles to
    alternate) and a placeholder user turn before a leading assistant turn (Converse wants the
    user first); messages without content are left out. Images (data URLs) become image blocks,
    an assistant's `tool_calls` toolUse blocks, and `tool` messages toolResult blocks of one user
    turn; `tools`/`tool_choice` become `toolConfig`. `response_format` other than text is refused:
    Converse has no JSON mode.
    """
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        raise _refuse(f"response_format {fmt.get('type')!r} is not supported by awsBedrock models")
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for m in body.get("messages") or []:
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        if role == "tool":
            result = message_text(m.get("content")) or "(empty)"
            answer = {"toolUseId": str(m.get("tool_call_id")), "content": [{"text": result}]}
            blocks: list[dict[str, Any]] = [{"toolResult": answer}]
        else:
            blocks = _content_blocks(m.get("content"))
        if role in ("system", "developer"):
            system.extend(b for b in blocks if "text" in b)
            continue
        if role == "assistant":
            blocks += _tool_use_blocks(m.get("tool_calls"))
        role = "assistant" if role == "assistant" else "user"
        if not blocks:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    if not messages:
        raise ProviderError(FailureKind.CLIENT, "the request has no user or assistant message with text")
    if messages[0]["role"] == "assistant":
        messages.insert(0, {"role": "user", "content": [{"text": LEADING_USER_TURN}]})
    request: dict[str, Any] = {"modelId": model_id, "messages": messages}
    if system:
        request["system"] = system
    inference: dict[str, Any] = {}
    if (limit := max_tokens(body)) is not None:
        inference["maxTokens"] = limit
    if isinstance(body.get("temperature"), int | float):
        inference["temperature"] = float(body["temperature"])
    if isinstance(body.get("top_p"), int | float):
        inference["topP"] = float(body["top_p"])
    if stops := stop_sequences(body):
        inference["stopSequences"] = stops
    if inference:
        request["inferenceConfig"] = inference
    if (tools := _tool_config(body)) is not None:
        request["toolConfig"] = tools
    return request


# --- Converse -> OpenAI ----------------------------------------------------------------------


def _usage(usage: Any) -> Usage:
    usage = usage if isinstance(usage, dict) else {}
    return Usage(int(usage.get("inputTokens") or 0), int(usage.get("outputTokens") or 0))


def from_converse(response: dict[str, Any], model: str) -> Completion:
    content = (((response.get("output") or {}).get("message") or {}).get("content")) or []
    text = "".join(str(block.get("text", "")) for block in content if isinstance(block, dict))
    calls = [
        tool_call(str(use.get("toolUseId")), str(use.get("name")),
                  orjson.dumps(use.get("input", {})).decode())
        for block in content
        if isinstance(block, dict) and isinstance(use := block.get("toolUse"), dict)
    ]
    usage = _usage(response.get("usage"))
    finish = FINISH_REASONS.get(str(response.get("stopReason")), "stop")
    return Completion(
        completion_body(id=new_completion_id(), model=model, text=text, finish_reason=finish, usage=usage,
                        tool_calls=calls),
        usage,
    )


def stream_items(events: Iterator[dict[str, Any]], out: ChunkWriter) -> Iterator[StreamItem]:
    """OpenAI chunks for ConverseStream events, then the usage (from the `metadata` event)."""
    usage = Usage(0, 0)
    stopped = False
    tools: dict[int, int] = {}  # content block index -> OpenAI tool-call index
    for event in events:
        if "messageStart" in event:
            yield out.role()
        elif "contentBlockStart" in event:
            start = event["contentBlockStart"]
            use = (start.get("start") or {}).get("toolUse")
            if isinstance(use, dict):
                index = tools[int(start.get("contentBlockIndex", 0))] = len(tools)
                yield out.tool_call(index, "", id=str(use.get("toolUseId")), name=str(use.get("name")))
        elif "contentBlockDelta" in event:
            block = event["contentBlockDelta"]
            delta = block.get("delta") or {}
            if delta.get("text"):
                yield out.content(delta["text"])
            elif isinstance(delta.get("toolUse"), dict) and delta["toolUse"].get("input"):
                index = tools.get(int(block.get("contentBlockIndex", 0)), 0)
                yield out.tool_call(index, str(delta["toolUse"]["input"]))
        elif "messageStop" in event:
            stopped = True
            yield out.finish(FINISH_REASONS.get(str(event["messageStop"].get("stopReason")), "stop"))
        elif "metadata" in event:
            usage = _usage(event["metadata"].get("usage"))
    if not stopped:  # cut off: what was relayed is not the whole answer
        raise ProviderError(FailureKind.SERVER, "Bedrock ended the stream without messageStop")
    if out.include_usage:
        yield out.usage(usage)
    yield usage


def provider_error(exc: BaseException) -> ProviderError:
    """The ProviderError for anything boto3 raises."""
    from botocore import exceptions as bx

    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, bx.ClientError):  # EventStreamError (a failure inside a stream) is one too
        error = exc.response.get("Error") or {}
        code = str(error.get("Code") or "")
        code = code[:1].upper() + code[1:]  # in-stream exceptions are named like `throttlingException`
        status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        kind = ERROR_KINDS.get(code) or kind_for_status(int(status or 500))
        message = str(error.get("Message") or code or "error")
        # Bedrock says a prompt is too long for the model in a ValidationException's message
        too_long = kind is FailureKind.CLIENT and "too long" in message.lower()
        return ProviderError(kind, f"Bedrock returned {code or status}: {message}", status,
                             reason="context_window" if too_long else None)
    if isinstance(exc, bx.ReadTimeoutError | bx.ConnectTimeoutError):
        return ProviderError(FailureKind.TIMEOUT, "Bedrock timed out")
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return ProviderError(FailureKind.DEPLOYMENT, "no AWS credentials for Bedrock")
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectionError | bx.HTTPClientError):
        return ProviderError(FailureKind.CONNECT, "could not reach Bedrock")
    return ProviderError(FailureKind.SERVER, f"Bedrock call failed: {type(exc).__name__}")


# --- the provider ------------------------------------------------------------------------------

_END = object()


class BedrockProvider:
    name = "awsBedrock"
    gen_ai_system = "aws.bedrock"  # OpenTelemetry GenAI semantic conventions
    deterministic = False

    def __init__(self, config: BedrockConfig) -> None:
        import boto3
        from botocore.config import Config

        self.timeouts = config.timeouts
        # `AWS_PROFILE=` (as `export AWS_PROFILE=` or an env file leaves it) means no profile, but
        # botocore reads it as a profile named "" and fails with ProfileNotFound: treat it as unset
        if os.environ.get("AWS_PROFILE") == "":
            del os.environ["AWS_PROFILE"]
        self.client = boto3.session.Session().client(
            "bedrock-runtime",
            region_name=os.environ.get("AWS_REGION") or config.region,
            config=Config(
                connect_timeout=config.timeouts.connect,
                read_timeout=config.timeouts.read,
                max_pool_connections=config.pool.max_connections,
                retries={"total_max_attempts": 1, "mode": "standard"},
            ),
        )
        self._threads = ThreadPoolExecutor(
            max_workers=config.pool.max_connections, thread_name_prefix="bedrock"
        )

    async def complete(self, target: str, body: dict[str, Any]) -> Completion:
        request = to_converse(target, body)
        loop = asyncio.get_running_loop()
        try:
            response = await loop.run_in_executor(self._threads, lambda: self.client.converse(**request))
        except Exception as exc:
            raise provider_error(exc) from None
        return from_converse(response, str(body.get("model") or target))

    async def embed(self, target: str, body: dict[str, Any]) -> Completion:
        """Embedding models through InvokeModel: Titan Text Embeddings v2 takes one text per call
        (`dimensions` 256, 512 or 1024); Cohere Embed takes up to 96 texts per call and no
        `dimensions`. Token arrays are refused: these models take text."""
        texts = text_inputs(body, "awsBedrock")
        dims = body.get("dimensions")
        if target.startswith("amazon.titan-embed-text-v2"):
            if dims is not None and dims not in TITAN_DIMENSIONS:
                allowed = ", ".join(map(str, TITAN_DIMENSIONS))
                raise _refuse(f"dimensions must be one of {allowed} for {target}")
            extra = {"dimensions": dims} if dims else {}
            calls = [{"inputText": t, "normalize": True, **extra} for t in texts]
        elif target.startswith("cohere.embed"):
            if dims is not None:
                raise _refuse(f"dimensions is not supported by {target}")
            calls = [{"texts": texts[i:i + COHERE_BATCH], "input_type": "search_document"}
                     for i in range(0, len(texts), COHERE_BATCH)]
        else:
            raise ProviderError(FailureKind.DEPLOYMENT, f"{target} is not an embedding model QLens can call "
                                                        "(Titan Text Embeddings v2, Cohere Embed)")
        loop = asyncio.get_running_loop()
        vectors: list[list[float]] = []
        tokens = 0
        for call in calls:
            def invoke(call: dict[str, Any] = call) -> tuple[dict[str, Any], dict[str, Any]]:
                response = self.client.invoke_model(modelId=target, body=orjson.dumps(call),
                                                    contentType="application/json", accept="application/json")
                return orjson.loads(response["body"].read()), response["ResponseMetadata"]["HTTPHeaders"]
            try:
                answer, headers = await loop.run_in_executor(self._threads, invoke)
            except Exception as exc:
                raise provider_error(exc) from None
            if "embedding" in answer:  # Titan
                vectors.append(answer["embedding"])
                tokens += int(answer.get("inputTextTokenCount") or 0)
            else:  # Cohere: the count comes in a header
                vectors.extend(answer.get("embeddings") or [])
                tokens += int(headers.get("x-amzn-bedrock-input-token-count") or 0)
        model = str(body.get("model") or target)
        answer_bytes = embedding_body(vectors, model, tokens, body.get("encoding_format"))
        return Completion(answer_bytes, Usage(tokens, 0))

    async def stream(self, target: str, body: dict[str, Any]) -> AsyncGenerator[StreamItem, None]:
        request = to_converse(target, body)
        out = ChunkWriter(str(body.get("model") or target), wants_usage(body))
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone (shutdown): nobody is listening
                stop.set()

        def pump() -> None:
            events = None
            try:
                events = self.client.converse_stream(**request)["stream"]
                for item in stream_items(iter(events), out):
                    if stop.is_set():
                        break
                    put(item)
            except Exception as exc:
                put(provider_error(exc))
            finally:
                if events is not None:
                    events.close()
                put(_END)

        loop.run_in_executor(self._threads, pump)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, ProviderError):
                    raise item
                yield item
        finally:
            stop.set()  # the client went away or the stream ended: the pump stops at the next event

    async def aclose(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        self.client.close()


# --- the registry entry --------------------------------------------------------------------------


class BedrockModel(Model):
    id: str = Field(description="the name deployments use as their target, e.g. claude-3-sonnet")
    model_id: str = Field(description="the Bedrock model id, e.g. anthropic.claude-3-sonnet-20240229-v1:0")
    name: str = ""


class BedrockConfig(ProviderConfig):
    """`providers.awsBedrock`: true, false, or "auto" (on when AWS_ACCESS_KEY_ID or AWS_PROFILE is set)."""

    region: str = Field("us-east-1", description="used when AWS_REGION is not set")
    models: list[BedrockModel] = Field(default_factory=list)
    timeouts: Timeouts = Timeouts()
    pool: Pool = Pool()


def create(config: BedrockConfig, env: Mapping[str, str]) -> BedrockProvider:
    return BedrockProvider(config)  # boto3 reads its credentials from the process environment


def resolve_target(config: BedrockConfig, target: str) -> str:
    """An `id` of `models` names its Bedrock model id; anything else is the model id itself."""
    return next((m.model_id for m in config.models if m.id == target), target)


PROVIDER = ProviderSpec(
    name="awsBedrock",
    config=BedrockConfig,
    create=create,
    credentials=(
        Credential("AWS_REGION", "aws-region"),
        Credential("AWS_ACCESS_KEY_ID", "aws-access-key-id"),
        Credential("AWS_SECRET_ACCESS_KEY", "aws-secret-access-key"),
    ),
    detect=("AWS_ACCESS_KEY_ID", "AWS_PROFILE"),
    resolve_target=resolve_target,
)
