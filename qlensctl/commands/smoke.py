"""`qlensctl smoke-test [ENV]`: health, models, a completion, a cache hit and metrics of a running QLens.

Where it looks: a local stack (`local`, the default, or any environment started with `up --detach`),
a cluster environment through its public URL (its Ingress domain), the same environment through a
port-forward to svc/qlens-gateway (`--port-forward`), or any gateway (`--url`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from qlensctl import output

_MARKS = {"pass": "[green]PASS[/green]", "fail": "[red]FAIL[/red]", "skip": "[yellow]SKIP[/yellow]"}


def smoke_test(
    env: str = typer.Argument(None, show_default=False,
                              help="Environment: local (its running stack) [default], or a cluster "
                                   "environment such as staging or production (its URL)."),
    env_option: str = typer.Option(None, "--env", "-e", show_default=False,
                                   help="Same as ENV (kept for scripts)."),
    url: str = typer.Option(None, "--url", show_default=False,
                            help="Check the gateway at this URL instead (only it must be reachable)."),
    port_forward: bool = typer.Option(False, "--port-forward",
                                      help="Reach svc/qlens-gateway through the Kubernetes API server "
                                           "(like `kubectl port-forward`) instead of the environment's URL."),
    kube_context: str = typer.Option(None, "--kube-context", show_default=False,
                                     help="Kube context for --port-forward [default: the current one; "
                                          "production: its pinned one]."),
    api_key: str = typer.Option(None, "--api-key", envvar="QLENS_API_KEY", show_default=False,
                                help="API key for environments that require one (never printed)."),
    state_dir: Path = typer.Option(None, "--state-dir", help="Where a detached stack was recorded."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds each request may take."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    model: str = typer.Option(None, "--model", show_default=False,
                              help="Model for the completion and cache checks [default: the environment's "
                                   "smokeTest.model, else echo when served, else the first listed]."),
) -> None:
    """Check a running QLens end to end; exit 1 naming every check that failed."""
    from qlensctl import local, smoke
    from qlensctl.errors import ConfigError, OperationError

    if env and env_option and env != env_option:
        raise ConfigError(f"two environments given: {env!r} and --env {env_option!r}", "pass one of them")
    name = env or env_option
    if port_forward:
        if url:
            raise ConfigError("--port-forward and --url are exclusive",
                              "--port-forward finds the gateway of ENV; --url is for any other gateway")
        if not name:
            raise ConfigError("--port-forward needs an environment",
                              "e.g. `qlensctl smoke-test staging --port-forward`")
        results, where, notes = _through_port_forward(name, kube_context, api_key, timeout, model)
    else:
        where = smoke.targets(name, url, state_dir or local.default_state_dir())
        smoke.require_key(where.needs_key, api_key, name or "local")
        results, notes = _run(where, api_key, timeout, model or where.model), []

    bad = smoke.failed(results)
    if as_json:
        output.emit_json({"ok": not bad, "target": where.gateway_url, "source": where.source,
                          "checks": [r.to_dict() for r in results]})
    else:
        output.table(
            f"Smoke test: {where.source}",
            ["check", "result", "ms", "detail"],
            [[r.name, _MARKS[r.status], f"{r.ms:.1f}", r.detail] for r in results],
        )
    for note in notes:
        output.warn(note)
    if bad:
        raise OperationError(f"smoke test failed: {', '.join(r.name for r in bad)}", where.hint)
    if not as_json:
        output.info(f"[green]all {len(results)} checks passed[/green]")


def _run(where: Any, api_key: str | None, timeout: float, model: str | None) -> list[Any]:
    from qlensctl import smoke

    with output.spinner(f"smoke-testing {where.gateway_url}") as update:
        return smoke.run_smoke(where.gateway_url, where.service_urls, api_key, timeout=timeout,
                               progress=lambda name: update(f"checking {name}"), model=model)


def _through_port_forward(env: str, kube_context: str | None, api_key: str | None,
                          timeout: float, model: str | None) -> tuple[list[Any], Any, list[str]]:
    """The checks through a port-forward to svc/qlens-gateway of `env`.

    Returns the results, the targets (for the title) and what went wrong with the forward's
    streams during the checks (shown as warnings: they explain failed checks).
    """
    from qlensctl import smoke
    from qlensctl.cluster import connect
    from qlensctl.environments import load_environment

    environment = load_environment(env)
    smoke.require_key(environment.auth.required, api_key, env)
    kube = connect(environment, kube_context).kube  # the context guard, as for deploy
    try:
        with output.spinner(f"smoke-testing {env} through a port-forward") as update:
            run = smoke.run_through_port_forward(kube, environment, api_key, timeout, progress=update,
                                                 model=model)
    finally:
        kube.close()
    hint = f"the detail column says why; `qlensctl status {env}` shows the pods and recent events"
    where = smoke.Targets(run.url, None, f"{env} ({run.route})", hint=hint)
    return run.results, where, [f"port-forward: {e}" for e in run.stream_errors]
