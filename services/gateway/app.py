"""The gateway: QLens's public, OpenAI-compatible API.

Routes: POST /v1/chat/completions, /v1/embeddings and /v1/responses (services/gateway/chat.py,
the hot path, plain ASGI; embeddings.py and responses.py say what differs),
GET /v1/models and /v1/models/{id} (the router's catalog), GET /v1/usage (the caller's spend and
remaining budget today), /health, /health/ready (router reachable, and the budget store under
failClosed; the cache is reported but optional: without it requests bypass it), /metrics.

The app is FastAPI for everything except the hot path, which `FastPathApp.__call__`
(services/common/asgi.py) hands straight to its handler: no middleware, routing or dependency
machinery runs for a chat completion.
Every error, the framework's own 404/405/422 included, answers in OpenAI's format.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from services.common import tracing
from services.common.asgi import FastPathApp
from services.common.config import ServiceConfig, load_service_config, secret_env
from services.common.errors import APIError, install_error_handlers
from services.common.health import liveness, readiness
from services.common.http11 import PeerError
from services.common.logging import log_event, log_line, request_id, setup_logging
from services.common.metrics import REQUEST_DURATION, REQUESTS, render_metrics
from services.gateway import admin
from services.gateway.auth import AdminKeyStore, Authenticator, KeyStore, admin_keys_file_path, keys_file_path
from services.gateway.budget import Budget, BudgetUnavailable, RedisBudget, make_budget
from services.gateway.catalog import Catalog
from services.gateway.chat import ROUTE as CHAT
from services.gateway.chat import SERVICE, ChatApi, Endpoint, router_error, unknown_model, upstream_error
from services.gateway.embeddings import EmbeddingsApi
from services.gateway.openapi import add_model_routes
from services.gateway.peers import Cache, Router, peer_urls
from services.gateway.responses import ResponsesApi
from services.gateway.tenancy import Tenancy

REDIS_URL_ENV = "QLENS_REDIS_URL"
MODELS, USAGE = "/v1/models", "/v1/usage"
_JSON = "application/json"

log = logging.getLogger("qlens.gateway")


class Gateway:
    """The gateway's parts, shared by its routes: catalog, auth, peers and budget."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.catalog = Catalog(config)
        self.auth = Authenticator(KeyStore(keys_file_path(config.auth.keys_file)), config.auth.required)
        router_url, cache_url = peer_urls()
        self.router = Router(router_url, config.routing.deadline_seconds)
        self.cache = Cache(cache_url, config.cache.ttl_seconds)
        self._budget: Budget | None = None
        self._tenancy = Tenancy()  # replaced at start by one on the budget's store
        # every model API on the one path: auth -> limits -> cache -> router -> settle
        self.endpoints = {
            api.route: Endpoint(config, self.catalog, self.auth, self.router, self.cache,
                                lambda: self.budget, api)
            for api in (ChatApi(), EmbeddingsApi(), ResponsesApi(config, self.cache))
        }
        self.chat = self.endpoints[CHAT]

    @property
    def tenancy(self) -> Tenancy:
        return self._tenancy

    @property
    def budget(self) -> Budget:
        if self._budget is None:
            raise RuntimeError("the gateway has not started")
        return self._budget

    async def start(self) -> None:
        usage = self.config.usage
        self._budget = make_budget(self.config.cost_controls, secret_env(REDIS_URL_ENV),
                                   ledger_days=usage.retention_days if usage.enabled else None)
        # runtime keys and tenant limits (the admin API's) live next to the counters
        self._tenancy = Tenancy(self._budget.redis if isinstance(self._budget, RedisBudget) else None)
        await self._tenancy.start()
        self._budget.overrides = self._tenancy.tenant_limits
        self.auth.runtime = self._tenancy.key
        log_event(log, "gateway started", environment=self.config.name, router=self.router.base_url,
                  cache=self.cache.base_url if self.config.cache.enabled else "disabled",
                  auth_required=self.auth.required, budget_store=self._budget.store)

    async def stop(self) -> None:
        for endpoint in self.endpoints.values():
            await endpoint.drain()
        await self.cache.close()
        await self.router.close()
        await self._tenancy.stop()
        if self._budget is not None:
            await self._budget.close()

    # --- GET /v1/models, /v1/models/{id}, /v1/usage ------------------------------------------

    async def models(self, request: Request) -> Response:
        """The router's catalog, as OpenAI's model list."""
        async def answer() -> tuple[int, bytes]:
            found = self.auth.check(request.headers.get("authorization"))
            status, body = await self._router_models()
            if status != 200 or found is None or found.entry.models is None:
                return status, body
            listing = orjson.loads(body)  # only the models this key may use
            listing["data"] = [m for m in listing.get("data", []) if found.entry.allows(m.get("id", ""))]
            return 200, orjson.dumps(listing)

        return await self._api(request, MODELS, answer)

    async def model(self, request: Request) -> Response:
        """One model of the router's catalog (`client.models.retrieve`)."""
        async def answer() -> tuple[int, bytes]:
            key = self.auth.check(request.headers.get("authorization"))
            model_id = request.path_params["model_id"]
            if key is not None and not key.entry.allows(model_id):
                raise unknown_model(model_id)
            status, body = await self._router_models()
            if status != 200:
                return status, body
            found = [m for m in orjson.loads(body).get("data", []) if m.get("id") == model_id]
            if not found:
                raise unknown_model(model_id)
            return 200, orjson.dumps(found[0])

        return await self._api(request, MODELS, answer)

    async def usage(self, request: Request) -> Response:
        """The caller's spend and remaining budget today (tenant and user scopes); with `from` or
        `to`, the ledger of the caller's own tenant instead (`by=day|user|model`, as /admin/v1/usage).

        Without a key (auth off) the caller is tenant `default` and `?user=` names the user.
        """
        async def answer() -> tuple[int, bytes]:
            entry = self.auth.check(request.headers.get("authorization"))
            q = request.query_params
            caller = self.auth.caller_for(entry, q.get("user"))
            if "from" in q or "to" in q:
                if q.get("tenant", caller.tenant) != caller.tenant:
                    raise APIError(403, "You can only read your own tenant's usage.", param="tenant",
                                   code="permission_denied")
                body = await admin.usage_report(self.budget, q.get("from"), q.get("to"), q.get("by"),
                                                tenant=caller.tenant)
                return 200, orjson.dumps({**body, "tenant_id": caller.tenant})
            try:
                report = await self.budget.usage(caller.tenant, caller.user)
            except BudgetUnavailable:
                raise APIError(503, "The budget store is unavailable; retry shortly.",
                               code="budget_unavailable") from None
            body = {"object": "usage", "tenant_id": caller.tenant, "user_id": caller.user, **report}
            return 200, orjson.dumps(body)

        return await self._api(request, USAGE, answer)

    async def _router_models(self) -> tuple[int, bytes]:
        try:
            reply = await self.router.get(MODELS)
        except PeerError as exc:
            raise upstream_error(exc) from None
        return (200, reply.body) if reply.status == 200 else router_error(reply.status, reply.body)

    async def _api(self, request: Request, route: str, answer: Any) -> Response:
        """Run one small API route: OpenAI errors, x-request-id, metrics, the log line."""
        start = time.perf_counter()
        rid = request_id(request.headers.get("x-request-id"))
        try:
            status, body = await answer()
        except APIError as exc:
            status, body = exc.status, exc.to_bytes()
        elapsed = time.perf_counter() - start
        REQUESTS.labels(SERVICE, route, str(status)).inc()
        REQUEST_DURATION.labels(SERVICE, route).observe(elapsed)
        log_line(log, "request", request_id=rid, route=route, status=status,
                 latency_ms=round(elapsed * 1000, 3))
        headers = {"x-request-id": rid, "x-qlens-overhead-ms": f"{elapsed * 1000:.3f}"}
        return Response(body, status_code=status, headers=headers, media_type=_JSON)

    # --- health and metrics --------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return Response(orjson.dumps(liveness(SERVICE)), media_type=_JSON)

    async def ready(self, request: Request) -> Response:
        # Only what nothing can be served without makes the gateway unready: the router, and the
        # budget store when failClosed refuses every request while it is down. The cache is
        # optional: requests bypass it (x-qlens-cache: bypass), so it is reported as degraded.
        checks: dict[str, Any] = {"router": self.router.probe}
        optional: dict[str, Any] = {}
        if self.config.cache.enabled:
            optional["cache"] = self.cache.probe
        costs = self.config.cost_controls
        fail_closed = costs.enabled and costs.on_store_failure == "failClosed"
        (checks if fail_closed else optional)["budget_store"] = self._budget_ping
        status, body = await readiness(SERVICE, checks, optional=optional)
        return Response(orjson.dumps(body), status_code=status, media_type=_JSON)

    async def _budget_ping(self) -> str:
        await self.budget.ping()
        return self.budget.store

    async def metrics(self, request: Request) -> Response:
        body, content_type = render_metrics()
        return Response(body, media_type=content_type)


class GatewayApp(FastPathApp):
    """The gateway's FastPathApp: a POST to a model API (chat completions, embeddings, responses)
    goes straight to its `Endpoint`.

    FastAPI never sees those routes, so its OpenAPI document gets them added (services/gateway/openapi.py).
    """

    def __init__(self, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__({("POST", route): api for route, api in gateway.endpoints.items()}, **kwargs)
        self.catalog = gateway.catalog

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = add_model_routes(super().openapi(), self.catalog.names())
        return self.openapi_schema


def create_app(config: ServiceConfig | None = None) -> FastAPI:
    setup_logging(SERVICE)
    gw = Gateway(config or load_service_config())
    tracing.setup(SERVICE, gw.config.observability.tracing)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()
            tracing.shutdown()

    # no interactive docs on a public endpoint: the API is OpenAI's, documented there
    app = GatewayApp(gw, title="QLens gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = gw

    def request_id_header(request: Request) -> dict[str, str]:
        return {"x-request-id": request_id(request.headers.get("x-request-id"))}

    install_error_handlers(app, extra_headers=request_id_header, logger=log)

    async def post_only(request: Request) -> Response:  # POST is served by FastPathApp.__call__
        raise APIError(405, f"Method {request.method} is not allowed for {request.url.path}.",
                       headers={"allow": "POST"})

    for route in gw.endpoints:
        app.add_api_route(route, post_only, methods=["GET", "PUT", "DELETE", "PATCH"],
                          include_in_schema=False)
    app.add_api_route(MODELS, gw.models, methods=["GET"])
    app.add_api_route(MODELS + "/{model_id:path}", gw.model, methods=["GET"])
    app.add_api_route(USAGE, gw.usage, methods=["GET"])
    if gw.config.admin.enabled:
        admin_keys = AdminKeyStore(admin_keys_file_path(gw.config.admin.keys_file))
        api = admin.AdminAPI(admin_keys, gw.auth, lambda: gw.tenancy, lambda: gw.budget, gw.catalog.names)
        admin.add_routes(app, api, gw._api)
    app.add_api_route("/health", gw.health, methods=["GET"])
    app.add_api_route("/health/ready", gw.ready, methods=["GET"])
    app.add_api_route("/metrics", gw.metrics, methods=["GET"])
    return app
