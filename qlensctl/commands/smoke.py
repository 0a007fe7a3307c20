"""`qlensctl smoke-test`: health, models, a completion, a cache hit and metrics of a running QLens."""

from __future__ import annotations

from pathlib import Path

import typer

from qlensctl import output

_MARKS = {"pass": "[green]PASS[/green]", "fail": "[red]FAIL[/red]", "skip": "[yellow]SKIP[/yellow]"}


def register(app: typer.Typer) -> None:
    app.command("smoke-test")(smoke_test)


def smoke_test(
    env: str = typer.Option(None, "--env", "-e", show_default=False,
                            help="Environment whose local stack to check [default: local]."),
    url: str = typer.Option(None, "--url", show_default=False,
                            help="Check the gateway at this URL instead (only it must be reachable)."),
    api_key: str = typer.Option(None, "--api-key", envvar="QLENS_API_KEY", show_default=False,
                                help="API key for environments that require one (never printed)."),
    state_dir: Path = typer.Option(None, "--state-dir", help="Where a detached stack was recorded."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds each request may take."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Check a running QLens end to end; exit 1 naming every check that failed."""
    from qlensctl import local, smoke
    from qlensctl.errors import OperationError

    state = state_dir or local.default_state_dir()
    where = smoke.targets(env, url, state)
    with output.spinner(f"smoke-testing {where.gateway_url}") as status:
        def progress(name: str) -> None:
            if status is not None:
                status.update(f"checking {name}")

        results = smoke.run_smoke(where.gateway_url, where.service_urls, api_key, timeout=timeout,
                                  progress=progress)
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
    if bad:
        raise OperationError(
            f"smoke test failed: {', '.join(r.name for r in bad)}",
            "the detail column says why" + ("" if url else f"; service logs are in {state / 'logs'}"),
        )
    if not as_json:
        output.info(f"[green]all {len(results)} checks passed[/green]")
