"""`qlensctl render`, `template` and `lint`: an environment's Helm values and what the chart makes of them.

render   ENV [-o FILE]   the values (the deployment guide's values-ENV.yaml), no Helm involved
template ENV             every manifest the chart renders with those values (Helm engine, offline)
lint     ENV             `helm lint --strict` of the chart with those values

Nothing here talks to a cluster. The layers do the work: qlensctl.render (environment -> values)
and qlensctl.helm (the adapter; imported only by template and lint, so render stays fast).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from qlensctl import output
from qlensctl.commands.options import HELM

_ENV = typer.Argument(..., help="Environment: local, staging, production, or a YAML file.")
_VERSION = typer.Option(None, "--version", help="Image tag to render (default: the environment's image.tag).")
_KUBE_VERSION = typer.Option(
    None, "--kube-version", help="Kubernetes version the chart renders for, e.g. 1.20.0 (default: Helm's)."
)


def render(
    env: str = _ENV,
    out: Path | None = typer.Option(
        None, "-o", "--output", help="Write the values to FILE instead of stdout."
    ),
    version: str | None = _VERSION,
) -> None:
    """Render an environment into Helm values (what the deployment guide calls values-ENV.yaml)."""
    from qlensctl.environments import load_environment
    from qlensctl.render import render_values_yaml

    _emit(render_values_yaml(load_environment(env), version=version), out)


def template(
    env: str = _ENV,
    version: str | None = _VERSION,
    out: Path | None = typer.Option(
        None, "-o", "--output", help="Write the manifests to FILE instead of stdout."
    ),
    kube_version: str | None = _KUBE_VERSION,
    api_versions: list[str] = typer.Option(
        [],
        "--api-versions",
        help="Extra API versions the cluster serves (repeatable), e.g. external-secrets.io/v1.",
    ),
    helm: str = HELM,
) -> None:
    """Print every manifest the chart renders for ENV, through the Helm engine (no cluster needed)."""
    from qlensctl import helm as helm_adapter
    from qlensctl.render import chart_dir, values_for

    environment, values = values_for(env, version=version)
    engine = helm_adapter.select_helm(helm)
    _emit(engine.template(chart_dir(), values, environment.namespace, kube_version=kube_version,
                          api_versions=api_versions), out)


def lint(
    env: str = _ENV,
    version: str | None = _VERSION,
    kube_version: str | None = _KUBE_VERSION,
    helm: str = HELM,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Lint the chart with ENV's values (helm lint --strict); exit 1 on any warning or error."""
    from qlensctl import helm as helm_adapter
    from qlensctl.errors import OperationError
    from qlensctl.render import chart_dir, values_for

    environment, values = values_for(env, version=version)
    engine = helm_adapter.select_helm(helm)
    report = engine.lint(chart_dir(), values, environment.namespace, kube_version=kube_version)
    if as_json:
        output.emit_json(
            {
                "environment": environment.name,
                "ok": report.ok,
                "messages": [
                    {"severity": m.severity, "path": m.path, "message": m.message} for m in report.messages
                ],
            }
        )
    else:
        output.table(
            f"helm lint charts/qlens with {environment.name} values ({engine.kind} Helm)",
            ["severity", "path", "message"],
            [[m.severity, m.path, m.message] for m in report.messages],
        )
    if not report.ok:
        problems = report.errors + report.warnings
        raise OperationError(
            f"lint found {len(report.errors)} error(s) and {len(report.warnings)} warning(s): "
            f"{problems[0].message}",
            "fix the chart or the environment file and run `qlensctl lint` again",
        )
    if not as_json:
        output.info(f"[green]lint clean[/green]: charts/qlens with {environment.name} values")


def _emit(text: str, path: Path | None) -> None:
    """`text` to stdout, or with `-o FILE` to that file (saying so on the console)."""
    from qlensctl.errors import ConfigError

    if path is None:
        sys.stdout.write(text)
        return
    try:
        path.write_text(text)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}", "pick another path with -o") from None
    output.info(f"Wrote {path}")
