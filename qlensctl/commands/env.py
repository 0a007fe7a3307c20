"""`qlensctl env list` and `qlensctl env show ENV`: the environments as data."""

from __future__ import annotations

import typer

from qlensctl import output

env_app = typer.Typer(help="List and show environments (environments/*.yaml).", no_args_is_help=True)


@env_app.command("list")
def list_environments(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List every environment with its namespace, domain, replicas, cache and cost limit."""
    from qlensctl.environments import environment_names, load_environment

    envs = [load_environment(name) for name in environment_names()]
    rows = []
    for e in envs:
        limits = e.cost_controls.daily_limits
        rows.append(
            {
                "name": e.name,
                "namespace": e.namespace,
                "domain": e.domain,
                "replicas": f"{e.replicas.gateway}/{e.replicas.router}/{e.replicas.cache}",
                "cache": e.cache.backend,
                "dailyLimitUsd": limits.total,
                "auth": e.auth.required,
                "tls": e.tls.enabled,
                "monitoring": e.monitoring,
                "kubeContext": e.kube_context,
            }
        )
    if as_json:
        output.emit_json(rows)
        return
    keys = ["name", "namespace", "domain", "replicas", "cache", "dailyLimitUsd", "auth", "tls"]
    output.table(
        "Environments",
        ["name", "namespace", "domain", "replicas (gw/router/cache)", "cache", "limit $/day", "auth", "tls"],
        [[r[k] for k in keys] for r in rows],
    )


@env_app.command("show")
def show_environment(
    env: str = typer.Argument(..., help="Environment name (local, staging, production) or a YAML file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show one environment, validated, with every default filled in."""
    from qlensctl.environments import load_environment

    data = load_environment(env).public_dict()
    if as_json:
        output.emit_json(data)
        return
    import yaml
    from rich.syntax import Syntax

    output.console.print(Syntax(yaml.safe_dump(data, sort_keys=False), "yaml", theme="ansi_dark"))
