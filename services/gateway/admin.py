"""The admin API, /admin/v1: runtime keys, tenant limits and the usage ledger, for operators.

Authenticated by admin keys only: sha256 digests in the admin keys file (Secret qlens-admin-keys,
mounted into the gateway; re-read when it changes, so removing a digest revokes that admin key
within a second). No key or an unknown one -> 401; a client key -> 403: client keys never reach
these routes. Errors are OpenAI's body; a malformed body is 400 and changes nothing.

    GET    /admin/v1/keys[?tenant=&user=]        list (runtime records and the keys file)
    POST   /admin/v1/keys                        create; the answer holds the key, once
    GET    /admin/v1/keys/{fingerprint}          one key
    PATCH  /admin/v1/keys/{fingerprint}          description, expiresAt, models, limits
    DELETE /admin/v1/keys/{fingerprint}          revoke (401 from then on, on every replica)
    GET    /admin/v1/tenants                     tenants with keys or overrides
    GET    /admin/v1/tenants/{tenant}            defaults, overrides and the effective limits
    PUT    /admin/v1/tenants/{tenant}/limits     set overrides {daily, monthly, rpm, tpm}
    DELETE /admin/v1/tenants/{tenant}/limits     clear them (the environment's defaults again)
    GET    /admin/v1/usage?from=&to=&by=&tenant= the ledger, grouped by day|tenant|user|model

Changes are stored in the budget store (services/gateway/tenancy.py) and enforced by every replica
within a second, without a restart. Each change is logged with the admin key's name, never a key.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel
from starlette.responses import Response

from services.common.apikeys import NAME_RE, KeyEntry, fingerprint, generate_key, hash_key, parse_time
from services.common.errors import APIError
from services.common.logging import log_event
from services.gateway.auth import AdminKeyStore, Authenticator, bearer
from services.gateway.budget import Budget, BudgetUnavailable, ScopeLimits
from services.gateway.ledger import RangeError, report
from services.gateway.tenancy import Tenancy

PREFIX = "/admin/v1"
_FP = re.compile(r"^[0-9a-f]{12}$")

log = logging.getLogger("qlens.gateway.admin")

Answer = Callable[[], Awaitable[tuple[int, bytes]]]


# --- bodies ------------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class LimitsBody(_Body):
    """A scope's limits as the API spells them; a field given as null means "no limit"."""

    daily: float | None = Field(None, ge=0, allow_inf_nan=False)
    monthly: float | None = Field(None, ge=0, allow_inf_nan=False)
    rpm: int | None = Field(None, ge=0)
    tpm: int | None = Field(None, ge=0)

    def given(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("daily", "monthly", "rpm", "tpm") if k in self.model_fields_set}


def _check_expiry(v: str | None) -> str | None:
    if v is not None:
        parse_time(v)
    return v


class KeyCreate(_Body):
    tenant: str = Field(pattern=NAME_RE.pattern)
    user: str = Field(pattern=NAME_RE.pattern)
    description: str = Field("", max_length=200)
    expires_at: str | None = None
    models: list[str] | None = None
    limits: LimitsBody | None = None

    _expiry = field_validator("expires_at")(_check_expiry)


class KeyUpdate(_Body):
    description: str | None = Field(None, max_length=200)
    expires_at: str | None = None
    models: list[str] | None = None
    limits: LimitsBody | None = None

    _expiry = field_validator("expires_at")(_check_expiry)


def _parse(model: type[_Body], raw: bytes) -> Any:
    try:
        data = orjson.loads(raw or b"null")
    except orjson.JSONDecodeError:
        raise APIError(400, "The body is not valid JSON.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "The body must be a JSON object.", code="invalid_request")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        msg = err["msg"].replace("Value error, ", "")
        raise APIError(400, f"Invalid value for '{param}': {msg}." if param else f"Invalid body: {msg}.",
                       param=param, code="invalid_value") from None


# --- the API -----------------------------------------------------------------------------------


class AdminAPI:
    def __init__(self, admin_keys: AdminKeyStore, auth: Authenticator, tenancy: Callable[[], Tenancy],
                 budget: Callable[[], Budget], models: Callable[[], list[str]]) -> None:
        self.admin_keys = admin_keys
        self.auth = auth
        self._tenancy = tenancy
        self._budget = budget
        self._models = models

    @property
    def tenancy(self) -> Tenancy:
        return self._tenancy()

    @property
    def budget(self) -> Budget:
        return self._budget()

    def admin(self, request: Request) -> str:
        """The admin key's name, or 401/403 in OpenAI's format."""
        key = bearer(request.headers.get("authorization"))
        if key is None:
            raise APIError(401, "You didn't provide an admin key. Send it as 'Authorization: Bearer <key>'.",
                           code="missing_api_key")
        name = self.admin_keys.lookup_digest(hash_key(key)) if self.admin_keys.path is not None else None
        if name is not None:
            return str(name)
        if self.auth.find(key) is not None:
            raise APIError(403, "Client API keys cannot use the admin API; use an admin key.",
                           code="admin_key_required")
        raise APIError(401, "Incorrect admin key provided.", code="invalid_api_key")

    # --- keys --------------------------------------------------------------------------------

    def _all_keys(self) -> dict[str, tuple[KeyEntry, str]]:
        """digest -> (entry, source); a runtime record wins over the file's entry."""
        out: dict[str, tuple[KeyEntry, str]] = {}
        if self.auth.store.path is not None:
            out.update({d: (e, "file") for d, e in self.auth.store.items()})
        out.update({d: (e, "admin") for d, e in self.tenancy.keys.items()})
        return out

    def _find(self, fp: str) -> tuple[str, KeyEntry, str]:
        if not _FP.match(fp):
            raise APIError(400, "A key fingerprint is 12 lowercase hex digits.", param="fingerprint",
                           code="invalid_value")
        for digest, (entry, source) in self._all_keys().items():
            if fingerprint(digest) == fp:
                return digest, entry, source
        raise APIError(404, f"No API key has the fingerprint {fp}.", code="key_not_found")

    def _check_models(self, models: list[str] | None) -> tuple[str, ...] | None:
        if models is None:
            return None
        known = set(self._models())
        unknown = sorted(set(models) - known)
        if unknown:
            raise APIError(400, f"Unknown model(s) in the allow-list: {', '.join(unknown)}.", param="models",
                           code="model_not_found")
        return tuple(dict.fromkeys(models))

    async def list_keys(self, request: Request) -> tuple[int, bytes]:
        self.admin(request)
        tenant, user = request.query_params.get("tenant"), request.query_params.get("user")
        rows = [key_json(d, e, s) for d, (e, s) in self._all_keys().items()
                if (tenant is None or e.tenant == tenant) and (user is None or e.user == user)]
        rows.sort(key=lambda r: (r["tenant"], r["user"], r["created"], r["fingerprint"]))
        return 200, orjson.dumps({"object": "list", "data": rows})

    async def create_key(self, request: Request) -> tuple[int, bytes]:
        who = self.admin(request)
        body = _parse(KeyCreate, await request.body())
        models = self._check_models(body.models)
        key = generate_key()
        digest = hash_key(key)
        entry = KeyEntry(tenant=body.tenant, user=body.user, created=_now(), description=body.description,
                         expires_at=body.expires_at, models=models,
                         limits=body.limits.given() if body.limits else None)
        await self.tenancy.put_key(digest, entry)
        log_event(log, "admin: key created", admin=who, fingerprint=fingerprint(digest), tenant=entry.tenant,
                  user=entry.user)
        return 201, orjson.dumps({**key_json(digest, entry, "admin"), "key": key})

    async def get_key(self, request: Request) -> tuple[int, bytes]:
        self.admin(request)
        digest, entry, source = self._find(request.path_params["fingerprint"])
        return 200, orjson.dumps(key_json(digest, entry, source))

    async def update_key(self, request: Request) -> tuple[int, bytes]:
        who = self.admin(request)
        digest, entry, _ = self._find(request.path_params["fingerprint"])
        body = _parse(KeyUpdate, await request.body())
        given = body.model_fields_set
        changes: dict[str, Any] = {}
        if "description" in given:
            changes["description"] = body.description or ""
        if "expires_at" in given:
            changes["expires_at"] = body.expires_at
        if "models" in given:
            changes["models"] = self._check_models(body.models)
        if "limits" in given:
            changes["limits"] = body.limits.given() if body.limits else None
        updated = replace(entry, **changes)
        await self.tenancy.put_key(digest, updated)
        log_event(log, "admin: key updated", admin=who, fingerprint=fingerprint(digest),
                  fields=sorted(changes))
        return 200, orjson.dumps(key_json(digest, updated, "admin"))

    async def revoke_key(self, request: Request) -> tuple[int, bytes]:
        who = self.admin(request)
        digest, entry, _ = self._find(request.path_params["fingerprint"])
        revoked = replace(entry, revoked=True)
        await self.tenancy.put_key(digest, revoked)
        log_event(log, "admin: key revoked", admin=who, fingerprint=fingerprint(digest))
        return 200, orjson.dumps(key_json(digest, revoked, "admin"))

    # --- tenants -----------------------------------------------------------------------------

    def _tenant(self, request: Request) -> str:
        tenant = request.path_params["tenant"]
        if not NAME_RE.match(tenant):
            raise APIError(400, f"{tenant!r} is not a valid tenant name (letters, digits, '._@-', "
                                "at most 64).", param="tenant", code="invalid_value")
        return str(tenant)

    def _tenant_json(self, tenant: str) -> dict[str, Any]:
        defaults = self.budget.limits.tenant
        overrides = self.tenancy.tenant_limits(tenant)
        keys = sum(1 for e, _ in self._all_keys().values() if e.tenant == tenant and not e.revoked)
        return {"object": "tenant", "tenant": tenant, "keys": keys, "defaults": defaults.public(),
                "overrides": dict(overrides) if overrides else None,
                "limits": defaults.merged(overrides).public()}

    async def list_tenants(self, request: Request) -> tuple[int, bytes]:
        self.admin(request)
        names = {e.tenant for e, _ in self._all_keys().values()} | set(self.tenancy.tenants)
        return 200, orjson.dumps({"object": "list", "data": [self._tenant_json(t) for t in sorted(names)]})

    async def get_tenant(self, request: Request) -> tuple[int, bytes]:
        self.admin(request)
        return 200, orjson.dumps(self._tenant_json(self._tenant(request)))

    async def set_limits(self, request: Request) -> tuple[int, bytes]:
        who = self.admin(request)
        tenant = self._tenant(request)
        body = _parse(LimitsBody, await request.body())
        given = body.given()
        if not given:
            raise APIError(400, "Give at least one of daily, monthly, rpm, tpm (null = no limit).",
                           code="invalid_value")
        ScopeLimits().merged(given)  # the same conversion the budget will do: fails here, not later
        await self.tenancy.put_tenant(tenant, given)
        log_event(log, "admin: tenant limits set", admin=who, tenant=tenant, limits=given)
        return 200, orjson.dumps(self._tenant_json(tenant))

    async def clear_limits(self, request: Request) -> tuple[int, bytes]:
        who = self.admin(request)
        tenant = self._tenant(request)
        await self.tenancy.put_tenant(tenant, None)
        log_event(log, "admin: tenant limits cleared", admin=who, tenant=tenant)
        return 200, orjson.dumps(self._tenant_json(tenant))

    # --- usage -------------------------------------------------------------------------------

    async def usage(self, request: Request) -> tuple[int, bytes]:
        self.admin(request)
        q = request.query_params
        tenant = q.get("tenant")
        if tenant is not None and not NAME_RE.match(tenant):
            raise APIError(400, "tenant is not a valid tenant name.", param="tenant", code="invalid_value")
        return 200, orjson.dumps(await usage_report(self.budget, q.get("from"), q.get("to"), q.get("by"),
                                                    tenant=tenant, user=q.get("user")))


async def usage_report(budget: Budget, start: str | None, end: str | None, by: str | None, *,
                       tenant: str | None, user: str | None = None) -> dict[str, Any]:
    """A ledger report; 400 for a bad range or grouping, 503 when the store is unreachable."""
    try:
        return await report(budget, start, end, by, tenant=tenant, user=user)
    except RangeError as exc:
        raise APIError(400, f"{exc}.", code="invalid_value") from None
    except BudgetUnavailable:
        raise APIError(503, "The usage store is unavailable; retry shortly.",
                       code="budget_unavailable") from None


def key_json(digest: str, entry: KeyEntry, source: str) -> dict[str, Any]:
    """A key as the API shows it: never the key, only its fingerprint."""
    return {"object": "api_key", "fingerprint": fingerprint(digest), "tenant": entry.tenant,
            "user": entry.user, "description": entry.description, "created": entry.created,
            "expiresAt": entry.expires_at,
            "models": None if entry.models is None else list(entry.models), "limits": entry.limits,
            "revoked": entry.revoked, "source": source}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


Runner = Callable[[Request, str, Answer], Awaitable[Response]]


def add_routes(app: FastAPI, api: AdminAPI, run: Runner) -> None:
    """Mount the admin routes; `run` is the gateway's wrapper (errors, x-request-id, metrics, log)."""
    def route(path: str, method: str, handler: Callable[[Request], Awaitable[tuple[int, bytes]]]) -> None:
        async def endpoint(request: Request) -> Response:
            async def answer() -> tuple[int, bytes]:
                try:
                    return await handler(request)
                except BudgetUnavailable:
                    raise APIError(503, "The budget store is unavailable; nothing was changed. "
                                        "Retry shortly.", code="budget_unavailable") from None
            return await run(request, PREFIX + path.split("/{")[0], answer)

        app.add_api_route(PREFIX + path, endpoint, methods=[method], include_in_schema=False)

    route("/keys", "GET", api.list_keys)
    route("/keys", "POST", api.create_key)
    route("/keys/{fingerprint}", "GET", api.get_key)
    route("/keys/{fingerprint}", "PATCH", api.update_key)
    route("/keys/{fingerprint}", "DELETE", api.revoke_key)
    route("/tenants", "GET", api.list_tenants)
    route("/tenants/{tenant}", "GET", api.get_tenant)
    route("/tenants/{tenant}/limits", "PUT", api.set_limits)
    route("/tenants/{tenant}/limits", "DELETE", api.clear_limits)
    route("/usage", "GET", api.usage)
