"""The Grafana dashboard: one source, charts/qlens/dashboards/qlens.json, two ways out.

The chart ships it as ConfigMap qlens-dashboard (label grafana_dashboard: "1", picked up by
Grafana's dashboard sidecar) when monitoring.mode is full; `qlensctl dashboard ENV -o FILE.json`
writes it for importing by hand, with the environment's namespace preselected. Queries use the
`datasource` and `namespace` variables: no data source UID is written anywhere.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from qlensctl.environments import Environment
from qlensctl.errors import OperationError
from qlensctl.render import chart_dir

DASHBOARD_FILE = Path("dashboards") / "qlens.json"
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def dashboard_path() -> Path:
    return chart_dir() / DASHBOARD_FILE


def load_dashboard() -> dict[str, Any]:
    path = dashboard_path()
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise OperationError(f"cannot read the dashboard {path}: {exc.strerror}",
                             "check QLENS_CHART points at charts/qlens") from None


def dashboard_for(env: Environment) -> dict[str, Any]:
    """The dashboard with `env`'s namespace as the namespace variable's current value."""
    dash = load_dashboard()
    for var in dash["templating"]["list"]:
        if var["name"] == "namespace":
            var["current"] = {"selected": True, "text": env.namespace, "value": env.namespace}
    return dash


def dashboard_text(env: Environment) -> str:
    return json.dumps(dashboard_for(env), indent=2) + "\n"


def expressions(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query in the dashboard."""
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", []) if t.get("expr")]
