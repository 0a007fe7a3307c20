"""`qlensctl usage ENV`: what each tenant, user or model used and spent (the usage ledger).

Reads the gateway's /admin/v1/usage (rollups per UTC day x tenant x user x model) through the
environment's URL, a local stack, `--url` or `--port-forward`. A table for people, `--json` or
`--csv` for machines, `--plot FILE.png` for a stacked daily spend chart by the chosen dimension.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import typer

from qlensctl import output
from qlensctl.commands.options import ADMIN_KEY, JSON, KUBE_CONTEXT, PORT_FORWARD, URL

COLUMNS = ("requests", "input_tokens", "output_tokens", "cost_usd", "cache_hits", "errors")
DIMENSIONS = ("tenant", "user", "model", "day")


def usage(
    env: str = typer.Argument(..., help="Environment."),
    start: str = typer.Option(None, "--from", show_default=False,
                              help="First UTC day, YYYY-MM-DD [default: the 1st of this month]."),
    end: str = typer.Option(None, "--to", show_default=False, help="Last UTC day [default: today]."),
    by: str = typer.Option("tenant", "--by", help="Group by tenant, user, model or day."),
    tenant: str = typer.Option(None, "--tenant", show_default=False, help="Only this tenant."),
    as_csv: bool = typer.Option(False, "--csv", help="Print the rows as CSV."),
    plot: Path = typer.Option(None, "--plot", show_default=False,
                              help="Also write a stacked daily spend chart by --by to this PNG file."),
    admin_key: str = ADMIN_KEY, url: str = URL, port_forward: bool = PORT_FORWARD,
    kube_context: str = KUBE_CONTEXT, as_json: bool = JSON,
) -> None:
    """Usage and spend per tenant, user, model or day, from the gateway's ledger."""
    from qlensctl import admin_api
    from qlensctl.errors import ConfigError

    if by not in DIMENSIONS:
        raise ConfigError(f"--by {by!r} is not a dimension", f"use one of: {', '.join(DIMENSIONS)}")
    if as_json and as_csv:
        raise ConfigError("--json and --csv are exclusive", "pick one output format")
    if plot is not None and plot.suffix.lower() != ".png":
        raise ConfigError(f"--plot {plot}: the chart is a PNG", "name the file FILE.png")
    with admin_api.connect(env, admin_key, url=url, port_forward=port_forward,
                           kube_context=kube_context) as conn:
        report = conn.client.usage(start, end, by, tenant)
        daily = conn.client.usage(start, end, f"day,{by}" if by != "day" else "day", tenant) if plot else None
    if plot is not None and daily is not None:
        from qlensctl import usage_plot

        usage_plot.plot(daily["data"], by, daily["from"], daily["to"], plot,
                        f"QLens spend by {by}, {daily['from']} .. {daily['to']} ({env})")
    if as_json:
        output.emit_json(report)
        return
    if as_csv:
        _csv(report, by)
        return
    rows = [[str(r[by]), *(_cell(c, r[c]) for c in COLUMNS)] for r in report["data"]]
    total = report["total"]
    rows.append(["total", *(_cell(c, total[c]) for c in COLUMNS)])
    output.table(f"Usage of {env} by {by}, {report['from']} .. {report['to']}", [by, *COLUMNS], rows)
    if plot is not None:
        output.info(f"[dim]chart written to {plot}[/dim]")


def _cell(column: str, value: Any) -> str:
    return f"{value:.6f}" if column == "cost_usd" else str(value)


def _csv(report: dict[str, Any], by: str) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([by, *COLUMNS, "cost_micros"])
    for r in report["data"]:
        writer.writerow([r[by], *(_cell(c, r[c]) for c in COLUMNS), r["cost_micros"]])
