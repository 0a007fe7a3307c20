"""Every alert of the chart's PrometheusRule, proven with `promtool test rules`.

The rules are what charts/qlens renders for an environment (tests/support/prometheus.chart_rules),
and the test cases are generated here from the same thresholds: for each alert, series on which its
condition holds (it must fire, with exactly its labels) and healthy series (it must stay silent).
An alert without a case fails the test, so a new alert cannot ship unproven. Annotations are
stripped for `promtool test rules` (it compares them verbatim, `$value` included); `promtool check
rules` checks the full rendered rules, annotation templates and all.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.prometheus import alert_rules, chart_rules, promtool

NS = "qlens-production"
GW = f'namespace="{NS}",service="gateway",route="/v1/chat/completions"'
PRODUCTION = Path(__file__).resolve().parents[2] / "environments" / "production.yaml"
EVAL = "100m"  # past every `for` (15m at most) and the spend rate's 1h window
SAMPLES = 120  # one per minute


@dataclass(frozen=True)
class Case:
    firing: list[tuple[str, str]]  # (series, values) on which the alert fires
    healthy: list[tuple[str, str]]  # (series, values) on which it stays silent
    labels: dict[str, str]  # the labels the firing alert carries (besides alertname)


def counter(per_minute: float) -> str:
    return f"0+{per_minute:g}x{SAMPLES}"


def gauge(value: float) -> str:
    return f"{value:g}x{SAMPLES}"


def buckets(metric: str, selector: str, les: tuple[str, ...], filled_from: str) -> list[tuple[str, str]]:
    """A histogram whose observations (10 a minute) all fall in bucket `filled_from`."""
    start = les.index(filled_from)
    return [(f'{metric}_bucket{{{selector},le="{le}"}}', counter(10 if i >= start else 0))
            for i, le in enumerate(les)]


def cases(a: dict[str, Any], total: float) -> dict[str, Case]:
    """One case per alert, from the thresholds `a` (monitoring.alerts) and the total daily limit."""
    up = f'up{{namespace="{NS}",job="qlens-router",instance="10.0.0.7:8081"}}'
    up2 = f'up{{namespace="{NS}",job="qlens-router",instance="10.0.0.8:8081"}}'
    err = a["errorRate"]
    ok = 100.0
    perr = a["providerErrorRatio"]
    dep = 'provider="azureOpenAI",deployment="azureOpenAI/gpt-4"'
    preq = f"qlens_provider_requests_total{{namespace=\"{NS}\",{dep}"
    lat, ovh, ttft = a["latencyP95Seconds"], a["overheadP95Seconds"], a["ttftP95Seconds"]
    remaining = f'qlens_budget_remaining_usd{{namespace="{NS}",scope="total"}}'
    cost = f'qlens_cost_usd_total{{namespace="{NS}",scope="total"}}'
    spent_warn = a["costWarningRatio"]
    circuit = f'qlens_circuit_state{{namespace="{NS}",deployment="azureOpenAI/gpt-4"}}'
    return {
        "QLensServiceDown": Case(
            firing=[(up, gauge(0)), (up2, gauge(0))], healthy=[(up, gauge(0)), (up2, gauge(1))],
            labels={"severity": "critical", "job": "qlens-router"}),
        "QLensInstanceDown": Case(
            firing=[(up, gauge(0)), (up2, gauge(1))], healthy=[(up, gauge(1)), (up2, gauge(1))],
            labels={"severity": "warning", "namespace": NS, "job": "qlens-router",
                    "instance": "10.0.0.7:8081"}),
        "QLensHighErrorRate": Case(
            firing=[(f'qlens_requests_total{{{GW},status="200"}}', counter(ok)),
                    (f'qlens_requests_total{{{GW},status="503"}}', counter(ok * err * 2))],
            healthy=[(f'qlens_requests_total{{{GW},status="200"}}', counter(ok)),
                     (f'qlens_requests_total{{{GW},status="503"}}', counter(ok * err / 2)),
                     (f'qlens_requests_total{{{GW},status="429"}}', counter(ok))],  # 4xx are not errors
            labels={"severity": "critical"}),
        "QLensDailySpendNearLimit": Case(
            firing=[(remaining, gauge(total * (1 - spent_warn) / 2))],
            healthy=[(remaining, gauge(total * (1 - spent_warn) * 2))],
            labels={"severity": "warning"}),
        "QLensDailyLimitReached": Case(
            firing=[(remaining, gauge(0))], healthy=[(remaining, gauge(total / 100))],
            labels={"severity": "critical"}),
        "QLensSpendRateHigh": Case(  # per minute: the limit over a day, doubled / halved
            firing=[(cost, counter(total / 1440 * 2))], healthy=[(cost, counter(total / 1440 / 2))],
            labels={"severity": "warning"}),
        "QLensCircuitOpen": Case(
            firing=[(circuit, gauge(2))], healthy=[(circuit, gauge(1))],
            labels={"severity": "warning", "deployment": "azureOpenAI/gpt-4"}),
        "QLensProviderErrorRatio": Case(
            firing=[(f'{preq},outcome="success"}}', counter(ok)),
                    (f'{preq},outcome="server_error"}}', counter(ok * perr * 2))],
            healthy=[(f'{preq},outcome="success"}}', counter(ok)),
                     (f'{preq},outcome="server_error"}}', counter(ok * perr / 2)),
                     (f'{preq},outcome="client_gone"}}', counter(ok))],  # a client leaving is no failure
            labels={"severity": "warning", "provider": "azureOpenAI", "deployment": "azureOpenAI/gpt-4"}),
        "QLensGatewayLatencyHigh": Case(
            firing=buckets("qlens_request_duration_seconds", GW, (f"{lat / 2:g}", f"{lat:g}", f"{lat * 3:g}",
                                                                    "+Inf"), f"{lat * 3:g}"),
            healthy=buckets("qlens_request_duration_seconds", GW, (f"{lat / 2:g}", f"{lat:g}", f"{lat * 3:g}",
                                                                     "+Inf"), f"{lat / 2:g}"),
            labels={"severity": "warning"}),
        "QLensGatewayOverheadHigh": Case(
            firing=buckets("qlens_gateway_overhead_seconds", f'namespace="{NS}"',
                           (f"{ovh / 2:g}", f"{ovh:g}", f"{ovh * 3:g}", "+Inf"), f"{ovh * 3:g}"),
            healthy=buckets("qlens_gateway_overhead_seconds", f'namespace="{NS}"',
                            (f"{ovh / 2:g}", f"{ovh:g}", f"{ovh * 3:g}", "+Inf"), f"{ovh / 2:g}"),
            labels={"severity": "warning"}),
        "QLensTimeToFirstTokenHigh": Case(
            firing=buckets("qlens_time_to_first_token_seconds", f'namespace="{NS}",model="gpt-4"',
                           (f"{ttft / 2:g}", f"{ttft:g}", f"{ttft * 3:g}", "+Inf"), f"{ttft * 3:g}")
            + buckets("qlens_time_to_first_token_seconds", f'namespace="{NS}",model="gpt-35-turbo"',
                      (f"{ttft / 2:g}", f"{ttft:g}", f"{ttft * 3:g}", "+Inf"), f"{ttft / 2:g}"),
            healthy=buckets("qlens_time_to_first_token_seconds", f'namespace="{NS}",model="gpt-4"',
                            (f"{ttft / 2:g}", f"{ttft:g}", f"{ttft * 3:g}", "+Inf"), f"{ttft / 2:g}"),
            labels={"severity": "warning", "model": "gpt-4"}),  # only the slow model
    }


def without_annotations(rules: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(rules)
    for g in out["groups"]:
        for r in g["rules"]:
            r.pop("annotations", None)
    return out


def promtool_tests(rules_file: str, all_cases: dict[str, Case]) -> dict[str, Any]:
    tests = []
    for name, case in sorted(all_cases.items()):
        for series, expected in ((case.firing, [{"exp_labels": case.labels}]), (case.healthy, [])):
            tests.append({
                "name": f"{name} {'fires' if expected else 'stays silent'}",
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "alert_rule_test": [{"eval_time": EVAL, "alertname": name, "exp_alerts": expected}],
            })
    return {"rule_files": [rules_file], "evaluation_interval": "1m", "tests": tests}


def run_promtool_tests(tmp_path: Path, rules: dict[str, Any], all_cases: dict[str, Case]) -> str:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(without_annotations(rules)))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(promtool_tests("rules.yaml", all_cases)))
    result = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


THRESHOLDS: list[tuple[str, dict[str, Any]]] = [
    ("chart defaults", {}),
    ("other thresholds", {"errorRate": 0.2, "providerErrorRatio": 0.3, "latencyP95Seconds": 2,
                          "overheadP95Seconds": 0.01, "ttftP95Seconds": 1, "costWarningRatio": 0.5}),
]


@pytest.mark.parametrize(("label", "overrides"), THRESHOLDS, ids=[t[0] for t in THRESHOLDS])
def test_every_alert_fires_on_its_condition_and_stays_silent_on_healthy_series(
        tmp_path: Path, label: str, overrides: dict[str, Any]) -> None:
    rules = chart_rules("production", alerts=overrides)
    all_cases = cases(chart_rules_alert_values(overrides), total=1000)
    assert set(all_cases) == set(alert_rules(rules)), "every rendered alert needs a case here"
    out = run_promtool_tests(tmp_path, rules, all_cases)
    assert "SUCCESS" in out


def chart_rules_alert_values(overrides: dict[str, Any]) -> dict[str, Any]:
    from qlensctl.environments import load_environment
    from qlensctl.render import render_values
    from tests.support.prometheus import ROOT

    v = render_values(load_environment(str(ROOT / "environments" / "production.yaml")), version="v1")
    return {**v["monitoring"]["alerts"], **overrides}


def test_a_wrong_case_fails_promtool(tmp_path: Path) -> None:
    """Negative control: promtool really evaluates (a healthy series expected to fire fails)."""
    rules = chart_rules("production")
    broken = cases(chart_rules_alert_values({}), total=1000)
    case = broken["QLensHighErrorRate"]
    broken = {"QLensHighErrorRate": Case(firing=case.healthy, healthy=case.firing, labels=case.labels)}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(without_annotations(rules)))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(promtool_tests("rules.yaml", broken)))
    result = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode == 1 and "QLensHighErrorRate" in result.stdout + result.stderr


@pytest.mark.parametrize("env", ["production", "staging", "local"])
def test_rendered_rules_pass_promtool_check(tmp_path: Path, env: str) -> None:
    """Full rules, annotations included (staging and local have no daily limit: no cost group)."""
    rules = chart_rules(env)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    count = len(alert_rules(rules))
    assert f"SUCCESS: {count} rules found" in result.stdout + result.stderr
    from qlensctl.environments import load_environment
    from tests.support.prometheus import ROOT

    limited = load_environment(str(ROOT / "environments" / f"{env}.yaml")).cost_controls.daily_limits.total
    assert count == (11 if limited else 8)  # the three cost alerts exist only with a total limit


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    for name, rule in alert_rules(chart_rules("production")).items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        ann = rule["annotations"]
        assert ann["summary"] and ann["description"] and len(ann["runbook"]) > 40, name
        assert 'namespace="qlens-production"' in rule["expr"], name


def test_windows_and_for_durations_are_values() -> None:
    overrides = {"rateWindow": "15s", "for": {"QLensServiceDown": "3s"}}
    rules = alert_rules(chart_rules("production", alerts=overrides))
    assert rules["QLensServiceDown"]["for"] == "3s"
    assert rules["QLensInstanceDown"]["for"] == "5m"  # not overridden: the chart's default
    expr = rules["QLensHighErrorRate"]["expr"]
    assert "[15s]" in expr and "[5m]" not in expr
    assert "3s" in rules["QLensServiceDown"]["annotations"]["description"]


def test_environment_thresholds_reach_the_rules(tmp_path: Path) -> None:
    """observability.alerts in an environment file -> rendered values -> the rule's expression."""
    from qlensctl.environments import parse_environment
    from qlensctl.render import render_values

    data = yaml.safe_load(PRODUCTION.read_text())
    data["observability"] = {"alerts": {"errorRate": 0.02, "for": {"QLensHighErrorRate": "90s"}}}
    v = render_values(parse_environment(data, "production.yaml"), version="v1.0.0")
    assert v["monitoring"]["alerts"]["errorRate"] == 0.02
    assert v["monitoring"]["alerts"]["for"] == {"QLensHighErrorRate": "90s"}
    rule = alert_rules(chart_rules("production", alerts=v["monitoring"]["alerts"]))["QLensHighErrorRate"]
    assert rule["expr"].endswith("> 0.02") and rule["for"] == "90s"


def test_a_bad_duration_is_a_config_error() -> None:
    from qlensctl.environments import parse_environment
    from qlensctl.errors import ConfigError

    data = yaml.safe_load(PRODUCTION.read_text())
    data["observability"] = {"alerts": {"for": {"QLensServiceDown": "two minutes"}}}
    with pytest.raises(ConfigError, match="QLensServiceDown"):
        parse_environment(data, "production.yaml")

