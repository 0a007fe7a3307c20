"""The gateway's admin API (/admin/v1) as data, for `qlensctl keys|tenants|usage`.

`connect` finds the gateway of an environment (its URL, a local stack, `--url`, or a port-forward
to svc/qlens-gateway through the API server) and yields an `AdminClient` on it. The admin key
comes from `--admin-key` / `$QLENS_ADMIN_KEY` and is never printed. The API's refusals become
typed errors carrying its message: 401/403 a configuration error (the wrong key), others an
operation error. Like every layer, nothing here prints.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from qlensctl.errors import ConfigError, OperationError, first_line

ADMIN_KEY_ENV = "QLENS_ADMIN_KEY"
PREFIX = "/admin/v1"


class AdminClient:
    """Calls on one gateway's admin API; each returns the decoded JSON body."""

    def __init__(self, base_url: str, admin_key: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, trust_env=False,
                                    headers={"Authorization": f"Bearer {admin_key}"})

    def close(self) -> None:
        self._client.close()

    def call(self, method: str, path: str, body: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            r = self._client.request(method, PREFIX + path, json=body, params=query)
        except httpx.HTTPError as exc:
            raise OperationError(f"the gateway at {self.base_url} did not answer ({first_line(exc)})",
                                 "check that it runs and is reachable, or use --port-forward / --url",
                                 ) from None
        try:
            data = r.json()
        except ValueError:
            data = None
        if r.status_code < 400:
            return data
        err = data.get("error") if isinstance(data, dict) else None
        message = err.get("message") if isinstance(err, dict) else f"HTTP {r.status_code}"
        if r.status_code == 404 and (err is None or "Unknown request URL" in str(message)):
            raise ConfigError(f"the gateway at {self.base_url} has no admin API",
                              "enable it in the environment (admin.enabled: true) and deploy")
        if r.status_code in (401, 403):
            raise ConfigError(f"the admin API refused the admin key: {message}",
                              "pass an admin key (Secret qlens-admin-keys) with --admin-key or "
                              f"${ADMIN_KEY_ENV}")
        raise OperationError(f"{method} {PREFIX}{path}: {message}",
                             "check the values given" if r.status_code < 500 else "retry shortly")

    # --- keys ------------------------------------------------------------------------------------

    def list_keys(self, tenant: str | None = None, user: str | None = None) -> list[dict[str, Any]]:
        return list(self.call("GET", "/keys", params={"tenant": tenant, "user": user})["data"])

    def create_key(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self.call("POST", "/keys", dict(body)))

    def update_key(self, fingerprint: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self.call("PATCH", f"/keys/{fingerprint}", dict(body)))

    def revoke_key(self, fingerprint: str) -> dict[str, Any]:
        return dict(self.call("DELETE", f"/keys/{fingerprint}"))

    # --- tenants ---------------------------------------------------------------------------------

    def list_tenants(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/tenants")["data"])

    def tenant(self, tenant: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/tenants/{tenant}"))

    def set_limits(self, tenant: str, limits: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self.call("PUT", f"/tenants/{tenant}/limits", dict(limits)))

    def clear_limits(self, tenant: str) -> dict[str, Any]:
        return dict(self.call("DELETE", f"/tenants/{tenant}/limits"))

    # --- usage -----------------------------------------------------------------------------------

    def usage(self, start: str | None, end: str | None, by: str, tenant: str | None = None) -> dict[str, Any]:
        return dict(self.call("GET", "/usage", params={"from": start, "to": end, "by": by, "tenant": tenant}))


@dataclass
class Connection:
    client: AdminClient
    where: str  # how the gateway was reached, for titles


def require_key(admin_key: str | None) -> str:
    if not admin_key:
        raise ConfigError("no admin key given",
                          f"pass --admin-key or set ${ADMIN_KEY_ENV} (a key of Secret qlens-admin-keys)")
    return admin_key


@contextmanager
def connect(env: str, admin_key: str | None, *, url: str | None = None, port_forward: bool = False,
            kube_context: str | None = None, state_dir: Path | None = None,
            timeout: float = 30.0) -> Iterator[Connection]:
    """An AdminClient on ENV's gateway: `--url`, a port-forward, a local stack or the Ingress URL."""
    key = require_key(admin_key)
    if url and port_forward:
        raise ConfigError("--port-forward and --url are exclusive",
                          "--port-forward finds the gateway of ENV; --url is for any other gateway")
    if port_forward:
        from qlensctl import portforward
        from qlensctl.cluster import connect
        from qlensctl.environments import load_environment
        from qlensctl.smoke import GATEWAY_SERVICE

        environment = load_environment(env)
        kube = connect(environment, kube_context).kube
        try:
            with portforward.forward_service(kube, environment.namespace, GATEWAY_SERVICE,
                                             environment.ports.gateway) as forward:
                client = AdminClient(forward.url, key, timeout)
                try:
                    yield Connection(client, f"{env} (port-forward to svc/{GATEWAY_SERVICE})")
                finally:
                    client.close()
        finally:
            kube.close()
        return
    from qlensctl import local, smoke

    if url:
        where = smoke.Targets(smoke.check_url(url), None, url)
    else:
        where = smoke.targets(env, None, state_dir or local.default_state_dir())
    client = AdminClient(where.gateway_url, key, timeout)
    try:
        yield Connection(client, where.source)
    finally:
        client.close()
