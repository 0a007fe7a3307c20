"""The router service's HTTP layer: thin, and quick on the hot path.

Routes (contract: docs/internals.md, "Gateway -> router"): POST /v1/chat/completions, GET
/v1/models, /health, /health/ready (every deployment's circuit state), /metrics.

The gateway has validated the request; the router only checks what it needs (a JSON object with a
`model` and `messages`), so a malformed body is still a 400 and never a 500. Bodies are parsed with
orjson and answers are sent as the bytes the provider produced; no middleware wraps the app,
metrics and the log line are written by the handler itself.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.config import ServiceConfig, load_service_config
from services.common.errors import APIError
from services.common.health import liveness, readiness
from services.common.logging import log_event, setup_logging
from services.common.metrics import REQUEST_DURATION, REQUESTS, render_metrics
from services.router.catalog import Catalog, build_catalog
from services.router.providers import build_providers
from services.router.routing import Relay, Router, Served
from services.router.telemetry import child

SERVICE = "router"
CHAT_ROUTE = "/v1/chat/completions"
JSON = "application/json"


def create_app(config: ServiceConfig | None = None) -> FastAPI:
    logger = setup_logging(SERVICE)
    # the openai SDK's HTTP client logs a line per call at INFO: ours already covers each request
    for noisy in ("httpx", "httpx2", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if config is None:
        config = _load_config(logger)
    providers = build_providers(config.providers)
    catalog = build_catalog(config, providers)
    router = Router(catalog, config.routing)
    models_body = orjson.dumps(models_list(catalog))
    for name, reason in providers.off.items():
        log_event(logger, "provider off", provider=name, reason=reason)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        log_event(
            logger,
            "router started",
            environment=config.name,
            models=len(catalog.models),
            providers=sorted(providers.on),
        )
        yield
        await providers.aclose()

    app = FastAPI(title="QLens router", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.router = router

    async def chat_completions(request: Request) -> Response:
        started = time.perf_counter()
        request_id = request.headers.get("x-request-id", "")
        tenant = request.headers.get("x-qlens-tenant", "")
        model = None
        try:
            body = _parse_body(await request.body())
            model = body["model"]
            deadline = router.deadline()
            if body.get("stream") is True:
                relay = await router.stream(body, deadline)
                relay.on_close = lambda r: _done(
                    200, started, logger, request_id, tenant, model, r.served, None, r.outcome
                )
                headers = _served_headers(relay.served, request_id) | {"cache-control": "no-cache"}
                return RelayResponse(relay, headers=headers)
            completion, served = await router.complete(body, deadline)
            headers = _served_headers(served, request_id)
            headers["x-qlens-upstream-ms"] = f"{served.upstream_seconds * 1000:.3f}"
            _done(200, started, logger, request_id, tenant, model, served)
            return Response(completion.body, media_type=JSON, headers=headers)
        except APIError as exc:
            _done(exc.status, started, logger, request_id, tenant, model, None, exc.code)
            return _error_response(exc, request_id)

    async def list_models(request: Request) -> Response:
        return Response(models_body, media_type=JSON)

    async def health(request: Request) -> Response:
        return Response(orjson.dumps(liveness(SERVICE)), media_type=JSON)

    async def ready(request: Request) -> Response:
        async def deployments() -> dict[str, Any]:
            if not any(catalog.chain(name) and _servable(catalog, name) for name in catalog.models):
                raise RuntimeError("no model has a deployment whose provider is on")
            return catalog.health()

        status, body = await readiness(SERVICE, {"deployments": deployments})
        return Response(orjson.dumps(body), status_code=status, media_type=JSON)

    async def metrics(request: Request) -> Response:
        catalog.refresh_gauges()
        payload, content_type = render_metrics()
        return Response(payload, media_type=content_type)

    # plain Starlette routes: the handlers take the Request and return bytes, so FastAPI's
    # dependency solving and response serialization would only cost time on the hot path
    app.add_route(CHAT_ROUTE, chat_completions, methods=["POST"])
    app.add_route("/v1/models", list_models, methods=["GET"])
    app.add_route("/health", health, methods=["GET"])
    app.add_route("/health/ready", ready, methods=["GET"])
    app.add_route("/metrics", metrics, methods=["GET"])

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, exc: APIError) -> Response:
        return _error_response(exc, request.headers.get("x-request-id", ""))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        return _error_response(
            APIError(exc.status_code, f"{message}: {request.method} {request.url.path}"), ""
        )

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> Response:
        logger.error("unhandled error", exc_info=exc, extra={"fields": {"path": request.url.path}})
        return _error_response(APIError(500, "internal error in the router", code="internal_error"), "")

    return app


def _load_config(logger: logging.Logger) -> ServiceConfig:
    """The config from QLENS_CONFIG; a bad one is one clear log line and exit status 2."""
    try:
        return load_service_config()
    except Exception as exc:  # pydantic ValidationError, YAML error, missing file or variable
        detail = str(exc).replace("\n", "; ")
        log_event(logger, "invalid configuration", logging.ERROR, error=detail)
        raise SystemExit(2) from None


# --- request and response helpers --------------------------------------------------------------


def _parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise APIError(400, "the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_request")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise APIError(400, "`model` is required and must be a string", code="invalid_request", param="model")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise APIError(400, "`messages` must be a non-empty array", code="invalid_request", param="messages")
    return body


def _served_headers(served: Served, request_id: str) -> dict[str, str]:
    headers = {"x-qlens-provider": served.deployment.label, "x-qlens-model": served.model}
    if served.fallback:
        headers["x-qlens-fallback"] = served.requested
    if request_id:
        headers["x-request-id"] = request_id
    return headers


def _error_response(exc: APIError, request_id: str) -> Response:
    headers = dict(exc.headers)
    if request_id:
        headers["x-request-id"] = request_id
    return Response(exc.to_bytes(), status_code=exc.status, media_type=JSON, headers=headers)


def _done(
    status: int,
    started: float,
    logger: logging.Logger,
    request_id: str,
    tenant: str,
    model: str | None,
    served: Served | None,
    error: str | None = None,
    stream_outcome: str | None = None,
) -> None:
    """Metrics and the one log line of a request (never the prompt, never a key)."""
    seconds = time.perf_counter() - started
    child(REQUESTS, SERVICE, CHAT_ROUTE, str(status)).inc()
    child(REQUEST_DURATION, SERVICE, CHAT_ROUTE).observe(seconds)
    fields: dict[str, Any] = {
        "request_id": request_id,
        "tenant": tenant,
        "model": model,
        "status": status,
        "latency_ms": round(seconds * 1000, 3),
    }
    if served is not None:
        fields.update(provider=served.deployment.label, served_model=served.model, attempts=served.attempts)
        if served.fallback:
            fields["fallback_from"] = served.requested
    if error:
        fields["error"] = error
    if stream_outcome:
        fields["stream"] = stream_outcome
    log_event(logger, "request", **fields)


class RelayResponse(StreamingResponse):
    """Server-sent events from a `Relay`, whose books are settled however the response ends."""

    def __init__(self, relay: Relay, headers: dict[str, str]) -> None:
        super().__init__(relay.chunks(), media_type="text/event-stream", headers=headers)
        self.relay = relay

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.relay.close()


def _servable(catalog: Catalog, model: str) -> bool:
    return any(route.usable for route in catalog.chain(model))


def models_list(catalog: Catalog) -> dict[str, Any]:
    """OpenAI's model list for every model that some deployment (or fallback) can serve."""
    data = []
    for name, route in catalog.models.items():
        if not _servable(catalog, name):
            continue
        data.append(
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": route.members[0].deployment.provider_name,
                "qlens": {
                    "deployments": [m.deployment.label for m in route.usable],
                    "deterministic": catalog.deterministic(name),
                    "displayName": route.config.display_name or name,
                    "fallbacks": route.fallbacks,
                },
            }
        )
    return {"object": "list", "data": data}
