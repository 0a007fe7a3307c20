"""The router service's HTTP layer: thin, and quick on the hot path.

Routes (contract: docs/internals.md, "Gateway -> router"): POST /v1/chat/completions and
/v1/embeddings (the hot path, plain ASGI in services/router/chat.py, dispatched by FastPathApp in
services/common/asgi.py: FastAPI never sees it), GET /v1/models, /health,
/health/ready (every deployment's circuit state), /metrics.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common import tracing
from services.common.asgi import FastPathApp
from services.common.config import ServiceConfig, load_service_config
from services.common.errors import APIError
from services.common.health import liveness, readiness
from services.common.logging import log_event, setup_logging
from services.common.metrics import render_metrics
from services.router.catalog import Catalog, build_catalog
from services.router.chat import CHAT_ROUTE, EMBEDDINGS_ROUTE, SERVICE, ChatCompletions
from services.router.providers import build_providers
from services.router.routing import Router

JSON = "application/json"


def create_app(config: ServiceConfig | None = None) -> FastAPI:
    logger = setup_logging(SERVICE)
    # azure-identity logs each token request at INFO: our own lines cover what matters
    logging.getLogger("azure").setLevel(logging.WARNING)
    if config is None:
        config = _load_config(logger)
    tracing.setup(SERVICE, config.observability.tracing)
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
        tracing.shutdown()

    model_routes = {CHAT_ROUTE: ChatCompletions(router, logger),
                    EMBEDDINGS_ROUTE: ChatCompletions(router, logger, embeddings=True)}
    app = FastPathApp({("POST", route): handler for route, handler in model_routes.items()},
                      title="QLens router", lifespan=lifespan,
                      docs_url=None, redoc_url=None, openapi_url=None)
    app.state.router = router

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

    async def chat_wrong_method(request: Request) -> Response:  # POST is served by FastPathApp.__call__
        raise StarletteHTTPException(405)

    # plain Starlette routes: the handlers take the Request and return bytes, so FastAPI's
    # dependency solving and response serialization would only cost time

    for route in model_routes:
        app.add_route(route, chat_wrong_method, methods=["GET", "PUT", "DELETE", "PATCH"])
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


def _error_response(exc: APIError, request_id: str) -> Response:
    headers = dict(exc.headers)
    if request_id:
        headers["x-request-id"] = request_id
    return Response(exc.to_bytes(), status_code=exc.status, media_type=JSON, headers=headers)


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
                    "kind": route.config.kind,
                    "deployments": [m.deployment.label for m in route.usable],
                    "deterministic": catalog.deterministic(name),
                    "displayName": route.config.display_name or name,
                    "fallbacks": route.fallbacks,
                },
            }
        )
    return {"object": "list", "data": data}
