"""Azure OpenAI over its REST API, with the pooled keep-alive client (services/common/http11.py).

Why not the `openai` SDK on this path: the body already is OpenAI JSON and the answer is forwarded
as Azure's bytes, so the SDK's work per call (options models, request building, its HTTP stack)
was about 60-76% of the router's CPU (profiles in bench/README.md) for nothing it added. The wire
format stays the SDK's: tests/unit/test_azure_wire_contract.py sends the same requests through
`AsyncAzureOpenAI` and through this module to the strict stand-in and compares what arrived.

- Chat: `POST /openai/deployments/{deployment}/chat/completions?api-version=...`; embeddings the
  same with `/embeddings`; a deployment configured with `api: responses` goes to Azure's Responses
  API, `POST /openai/v1/responses` (azure_responses.py translates to and fro).
- One pool per endpoint (size, keep-alive and connect/read timeouts from the provider config), and
  no retries of its own: retrying is the router's job, it knows the deadline and the other
  deployments.
- Credentials: `AZURE_OPENAI_ENDPOINT`, and `AZURE_OPENAI_API_KEY`; without a key, an Entra ID
  token from `azure-identity`'s DefaultAzureCredential (managed identity, workload identity, CLI),
  renewed in the background before it expires, so no request waits for a token but the first.

Answers are forwarded as the bytes Azure sent (no parse-and-reserialize round trip); only the
usage is read out of them. Streams always ask Azure for usage (it settles budgets and feeds the
token metrics) and drop that chunk again when the client did not ask for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Iterator, Mapping
from typing import Any, Literal
from urllib.parse import quote, urlencode

import orjson
from pydantic import Field, model_validator

from services.common.config import Model, Pool, Timeouts
from services.common.http11 import PeerError, PeerTimeout
from services.common.http11 import Pool as HTTPPool
from services.common.sse import SSESplitter
from services.router.providers import azure_responses
from services.router.providers.base import (
    Completion,
    ProviderError,
    StreamItem,
    Usage,
    retry_after_seconds,
    wants_usage,
)
from services.router.providers.spec import Credential, ProviderConfig, ProviderSpec
from services.router.retry import FailureKind, kind_for_status

CUT_OFF = "Azure OpenAI ended the stream without [DONE]"
ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
JSON_BODY = {"content-type": "application/json"}

log = logging.getLogger("qlens.router")


class AzureDeployment(Model):
    """A deployment entry that says more than its name: which of Azure's APIs serves it."""

    name: str = Field(min_length=1, description="the Azure deployment name")
    api: Literal["chat", "responses"] = Field(
        "chat", description="chat: /openai/deployments/{name}/chat/completions; responses: Azure's "
                            "Responses API (/openai/v1/responses), for models served best or only there")


class AzureConfig(ProviderConfig):
    """`providers.azureOpenAI`: true, false, or "auto" (on when AZURE_OPENAI_ENDPOINT is set)."""

    api_version: str = Field("2024-06-01", description="Azure OpenAI REST API version (chat, embeddings)")
    responses_api_version: str | None = Field(
        None, description="api-version sent to /openai/v1/responses; none by default (the v1 API needs "
                          "none), 'preview' to opt into preview features")
    deployments: dict[str, str | AzureDeployment] = Field(
        default_factory=dict, description="public name -> Azure deployment name, e.g. {gpt-4: gpt-4}, or "
                                          "{name, api} to serve it through the Responses API"
    )
    timeouts: Timeouts = Timeouts()
    pool: Pool = Field(Pool(), description="HTTP connection pool to Azure, per router pod")

    @model_validator(mode="after")
    def _one_api_per_deployment(self) -> AzureConfig:
        apis: dict[str, str] = {}
        for entry in self.deployments.values():
            name, api = (entry, "chat") if isinstance(entry, str) else (entry.name, entry.api)
            if apis.setdefault(name, api) != api:
                raise ValueError(f"Azure deployment {name!r} is listed with api chat and api responses: "
                                 "one deployment is served by one API")
        return self

    def responses_deployments(self) -> frozenset[str]:
        """The Azure deployment names served through the Responses API."""
        return frozenset(e.name for e in self.deployments.values()
                         if isinstance(e, AzureDeployment) and e.api == "responses")


class AzureOpenAIProvider:
    name = "azureOpenAI"
    gen_ai_system = "azure.ai.openai"  # OpenTelemetry GenAI semantic conventions
    deterministic = False

    def __init__(self, config: AzureConfig, endpoint: str, api_key: str | None = None) -> None:
        self.timeouts = t = config.timeouts
        self._pool = HTTPPool(endpoint, limit=config.pool.max_connections, connect_timeout=t.connect,
                              keepalive=config.pool.max_keepalive)
        self._token = None if api_key else EntraToken()
        self._headers: Mapping[str, str] = {**JSON_BODY, "api-key": api_key} if api_key else JSON_BODY
        self._query = "?" + urlencode({"api-version": config.api_version})
        self._paths: dict[str, str] = {}
        # deployments served by Azure's Responses API; the v1 API takes no dated api-version
        self._responses = config.responses_deployments()
        version = config.responses_api_version
        self._responses_path = "/openai/v1/responses" + ("?" + urlencode({"api-version": version})
                                                         if version else "")

    def _path(self, target: str, api: str = "chat/completions") -> str:
        """The deployment's path with its api-version, built once per deployment and API."""
        path = self._paths.get(target + api)
        if path is None:
            path = f"/openai/deployments/{quote(target, safe='')}/{api}{self._query}"
            self._paths[target + api] = path
        return path

    async def complete(self, target: str, body: dict[str, Any]) -> Completion:
        if target in self._responses:
            payload = orjson.dumps(azure_responses.responses_request(body, target))
            content, usage = azure_responses.completion(await self._post(self._responses_path, payload))
            return Completion(content, usage)
        content = await self._post(self._path(target), orjson.dumps({**body, "model": target}))
        try:
            found = _usage(orjson.loads(content).get("usage"))
        except (orjson.JSONDecodeError, AttributeError):
            raise ProviderError(FailureKind.DEPLOYMENT, "Azure OpenAI answered with malformed JSON") from None
        return Completion(content, found or Usage(0, 0))

    async def embed(self, target: str, body: dict[str, Any]) -> Completion:
        """An embedding deployment: the body as the client sent it, Azure's answer as its bytes
        (`encoding_format` and `dimensions` are Azure's to honour)."""
        content = await self._post(self._path(target, "embeddings"), orjson.dumps({**body, "model": target}))
        try:
            usage = orjson.loads(content).get("usage") or {}
            prompt = int(usage.get("prompt_tokens") or 0)
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            raise ProviderError(FailureKind.DEPLOYMENT, "Azure OpenAI answered with malformed JSON") from None
        return Completion(content, Usage(prompt, 0))

    async def stream(self, target: str, body: dict[str, Any]) -> AsyncGenerator[StreamItem, None]:
        client_wants_usage = wants_usage(body)
        if target in self._responses:
            path = self._responses_path
            payload = orjson.dumps(azure_responses.responses_request({**body, "stream": True}, target))
            events: _Events | azure_responses.ResponsesEvents = azure_responses.ResponsesEvents(
                client_wants_usage)
        else:
            path, events = self._path(target), _Events(client_wants_usage)
            stream_options = body.get("stream_options")
            if not isinstance(stream_options, dict):
                stream_options = {}
            payload = orjson.dumps({**body, "model": target, "stream": True,
                                    "stream_options": {**stream_options, "include_usage": True}})
        headers = self._headers if self._token is None else await self._token.headers()
        read = self.timeouts.read
        try:
            reply = await self._pool.stream("POST", path, payload, headers, timeout=read, read_timeout=read)
        except PeerError as exc:
            raise _unreachable(exc) from None
        try:
            if reply.status >= 300:
                raise _status_error(reply.status, await reply.read(), reply.headers)
            async for data in reply.chunks():
                for event in events.feed(data):
                    yield event
                if events.finished:
                    await reply.drain()  # the chunked terminator: then the connection is reused
                    break
            else:  # ended without [DONE]: a last event may lack its blank line
                for event in events.feed(b"\n\n"):
                    yield event
                if not events.finished:  # cut off: what was relayed is not the whole answer
                    raise ProviderError(FailureKind.SERVER, events.cut_off)
        except PeerError as exc:
            raise _unreachable(exc) from None
        except orjson.JSONDecodeError:
            raise ProviderError(FailureKind.DEPLOYMENT, "Azure OpenAI sent a malformed stream chunk") \
                from None
        finally:
            reply.release()  # back to the pool when the answer was read to its end, else closed
        yield events.usage

    async def _post(self, path: str, payload: bytes) -> bytes:
        """One call whose answer is read whole: its body, or the ProviderError its status means."""
        headers = self._headers if self._token is None else await self._token.headers()
        try:
            reply = await self._pool.request("POST", path, payload, headers, timeout=self.timeouts.read)
        except PeerError as exc:
            raise _unreachable(exc) from None
        if reply.status >= 300:
            raise _status_error(reply.status, reply.body, reply.headers)
        return reply.body

    async def aclose(self) -> None:
        await self._pool.close()
        if self._token is not None:
            await self._token.close()


class EntraToken:
    """Entra ID bearer tokens from DefaultAzureCredential, renewed in the background.

    Only the first request waits for a token. From `RENEW_BEFORE` seconds before the token expires,
    a request starts a renewal and goes on with the current token; a renewal that fails leaves the
    current token in use until it expires, and the next request tries again.
    """

    RENEW_BEFORE = 300.0

    def __init__(self) -> None:
        from azure.identity.aio import DefaultAzureCredential

        self._credential = DefaultAzureCredential()
        self._headers: Mapping[str, str] | None = None
        self._expires_on = 0.0
        self._renewal: asyncio.Task[None] | None = None

    async def headers(self) -> Mapping[str, str]:
        now = time.time()
        if self._headers is not None and now < self._expires_on - self.RENEW_BEFORE:
            return self._headers
        if self._renewal is None or self._renewal.done():
            self._renewal = asyncio.ensure_future(self._renew())
        if self._headers is None or now >= self._expires_on - 5:  # none yet, or about to expire
            await asyncio.shield(self._renewal)
        if self._headers is None:
            raise ProviderError(FailureKind.DEPLOYMENT, "Azure OpenAI: no Entra ID token could be had; "
                                "set AZURE_OPENAI_API_KEY or give the pod a managed/workload identity")
        return self._headers

    async def _renew(self) -> None:
        try:
            token = await self._credential.get_token(ENTRA_SCOPE)
        except Exception as exc:  # the credential's own errors: it tried every way it knows
            log.warning("Entra ID token renewal failed", extra={"fields": {"error": type(exc).__name__}})
            if self._headers is not None and time.time() >= self._expires_on:
                self._headers = None
            return
        self._headers = {**JSON_BODY, "authorization": f"Bearer {token.token}"}
        self._expires_on = float(token.expires_on)

    async def close(self) -> None:
        if self._renewal is not None and not self._renewal.done():
            self._renewal.cancel()
        await self._credential.close()


class _Events:
    """Azure's SSE bytes -> the events to forward: split on bytes, never decoded to text.

    Only a chunk that carries usage or an error is parsed: usage is read out (and the usage-only
    chunk dropped when the client did not ask for it), an error event raises.
    """

    __slots__ = ("_splitter", "_wants_usage", "usage", "finished")
    cut_off = CUT_OFF

    def __init__(self, wants_usage: bool) -> None:
        self._splitter = SSESplitter()
        self._wants_usage = wants_usage
        self.usage = Usage(0, 0)
        self.finished = False  # [DONE] seen

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The events to forward, in order (a generator, so those before an error still go out)."""
        for event in self._splitter.feed(data):
            for payload in _data_lines(event):
                if payload == b"[DONE]":
                    self.finished = True
                    return
                if (b'"usage"' in payload and b'"usage":null' not in payload) or b'"error"' in payload:
                    chunk = orjson.loads(payload)
                    if isinstance(chunk.get("error"), dict):
                        message = str(chunk["error"].get("message") or "stream error")
                        raise ProviderError(FailureKind.SERVER, f"Azure OpenAI stream failed: {message}")
                    found = _usage(chunk.get("usage"))
                    if found is not None:
                        self.usage = found
                        if not chunk.get("choices") and not self._wants_usage:
                            continue  # the usage-only chunk the client did not ask for
                yield b"data: " + payload + b"\n\n"


def _data_lines(event: bytes) -> list[bytes]:
    """The `data:` payloads of one event (comments, `event:` and `id:` lines skipped)."""
    if b"\n" not in event:
        return [event[5:].strip()] if event.startswith(b"data:") else []
    return [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]


def _usage(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


def _unreachable(exc: PeerError) -> ProviderError:
    if isinstance(exc, PeerTimeout):
        return ProviderError(FailureKind.TIMEOUT, "Azure OpenAI timed out")
    return ProviderError(FailureKind.CONNECT, f"could not reach Azure OpenAI ({exc})")


def _status_error(status: int, body: bytes, headers: Any) -> ProviderError:
    """Azure's own error message (it describes the request, never our key), with the status and
    the retry kind; a 400 for a prompt too long or a content filter names that reason."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    inner = parsed.get("error", parsed) if isinstance(parsed, dict) else None
    message = inner.get("message") if isinstance(inner, dict) else None
    code = inner.get("code") if isinstance(inner, dict) else None
    reason = _REFUSALS.get(code) if isinstance(code, str) and status == 400 else None
    return ProviderError(kind_for_status(status), f"Azure OpenAI returned {status}: {message or 'no detail'}",
                         status, retry_after=retry_after_seconds(headers), reason=reason)


# Azure's error codes for a prompt too long for the model and for its content filter
_REFUSALS = {"context_length_exceeded": "context_window", "content_filter": "content_policy",
             "ResponsibleAIPolicyViolation": "content_policy"}


# --- the registry entry --------------------------------------------------------------------------


def create(config: AzureConfig, env: Mapping[str, str]) -> AzureOpenAIProvider:
    return AzureOpenAIProvider(config, env["AZURE_OPENAI_ENDPOINT"], env.get("AZURE_OPENAI_API_KEY") or None)


def resolve_target(config: AzureConfig, target: str) -> str:
    """A key of `deployments` names its Azure deployment; anything else is the Azure name itself."""
    entry = config.deployments.get(target, target)
    return entry if isinstance(entry, str) else entry.name


PROVIDER = ProviderSpec(
    name="azureOpenAI",
    config=AzureConfig,
    create=create,
    credentials=(
        Credential("AZURE_OPENAI_ENDPOINT", "azure-openai-endpoint"),
        Credential("AZURE_OPENAI_API_KEY", "azure-openai-api-key"),  # absent: Entra ID instead
    ),
    detect=("AZURE_OPENAI_ENDPOINT",),
    requires=("AZURE_OPENAI_ENDPOINT",),
    resolve_target=resolve_target,
)
