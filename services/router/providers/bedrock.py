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
import os
import threading
from collections.abc import AsyncGenerator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import Field

from services.common.config import Model, Pool, Timeouts
from services.router.providers.base import (
    ChunkWriter,
    Completion,
    ProviderError,
    StreamItem,
    Usage,
    completion_body,
    max_tokens,
    message_text,
    new_completion_id,
    stop_sequences,
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


def _text_blocks(content: Any) -> list[dict[str, str]]:
    """Converse content blocks of an OpenAI message content (string or parts); text only, and no
    blank text (Converse refuses a block that is empty or only whitespace)."""
    if isinstance(content, list):
        blocks = []
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") != "text":
                raise ProviderError(
                    FailureKind.CLIENT,
                    f"content part type {part.get('type')!r} is not supported by awsBedrock models",
                )
            if str(part.get("text") or "").strip():
                blocks.append({"text": str(part["text"])})
        return blocks
    text = message_text(content)
    return [{"text": text}] if text.strip() else []


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
    user first); tool results are passed as user text; messages without text are left out.
    """
    system: list[dict[str, str]] = []
    messages: list[dict[str, Any]] = []
    for m in body.get("messages") or []:
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        blocks = _text_blocks(m.get("content"))
        if role in ("system", "developer"):
            system.extend(blocks)
            continue
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
    return request


# --- Converse -> OpenAI ----------------------------------------------------------------------


def _usage(usage: Any) -> Usage:
    usage = usage if isinstance(usage, dict) else {}
    return Usage(int(usage.get("inputTokens") or 0), int(usage.get("outputTokens") or 0))


def from_converse(response: dict[str, Any], model: str) -> Completion:
    content = (((response.get("output") or {}).get("message") or {}).get("content")) or []
    text = "".join(str(block.get("text", "")) for block in content if isinstance(block, dict))
    usage = _usage(response.get("usage"))
    finish = FINISH_REASONS.get(str(response.get("stopReason")), "stop")
    return Completion(
        completion_body(id=new_completion_id(), model=model, text=text, finish_reason=finish, usage=usage),
        usage,
    )


def stream_items(events: Iterator[dict[str, Any]], out: ChunkWriter) -> Iterator[StreamItem]:
    """OpenAI chunks for ConverseStream events, then the usage (from the `metadata` event)."""
    usage = Usage(0, 0)
    stopped = False
    for event in events:
        if "messageStart" in event:
            yield out.role()
        elif "contentBlockDelta" in event:
            text = (event["contentBlockDelta"].get("delta") or {}).get("text")
            if text:
                yield out.content(text)
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
