"""`qlensctl tenants list|show|set-limits|clear-limits ENV`: per-tenant limits at runtime.

Through the gateway's admin API (/admin/v1/tenants): an override replaces the environment's
default for that tenant (costControls.limits.perTenant) on every replica within a second, with no
deploy. Limits: daily and monthly budgets in USD (UTC windows), rpm and tpm per minute.
"""

from __future__ import annotations

from typing import Any

import typer

from qlensctl import output
from qlensctl.commands.options import ADMIN_KEY, JSON, KUBE_CONTEXT, PORT_FORWARD, URL, YES

tenants_app = typer.Typer(help="Tenants: their limits (budgets, rpm, tpm), changed at runtime.",
                          no_args_is_help=True)

WINDOWS = ("daily", "monthly", "rpm", "tpm")


def _limit(v: Any, window: str) -> str:
    if v is None:
        return "-"
    return f"${v:g}" if window in ("daily", "monthly") else str(v)


def _rows(tenants: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for t in tenants:
        over = t.get("overrides") or {}
        rows.append([t["tenant"], str(t.get("keys", 0)),
                     *[_limit(t["limits"][w], w) + (" *" if w in over else "") for w in WINDOWS]])
    return rows


def _show(title: str, tenants: list[dict[str, Any]]) -> None:
    output.table(title, ["tenant", "keys", *WINDOWS], _rows(tenants))
    output.info("[dim]* set for this tenant at runtime; others are the environment's defaults[/dim]")


@tenants_app.command("list")
def list_(
    env: str = typer.Argument(..., help="Environment."),
    admin_key: str = ADMIN_KEY, url: str = URL, port_forward: bool = PORT_FORWARD,
    kube_context: str = KUBE_CONTEXT, as_json: bool = JSON,
) -> None:
    """Tenants that have keys or limits, with their effective limits."""
    from qlensctl import admin_api

    with admin_api.connect(env, admin_key, url=url, port_forward=port_forward,
                           kube_context=kube_context) as conn:
        tenants = conn.client.list_tenants()
    if as_json:
        output.emit_json(tenants)
        return
    _show(f"Tenants of {conn.where}", tenants)


@tenants_app.command("show")
def show(
    env: str = typer.Argument(..., help="Environment."),
    tenant: str = typer.Argument(..., help="Tenant."),
    admin_key: str = ADMIN_KEY, url: str = URL, port_forward: bool = PORT_FORWARD,
    kube_context: str = KUBE_CONTEXT, as_json: bool = JSON,
) -> None:
    """One tenant: defaults, runtime overrides and the limits in force."""
    from qlensctl import admin_api

    with admin_api.connect(env, admin_key, url=url, port_forward=port_forward,
                           kube_context=kube_context) as conn:
        data = conn.client.tenant(tenant)
    if as_json:
        output.emit_json(data)
        return
    _show(f"Tenant {tenant} in {conn.where}", [data])


def _given(daily: str | None, monthly: str | None, rpm: str | None, tpm: str | None) -> dict[str, Any]:
    """The flags given; `none` means "no limit" for that window (an override too)."""
    from qlensctl.errors import ConfigError

    out: dict[str, Any] = {}
    for name, raw, kind in (("daily", daily, float), ("monthly", monthly, float), ("rpm", rpm, int),
                            ("tpm", tpm, int)):
        if raw is None:
            continue
        if raw.lower() == "none":
            out[name] = None
            continue
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"--{name} {raw!r} is not a number",
                              f"pass --{name} as a number >= 0, or `none` for no limit") from None
        if value < 0 or value != value:
            raise ConfigError(f"--{name} must be >= 0", f"pass --{name} as a number >= 0, or `none`")
        out[name] = value
    if not out:
        raise ConfigError("no limit given", "pass one or more of --daily, --monthly (USD), --rpm, --tpm")
    return out


@tenants_app.command("set-limits")
def set_limits(
    env: str = typer.Argument(..., help="Environment."),
    tenant: str = typer.Argument(..., help="Tenant."),
    daily: str = typer.Option(None, "--daily", help="USD per UTC day (`none`: no limit)."),
    monthly: str = typer.Option(None, "--monthly", help="USD per UTC month (`none`: no limit)."),
    rpm: str = typer.Option(None, "--rpm", help="Requests per minute (`none`: no limit)."),
    tpm: str = typer.Option(None, "--tpm", help="Tokens per minute (`none`: no limit)."),
    admin_key: str = ADMIN_KEY, url: str = URL, port_forward: bool = PORT_FORWARD,
    kube_context: str = KUBE_CONTEXT, yes: bool = YES, as_json: bool = JSON,
) -> None:
    """Override TENANT's limits (the windows given; the others keep their values)."""
    from qlensctl import admin_api
    from qlensctl.environments import load_environment

    limits = _given(daily, monthly, rpm, tpm)
    if load_environment(env).is_production:
        output.confirm(f"Set limits {limits} for tenant {tenant} in {env}?", yes)
    with admin_api.connect(env, admin_key, url=url, port_forward=port_forward,
                           kube_context=kube_context) as conn:
        data = conn.client.set_limits(tenant, limits)
    if as_json:
        output.emit_json(data)
        return
    _show(f"Tenant {tenant} in {conn.where}", [data])
    output.info("[dim]every gateway replica enforces it within a second; no deploy[/dim]")


@tenants_app.command("clear-limits")
def clear_limits(
    env: str = typer.Argument(..., help="Environment."),
    tenant: str = typer.Argument(..., help="Tenant."),
    admin_key: str = ADMIN_KEY, url: str = URL, port_forward: bool = PORT_FORWARD,
    kube_context: str = KUBE_CONTEXT, yes: bool = YES, as_json: bool = JSON,
) -> None:
    """Drop TENANT's overrides: the environment's defaults apply again."""
    from qlensctl import admin_api
    from qlensctl.environments import load_environment

    if load_environment(env).is_production:
        output.confirm(f"Clear the limits of tenant {tenant} in {env}?", yes)
    with admin_api.connect(env, admin_key, url=url, port_forward=port_forward,
                           kube_context=kube_context) as conn:
        data = conn.client.clear_limits(tenant)
    if as_json:
        output.emit_json(data)
        return
    _show(f"Tenant {tenant} in {conn.where}", [data])
