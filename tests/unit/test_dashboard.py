"""The Grafana dashboard: one source (charts/qlens/dashboards/qlens.json) shipped two ways.

The chart's ConfigMap (monitoring: full, label grafana_dashboard: "1") carries the file byte for
byte; `qlensctl dashboard ENV -o FILE` writes it with ENV's namespace preselected. Variables, not
UIDs, name the data source; the panels the issue asks for are there. Whether every query parses
and names only exposed metrics is checked against a real Prometheus in
tests/integration/test_observability_prometheus.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from qlensctl.dashboard import dashboard_path, expressions, load_dashboard
from tests.support.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _checkout_environments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QLENS_ENVIRONMENTS", str(ROOT / "environments"))


def _configmaps(env: str) -> dict[str, dict]:
    from qlensctl.environments import load_environment
    from qlensctl.helm import EmbeddedHelm, manifests
    from qlensctl.render import chart_dir, render_values

    e = load_environment(env)
    text = EmbeddedHelm().template(chart_dir(), render_values(e, version="v1.0.0"), e.namespace)
    return {o["metadata"]["name"]: o for o in manifests(text) if o["kind"] == "ConfigMap"}


def test_full_monitoring_ships_the_dashboard_as_a_sidecar_configmap() -> None:
    cm = _configmaps("production")["qlens-dashboard"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "qlens-production"
    assert json.loads(cm["data"]["qlens.json"]) == load_dashboard()
    assert "qlens-dashboard" not in _configmaps("staging")  # basic monitoring: no Grafana assumed


def test_datasource_and_namespace_are_variables_and_no_uid_is_hard_coded() -> None:
    dash = load_dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["namespace"]["type"] == "query"
    text = dashboard_path().read_text()
    uids = set(re.findall(r'"uid":\s*"([^"]*)"', text))
    # the dashboard's own uid (the guide's /d/qlens-dashboard URL) and the data source variable
    assert uids == {"${datasource}", "qlens-dashboard"}
    for title, expr in expressions(dash):
        assert 'namespace="$namespace"' in expr, title


def test_the_issues_panels_are_there() -> None:
    titles = " | ".join(p["title"] for p in load_dashboard()["panels"]).lower()
    for wanted in ("request rate", "latency", "time to first token", "errors by status", "provider health",
                   "provider latency", "circuit", "retries and fallbacks", "spend today vs limit",
                   "cache hit rate", "cpu", "memory"):
        assert wanted in titles, wanted
    latency = next(p for p in load_dashboard()["panels"] if p["title"].startswith("Gateway latency"))
    assert [t["legendFormat"] for t in latency["targets"]] == ["p50", "p95", "p99"]


def test_qlensctl_dashboard_writes_the_file_with_the_namespace_preselected(tmp_path: Path) -> None:
    out = tmp_path / "qlens.json"
    result = run_cli("dashboard", "staging", "-o", str(out))
    assert result.code == 0, result.text
    written = json.loads(out.read_text())
    ns = next(v for v in written["templating"]["list"] if v["name"] == "namespace")
    assert ns["current"]["value"] == "qlens-staging"
    assert written["panels"] == load_dashboard()["panels"]


def test_qlensctl_dashboard_unknown_environment_is_a_usage_error() -> None:
    result = run_cli("dashboard", "nowhere")
    assert result.code == 2
    assert "unknown environment" in result.text
