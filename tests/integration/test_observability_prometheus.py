"""A real Prometheus (Debian's) scrapes a real local stack with the chart's alert rules loaded.

The rules are the PrometheusRule charts/qlens renders for production, with short windows from this
test's values (rate window 5s, `for` 2s for the two alerts driven here); Prometheus scrapes and
evaluates every second and adds the namespace label by relabelling, as the Prometheus Operator
does. The test drives traffic, checks the dashboard's request-rate and TTFT queries return data,
that every PromQL expression of the dashboard and the rules parses and names only metrics the
services expose, then stops the router: QLensServiceDown and QLensHighErrorRate reach `firing`,
and resolve once the router is back.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qlensctl.dashboard import expressions, load_dashboard
from tests.support.prometheus import PrometheusServer, alert_rules, chart_rules
from tests.support.stack import RunningStack, running_stack

NS = "qlens-production"  # the namespace the rendered rules select
SHORT = {"rateWindow": "5s", "for": {"QLensServiceDown": "2s", "QLensHighErrorRate": "2s"}}
ENV = {"costControls": {"dailyLimits": {"total": 1000}}, "observability": {"tenantLabels": ["default"]}}
# metric names a PromQL expression may use besides our own: Prometheus's and the process collector's
NAME = re.compile(r"\b((?:qlens|process)_[a-z0-9_]+|up)\b")


class Traffic:
    """Chat requests in a thread, each with a new prompt (never a cache hit), until stopped."""

    def __init__(self, stack: RunningStack) -> None:
        self.url = stack.gateway_url + "/v1/chat/completions"
        self.stop = threading.Event()
        self.statuses: list[int] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5, trust_env=False) as client:
            while not self.stop.is_set():
                body = {"model": "echo", "messages": [{"role": "user", "content": uuid.uuid4().hex}]}
                try:
                    self.statuses.append(client.post(self.url, json=body).status_code)
                except httpx.HTTPError:
                    self.statuses.append(0)
                self.stop.wait(0.02)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningStack, PrometheusServer]]:
    root = tmp_path_factory.mktemp("observed")
    with running_stack(root / "stack", ENV) as stack:
        targets = {f"qlens-{s}": stack.url(s).removeprefix("http://") for s in ("gateway", "router", "cache")}
        with PrometheusServer(root / "prometheus", targets, chart_rules("production", SHORT), NS) as prom:
            yield stack, prom


def _concrete(expr: str) -> str:
    """A dashboard query as Grafana would send it."""
    return expr.replace("$namespace", NS).replace("$__rate_interval", "5s")


def _firing(prom: PrometheusServer, name: str) -> bool:
    return "firing" in prom.alerts().get(name, [])


def test_traffic_shows_up_then_router_down_fires_and_resolves(observed) -> None:
    stack, prom = observed
    with Traffic(stack) as traffic:
        # the dashboard's request-rate and TTFT panels have data
        dash = {title: _concrete(e) for title, e in expressions(load_dashboard())}
        rate = next(e for t, e in dash.items() if t == "Request rate by service")
        ttft = next(e for t, e in dash.items() if t.startswith("Time to first token"))
        got = prom.wait("request rate", lambda: [r for r in prom.query(rate)
                                                 if r["metric"].get("job") == "qlens-gateway"
                                                 and float(r["value"][1]) > 0])
        assert got
        got = prom.wait("TTFT", lambda: [r for r in prom.query(ttft) if r["metric"].get("model") == "echo"
                                         and float(r["value"][1]) > 0])
        assert got
        assert not _firing(prom, "QLensServiceDown") and not _firing(prom, "QLensHighErrorRate")

        stack.stop_service("router")
        prom.wait("QLensServiceDown firing", lambda: _firing(prom, "QLensServiceDown"))
        prom.wait("QLensHighErrorRate firing", lambda: _firing(prom, "QLensHighErrorRate"))
        down = [a for a in prom.api("alerts")["alerts"] if a["labels"]["alertname"] == "QLensServiceDown"]
        assert [a["labels"]["job"] for a in down] == ["qlens-router"]
        assert 503 in traffic.statuses

        stack.restart_service("router")
        driven = {"QLensServiceDown", "QLensHighErrorRate"}
        prom.wait("alerts resolved", lambda: not driven & set(prom.alerts()))
        assert traffic.statuses[-1] == 200


def test_every_dashboard_and_rule_expression_parses_and_names_exposed_metrics(observed) -> None:
    stack, prom = observed
    with Traffic(stack):  # every metric the queries use must have been exposed at least once
        prom.wait("token metrics scraped", lambda: {"qlens_tokens_total", "qlens_tenant_cost_usd_total",
                                                    "qlens_time_per_output_token_seconds_bucket"}
                  <= prom.metric_names())
    exposed = prom.metric_names()
    exprs = [(f"panel {t}", _concrete(e)) for t, e in expressions(load_dashboard())]
    exprs += [(f"alert {n}", r["expr"]) for n, r in alert_rules(chart_rules("production")).items()]
    assert len(exprs) > 30
    unknown = {}
    for where, expr in exprs:
        prom.query(expr)  # raises PromQLError (Prometheus's parser) on a bad expression
        names = set(NAME.findall(expr))
        assert names, where
        missing = names - exposed
        if missing:
            unknown[where] = sorted(missing)
    assert not unknown, unknown


def test_a_bad_expression_is_refused_by_prometheus(observed) -> None:
    """Negative control for the check above: Prometheus's parser really answers."""
    from tests.support.prometheus import PromQLError

    _, prom = observed
    with pytest.raises(PromQLError, match="parse"):
        prom.query("sum(rate(qlens_requests_total[5s])")


def test_the_prometheus_fixture_cleans_up(tmp_path: Path) -> None:
    with PrometheusServer(tmp_path, {}) as prom:
        pid_url = prom.url
        assert prom.client.get("/-/ready").status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(pid_url + "/-/ready", timeout=1)
