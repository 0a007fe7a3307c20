"""Azure OpenAI through the official `openai` SDK (`AsyncAzureOpenAI`).

One SDK client per endpoint, created once with a pooled HTTP client (the SDK's aiohttp transport;
pool size and connect/read timeouts from the provider config) and `max_retries=0`: retrying is the
router's job, it knows the deadline and the other deployments. The deployment is chosen per call
by putting its name in the body's `model`, from which the SDK builds
`/openai/deployments/{name}/chat/completions`.

Credentials: `AZURE_OPENAI_ENDPOINT`, and `AZURE_OPENAI_API_KEY`; without a key, an Entra ID
token from `azure-identity`'s DefaultAzureCredential (managed identity, workload identity, CLI).

Answers are forwarded as the bytes Azure sent (no parse-and-reserialize round trip); only the
usage is read out of them. Streams always ask Azure for usage (it settles budgets and feeds the
token metrics) and drop that chunk again when the client did not ask for it.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Iterator, Mapping
from typing import Any, Literal
from urllib.parse import quote

import orjson
from pydantic import Field, model_validator

from services.common.config import Model, Pool, Timeouts
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
        import httpx2
        from openai import AsyncAzureOpenAI, omit

        self.timeouts = config.timeouts
        t = config.timeouts
        # the SDK's aiohttp transport: about a third less CPU per call than its default (measured)
        self._http = _http_client_class()(
            limits=httpx2.Limits(
                max_connections=config.pool.max_connections,
                max_keepalive_connections=config.pool.max_keepalive,
            ),
            timeout=httpx2.Timeout(connect=t.connect, read=t.read, write=t.read, pool=t.connect),
        )
        self._credential = None
        auth: dict[str, Any]
        if api_key:
            auth = {"api_key": api_key}
        else:
            from azure.identity.aio import DefaultAzureCredential, get_bearer_token_provider

            self._credential = DefaultAzureCredential()
            auth = {"azure_ad_token_provider": get_bearer_token_provider(self._credential, ENTRA_SCOPE)}
        self.client = AsyncAzureOpenAI(
            azure_endpoint=endpoint,
            api_version=config.api_version,
            max_retries=0,
            http_client=self._http,
            timeout=httpx2.Timeout(connect=t.connect, read=t.read, write=t.read, pool=t.connect),
            **auth,
        )
        self._urls: dict[str, str] = {}
        # deployments served by Azure's Responses API (azure_responses.py translates to and fro)
        self._responses = config.responses_deployments()
        self._responses_url = f"{str(self.client.base_url).rstrip('/')}/v1/responses"
        # the v1 API takes no dated api-version: the client's default one is left out, or replaced
        version = config.responses_api_version
        self._responses_options: Any = {"params": {"api-version": version or omit}}

    def _url(self, target: str) -> str:
        """The deployment's chat URL, absolute: the SDK then parses it once instead of merging a
        relative path into its base URL (a URL parse is tens of microseconds in httpx2)."""
        url = self._urls.get(target)
        if url is None:
            base = str(self.client.base_url).rstrip("/")
            url = self._urls[target] = f"{base}/deployments/{quote(target, safe='')}/chat/completions"
        return url

    async def complete(self, target: str, body: dict[str, Any]) -> Completion:
        import httpx2

        if target in self._responses:
            return await self._respond(target, body)
        # the body as bytes (`content=`): orjson instead of the SDK's JSON encoder, and the URL
        # names the deployment, which the SDK would otherwise read out of a `body` dict
        payload = orjson.dumps({**body, "model": target})
        async with _translate_errors():
            response = await self.client.post(self._url(target), content=payload, cast_to=httpx2.Response)
        content = response.content
        try:
            usage = _usage(orjson.loads(content).get("usage"))
        except (orjson.JSONDecodeError, AttributeError):
            raise ProviderError(FailureKind.DEPLOYMENT, "Azure OpenAI answered with malformed JSON") from None
        return Completion(content, usage or Usage(0, 0))

    async def embed(self, target: str, body: dict[str, Any]) -> Completion:
        """An embedding deployment: the body as the client sent it, Azure's answer as its bytes
        (`encoding_format` and `dimensions` are Azure's to honour)."""
        import httpx2

        url = self._url(target).removesuffix("/chat/completions") + "/embeddings"
        async with _translate_errors():
            response = await self.client.post(url, content=orjson.dumps({**body, "model": target}),
                                              cast_to=httpx2.Response)
        try:
            usage = orjson.loads(response.content).get("usage") or {}
            prompt = int(usage.get("prompt_tokens") or 0)
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            raise ProviderError(FailureKind.DEPLOYMENT, "Azure OpenAI answered with malformed JSON") from None
        return Completion(response.content, Usage(prompt, 0))

    async def _respond(self, target: str, body: dict[str, Any]) -> Completion:
        import httpx2

        payload = orjson.dumps(azure_responses.responses_request(body, target))
        async with _translate_errors():
            response = await self.client.post(self._responses_url, content=payload, cast_to=httpx2.Response,
                                              options=self._responses_options)
        content, usage = azure_responses.completion(response.content)
        return Completion(content, usage)

    async def stream(self, target: str, body: dict[str, Any]) -> AsyncGenerator[StreamItem, None]:
        import httpx2

        client_wants_usage = wants_usage(body)
        options: Any = {}
        if target in self._responses:
            url, options = self._responses_url, self._responses_options
            payload = orjson.dumps(azure_responses.responses_request({**body, "stream": True}, target))
            events: _Events | azure_responses.ResponsesEvents = azure_responses.ResponsesEvents(
                client_wants_usage)
        else:
            url, events = self._url(target), _Events(client_wants_usage)
            stream_options = body.get("stream_options")
            if not isinstance(stream_options, dict):
                stream_options = {}
            payload = orjson.dumps({**body, "model": target, "stream": True,
                                    "stream_options": {**stream_options, "include_usage": True}})
        async with _translate_errors():
            response = await self.client.post(url, content=payload, cast_to=httpx2.Response, stream=True,
                                              options=options)
        try:
            async with _translate_errors():
                async for data in response.aiter_bytes():
                    for event in events.feed(data):
                        yield event
                    if events.finished:
                        break
                else:  # ended without [DONE]: a last event may lack its blank line
                    for event in events.feed(b"\n\n"):
                        yield event
                    if not events.finished:  # cut off: what was relayed is not the whole answer
                        raise ProviderError(FailureKind.SERVER, events.cut_off)
        finally:
            await response.aclose()
        yield events.usage

    async def aclose(self) -> None:
        await self.client.close()
        if self._credential is not None:
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


@functools.cache
def _http_client_class() -> type:
    """The SDK's aiohttp-backed httpx2 client, remembering the URLs it has built.

    The SDK hands `build_request` the same URL string and `api-version` query on every call, and
    httpx2 parses that URL twice more (merging the base URL, then the query). Both merges are
    no-ops for this client (no base URL or params of its own), so the merged URL is kept per
    (url, query): one dict lookup instead. Bounded: one entry per deployment and API version.
    """
    import httpx2
    from openai import DefaultAioHttpClient

    class URLCachingClient(DefaultAioHttpClient):  # type: ignore[misc, valid-type]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._urls: dict[tuple[str, str | None], httpx2.URL] = {}
            self._merges_nothing = not self.params and not str(self.base_url)

        def build_request(self, method: str, url: Any, *, params: Any = None, **kwargs: Any) -> Any:
            plain = isinstance(url, str) and (params is None or isinstance(params, str))
            if not (plain and self._merges_nothing):
                return super().build_request(method, url, params=params, **kwargs)
            merged = self._urls.get((url, params))
            if merged is None:
                if len(self._urls) >= 64:
                    self._urls.clear()
                merged = httpx2.URL(url)
                if params:
                    merged = merged.copy_merge_params(params)
                self._urls[(url, params)] = merged
            return super().build_request(method, merged, **kwargs)

    return URLCachingClient


def _usage(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


class _translate_errors:
    """Turn the SDK's exceptions into ProviderError with the right retry kind."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, ProviderError):
            return False
        import httpx2
        import openai

        if isinstance(exc, openai.APIStatusError):
            raise ProviderError(
                kind_for_status(exc.status_code),
                _status_message(exc),
                exc.status_code,
                retry_after=retry_after_seconds(exc.response.headers),
                reason=_refusal_reason(exc),
            ) from None
        if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException) and not _refused(exc):
            raise ProviderError(FailureKind.TIMEOUT, "Azure OpenAI timed out") from None
        if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
            raise ProviderError(FailureKind.CONNECT, "could not reach Azure OpenAI") from None
        if isinstance(exc, orjson.JSONDecodeError):
            raise ProviderError(
                FailureKind.DEPLOYMENT, "Azure OpenAI sent a malformed stream chunk"
            ) from None
        return False


def _refused(exc: BaseException) -> bool:
    """A connection that failed outright, which the aiohttp transport reports as a ConnectTimeout."""
    import aiohttp

    seen: BaseException | None = exc
    for _ in range(8):  # the cause chain is short: SDK error <- httpx2 error <- aiohttp error
        if seen is None:
            return False
        if isinstance(seen, aiohttp.ClientConnectorError | ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# Azure's error codes for a prompt too long for the model and for its content filter
_REFUSALS = {"context_length_exceeded": "context_window", "content_filter": "content_policy",
             "ResponsibleAIPolicyViolation": "content_policy"}


def _refusal_reason(exc: Any) -> str | None:
    body = getattr(exc, "body", None)
    inner = body.get("error", body) if isinstance(body, dict) else None
    code = inner.get("code") if isinstance(inner, dict) else None
    return _REFUSALS.get(code) if isinstance(code, str) and exc.status_code == 400 else None


def _status_message(exc: Any) -> str:
    """Azure's own error message (it describes the request, never our key), with the status."""
    body = getattr(exc, "body", None)
    message = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else None
    return f"Azure OpenAI returned {exc.status_code}: {message or 'no detail'}"


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
