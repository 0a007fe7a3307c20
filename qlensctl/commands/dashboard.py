"""`qlensctl dashboard ENV [-o FILE.json]`: the Grafana dashboard for importing by hand.

In a cluster with `monitoring: full` the chart already ships it (ConfigMap qlens-dashboard, label
grafana_dashboard: "1"); this is for a Grafana without the dashboard sidecar. The layer
(qlensctl.dashboard) reads the one source, charts/qlens/dashboards/qlens.json.
"""

from __future__ import annotations

from pathlib import Path

import typer

from qlensctl.commands.chart import _ENV, _emit


def dashboard(
    env: str = _ENV,
    out: Path | None = typer.Option(
        None, "-o", "--output", help="Write the dashboard JSON to FILE instead of stdout."
    ),
) -> None:
    """Write the Grafana dashboard (JSON, Grafana's import format) with ENV's namespace preselected."""
    from qlensctl.dashboard import dashboard_text
    from qlensctl.environments import load_environment

    _emit(dashboard_text(load_environment(env)), out)
