"""`qlensctl keys create|list|revoke|update ENV`: API keys for the gateway.

When the environment has the admin API (`admin.enabled`), keys are managed through it
(/admin/v1/keys, with an admin key): stored hashed in the budget store, with an expiry, a model
allow-list and their own limits, enforced by every replica within a second. Otherwise (and with
`--file`) keys live as SHA-256 hashes in Secret `qlens-api-keys`, mounted into the gateway, or in
a local keys file (QLENS_API_KEYS_FILE of a local gateway); the gateway re-reads it when it
changes, so neither create nor revoke needs a redeploy. A key is printed once, by `create`, and
nowhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from qlensctl import output
from qlensctl.commands.options import ADMIN_KEY, JSON, KUBE_CONTEXT, PORT_FORWARD, URL, YES

keys_app = typer.Typer(help="API keys: create (shown once), list, revoke, update.", no_args_is_help=True)

_FILE = typer.Option(None, "--file", show_default=False,
                     help="A local keys file (a local gateway's QLENS_API_KEYS_FILE) instead of the cluster.")

def _store(env: str, file: Path | None, kube_context: str | None) -> tuple[Any, Any]:
    from qlensctl import apikeys_store
    from qlensctl.environments import load_environment

    environment = load_environment(env)
    if file is not None:
        return environment, apikeys_store.FileKeyStore(file)
    from qlensctl.cluster import connect

    kube = connect(environment, kube_context).kube  # the context guard; fails fast if unreachable
    return environment, apikeys_store.SecretKeyStore(kube.api, environment.namespace)


def _api_environment(env: str, file: Path | None, url: str | None) -> Any:
    """The environment when its keys go through the admin API (or --url names a gateway), else None."""
    from qlensctl.environments import load_environment

    environment = load_environment(env)
    if file is not None:
        return None
    return environment if (environment.admin.enabled or url) else None


def _connect(env: str, admin_key: str | None, url: str | None, port_forward: bool,
             kube_context: str | None) -> Any:
    from qlensctl import admin_api

    return admin_api.connect(env, admin_key, url=url, port_forward=port_forward, kube_context=kube_context)


_COLUMNS = ["fingerprint", "tenant", "user", "created", "expires", "models", "revoked", "source"]


def _api_rows(keys: list[dict[str, Any]]) -> list[list[str]]:
    return [[k["fingerprint"], k["tenant"], k["user"], k["created"], k.get("expiresAt") or "-",
             ",".join(k["models"]) if k.get("models") is not None else "all", "yes" if k["revoked"] else "",
             k["source"]] for k in keys]


def _limits(daily: float | None, monthly: float | None, rpm: int | None, tpm: int | None) -> dict[str, Any]:
    given = {"daily": daily, "monthly": monthly, "rpm": rpm, "tpm": tpm}
    return {k: v for k, v in given.items() if v is not None}


def _takes_effect(store: Any) -> str:
    if hasattr(store, "path"):
        return "a gateway reading this file picks the change up within a second; no restart"
    return "the gateway sees it once the kubelet refreshes the mounted Secret (about a minute); no redeploy"


@keys_app.command("create")
def create(
    env: str = typer.Argument(..., help="Environment."),
    tenant: str = typer.Option(..., "--tenant", help="Tenant the key belongs to."),
    user: str = typer.Option(..., "--user", help="User the key belongs to."),
    description: str = typer.Option("", "--description", help="What the key is for (admin API)."),
    expires_at: str = typer.Option(None, "--expires-at", show_default=False,
                                   help="ISO 8601 UTC time after which the key answers 401 (admin API)."),
    models: str = typer.Option(None, "--models", show_default=False,
                               help="Comma-separated model allow-list [default: every model] (admin API)."),
    daily: float = typer.Option(None, "--daily", show_default=False, help="The key's USD per UTC day."),
    monthly: float = typer.Option(None, "--monthly", show_default=False, help="The key's USD per UTC month."),
    rpm: int = typer.Option(None, "--rpm", show_default=False, help="The key's requests per minute."),
    tpm: int = typer.Option(None, "--tpm", show_default=False, help="The key's tokens per minute."),
    file: Path = _FILE,
    admin_key: str = ADMIN_KEY, url: str = URL, port_forward: bool = PORT_FORWARD,
    kube_context: str = KUBE_CONTEXT,
    yes: bool = YES,
    as_json: bool = JSON,
) -> None:
    """Create a key for TENANT/USER; it is printed once and only its hash is stored."""
    from qlensctl import apikeys_store
    from qlensctl.errors import ConfigError

    apikeys_store.check_name("tenant", tenant)
    apikeys_store.check_name("user", user)
    api_env = _api_environment(env, file, url)
    extras = _limits(daily, monthly, rpm, tpm)
    if api_env is not None:
        if api_env.is_production:
            output.confirm(f"Create an API key for {tenant}/{user} in {env}?", yes)
        body: dict[str, Any] = {"tenant": tenant, "user": user, "description": description}
        if expires_at is not None:
            body["expiresAt"] = expires_at
        if models is not None:
            body["models"] = [m.strip() for m in models.split(",") if m.strip()]
        if extras:
            body["limits"] = extras
        with _connect(env, admin_key, url, port_forward, kube_context) as conn:
            created = conn.client.create_key(body)
        key = created.pop("key")
        if as_json:
            output.emit_json({**created, "key": key, "store": conn.where})
            return
        output.table(f"API key created in {conn.where}", _COLUMNS, _api_rows([created]))
        output.info("The key, shown only this once (store it now; only its hash is kept):")
        output.console.print(key, markup=False, highlight=False, soft_wrap=True)
        output.info("[dim]every gateway replica accepts it within a second; no restart[/dim]")
        return
    if description or expires_at or models or extras:
        raise ConfigError("--description, --expires-at, --models and limits need the admin API",
                          f"enable it (admin.enabled in environments/{env}.yaml), or pass --url")
    environment, store = _store(env, file, kube_context)
    if environment.is_production and file is None:
        output.confirm(f"Create an API key for {tenant}/{user} in {store.where}?", yes)
    key, info = apikeys_store.create_key(store, tenant, user)
    if as_json:
        output.emit_json({**info.as_dict(), "key": key, "store": store.where})
        return
    output.table(f"API key created in {store.where}", ["tenant", "user", "created", "fingerprint"],
                 [[info.tenant, info.user, info.created, info.fingerprint]])
    output.info("The key, shown only this once (store it now; qlensctl keeps only its hash):")
    output.console.print(key, markup=False, highlight=False, soft_wrap=True)
    output.info(f"[dim]{_takes_effect(store)}[/dim]")


@keys_app.command("list")
def list_(
    env: str = typer.Argument(..., help="Environment."),
    tenant: str = typer.Option(None, "--tenant", help="Only this tenant's keys."),
    user: str = typer.Option(None, "--user", help="Only this user's keys."),
    file: Path = _FILE,
    admin_key: str = ADMIN_KEY, url: str = URL, port_forward: bool = PORT_FORWARD,
    kube_context: str = KUBE_CONTEXT,
    as_json: bool = JSON,
) -> None:
    """List keys: tenant, user, created, fingerprint (never the keys)."""
    from qlensctl import apikeys_store

    if _api_environment(env, file, url) is not None:
        with _connect(env, admin_key, url, port_forward, kube_context) as conn:
            keys = conn.client.list_keys(tenant, user)
        if as_json:
            output.emit_json(keys)
            return
        output.table(f"API keys of {conn.where}", _COLUMNS, _api_rows(keys))
        return
    _, store = _store(env, file, kube_context)
    rows = apikeys_store.list_keys(store, tenant, user)
    if as_json:
        output.emit_json([r.as_dict() for r in rows])
        return
    output.table(f"API keys in {store.where}", ["tenant", "user", "created", "fingerprint"],
                 [[r.tenant, r.user, r.created, r.fingerprint] for r in rows])


@keys_app.command("revoke")
def revoke(
    env: str = typer.Argument(..., help="Environment."),
    fingerprint: str = typer.Option(None, "--fingerprint", help="The fingerprint `keys list` shows."),
    tenant: str = typer.Option(None, "--tenant", help="Revoke this tenant's keys (with --user: one user's)."),
    user: str = typer.Option(None, "--user", help="With --tenant: only this user's keys."),
    file: Path = _FILE,
    admin_key: str = ADMIN_KEY, url: str = URL, port_forward: bool = PORT_FORWARD,
    kube_context: str = KUBE_CONTEXT,
    yes: bool = YES,
    as_json: bool = JSON,
) -> None:
    """Revoke keys by fingerprint, or every key of a tenant (and user)."""
    from qlensctl import apikeys_store
    from qlensctl.errors import ConfigError

    if user and not tenant and not fingerprint:
        raise ConfigError("--user needs --tenant", "pass --tenant T --user U, or --fingerprint FP")
    api_env = _api_environment(env, file, url)
    if api_env is not None:
        if not fingerprint and not tenant:
            raise ConfigError("nothing to revoke", "pass --fingerprint FP, or --tenant T [--user U]")
        if api_env.is_production:
            what = f"key {fingerprint}" if fingerprint else f"every key of {tenant}"
            what += f"/{user}" if user and not fingerprint else ""
            output.confirm(f"Revoke {what} in {env}?", yes)
        with _connect(env, admin_key, url, port_forward, kube_context) as conn:
            live = [k for k in conn.client.list_keys(tenant, user) if not k["revoked"]
                    and (not fingerprint or k["fingerprint"].startswith(fingerprint))]
            if fingerprint and len(live) > 1:
                raise ConfigError(f"--fingerprint {fingerprint} matches {len(live)} keys",
                                  "give more of the fingerprint (`keys list` shows 12 digits)")
            if not live:
                raise ConfigError("no key matches", f"`qlensctl keys list {env}` shows the keys")
            revoked = [conn.client.revoke_key(k["fingerprint"]) for k in live]
        if as_json:
            output.emit_json({"revoked": revoked, "store": conn.where})
            return
        output.table(f"Revoked in {conn.where}", _COLUMNS, _api_rows(revoked))
        output.info("[dim]every gateway replica refuses it (401) within a second[/dim]")
        return
    environment, store = _store(env, file, kube_context)
    if environment.is_production and file is None:
        what = f"key {fingerprint}" if fingerprint else f"every key of {tenant}"
        if user and not fingerprint:
            what += f"/{user}"
        output.confirm(f"Revoke {what} in {store.where}?", yes)
    removed = apikeys_store.revoke_keys(store, fingerprint_prefix=fingerprint, tenant=tenant, user=user)
    if as_json:
        output.emit_json({"revoked": [r.as_dict() for r in removed], "store": store.where})
        return
    output.table(f"Revoked in {store.where}", ["tenant", "user", "created", "fingerprint"],
                 [[r.tenant, r.user, r.created, r.fingerprint] for r in removed])
    output.info(f"[dim]{_takes_effect(store)}[/dim]")


@keys_app.command("update")
def update(
    env: str = typer.Argument(..., help="Environment."),
    fingerprint: str = typer.Option(..., "--fingerprint", help="The fingerprint `keys list` shows."),
    description: str = typer.Option(None, "--description", show_default=False, help="What the key is for."),
    expires_at: str = typer.Option(None, "--expires-at", show_default=False,
                                   help="ISO 8601 UTC expiry (`none`: never)."),
    models: str = typer.Option(None, "--models", show_default=False,
                               help="Comma-separated model allow-list (`all`: every model)."),
    daily: float = typer.Option(None, "--daily", show_default=False, help="The key's USD per UTC day."),
    monthly: float = typer.Option(None, "--monthly", show_default=False, help="The key's USD per UTC month."),
    rpm: int = typer.Option(None, "--rpm", show_default=False, help="The key's requests per minute."),
    tpm: int = typer.Option(None, "--tpm", show_default=False, help="The key's tokens per minute."),
    clear_limits: bool = typer.Option(False, "--clear-limits", help="Drop the key's own limits."),
    admin_key: str = ADMIN_KEY, url: str = URL, port_forward: bool = PORT_FORWARD,
    kube_context: str = KUBE_CONTEXT, yes: bool = YES, as_json: bool = JSON,
) -> None:
    """Change a key's description, expiry, model allow-list or limits (admin API)."""
    from qlensctl.errors import ConfigError

    api_env = _api_environment(env, None, url)
    if api_env is None:
        raise ConfigError(f"{env} has no admin API: keys in its Secret carry only tenant and user",
                          f"enable it (admin.enabled in environments/{env}.yaml), or pass --url")
    body: dict[str, Any] = {}
    if description is not None:
        body["description"] = description
    if expires_at is not None:
        body["expiresAt"] = None if expires_at.lower() == "none" else expires_at
    if models is not None:
        body["models"] = None if models.lower() == "all" else \
            [m.strip() for m in models.split(",") if m.strip()]
    extras = _limits(daily, monthly, rpm, tpm)
    if clear_limits and extras:
        raise ConfigError("--clear-limits and new limits are exclusive", "pass one or the other")
    if clear_limits:
        body["limits"] = None
    elif extras:
        body["limits"] = extras
    if not body:
        raise ConfigError("nothing to change",
                          "pass --description, --expires-at, --models, --daily/--monthly/--rpm/--tpm "
                          "or --clear-limits")
    if api_env.is_production:
        output.confirm(f"Update key {fingerprint} in {env}?", yes)
    with _connect(env, admin_key, url, port_forward, kube_context) as conn:
        updated = conn.client.update_key(fingerprint, body)
    if as_json:
        output.emit_json(updated)
        return
    output.table(f"Updated in {conn.where}", _COLUMNS, _api_rows([updated]))
