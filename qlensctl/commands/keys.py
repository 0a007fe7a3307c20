"""`qlensctl keys create|list|revoke ENV`: API keys for the gateway.

Keys live (as SHA-256 hashes only) in Secret `qlens-api-keys`, mounted into the gateway, or with
`--file` in a local keys file (QLENS_API_KEYS_FILE of a local gateway). The gateway re-reads it
when it changes, so neither create nor revoke needs a redeploy. A key is printed once, by
`create`, and nowhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from qlensctl import output
from qlensctl.commands.options import JSON, KUBE_CONTEXT, YES

keys_app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)

_FILE = typer.Option(None, "--file", show_default=False,
                     help="A local keys file (a local gateway's QLENS_API_KEYS_FILE) instead of the cluster.")

def _store(env: str, file: Path | None, kube_context: str | None) -> tuple[Any, Any]:
    from qlensctl import apikeys_store
    from qlensctl.environments import load_environment

    environment = load_environment(env)
    if file is not None:
        return environment, apikeys_store.FileKeyStore(file)
    from qlensctl.kube import Kube

    kube = Kube.for_environment(environment, kube_context)  # the context guard; fails fast if unreachable
    return environment, apikeys_store.SecretKeyStore(kube.api, environment.namespace)


def _takes_effect(store: Any) -> str:
    if hasattr(store, "path"):
        return "a gateway reading this file picks the change up within a second; no restart"
    return "the gateway sees it once the kubelet refreshes the mounted Secret (about a minute); no redeploy"


@keys_app.command("create")
def create(
    env: str = typer.Argument(..., help="Environment."),
    tenant: str = typer.Option(..., "--tenant", help="Tenant the key belongs to."),
    user: str = typer.Option(..., "--user", help="User the key belongs to."),
    file: Path = _FILE,
    kube_context: str = KUBE_CONTEXT,
    yes: bool = YES,
    as_json: bool = JSON,
) -> None:
    """Create a key for TENANT/USER; it is printed once and only its hash is stored."""
    from qlensctl import apikeys_store

    apikeys_store.check_name("tenant", tenant)
    apikeys_store.check_name("user", user)
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
    kube_context: str = KUBE_CONTEXT,
    as_json: bool = JSON,
) -> None:
    """List keys: tenant, user, created, fingerprint (never the keys)."""
    from qlensctl import apikeys_store

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
    kube_context: str = KUBE_CONTEXT,
    yes: bool = YES,
    as_json: bool = JSON,
) -> None:
    """Revoke keys by fingerprint, or every key of a tenant (and user)."""
    from qlensctl import apikeys_store
    from qlensctl.errors import ConfigError

    if user and not tenant and not fingerprint:
        raise ConfigError("--user needs --tenant", "pass --tenant T --user U, or --fingerprint FP")
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
