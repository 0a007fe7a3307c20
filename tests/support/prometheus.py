"""Prometheus for tests: the chart's alert rules as a rules file, promtool, and a real server.

- `chart_rules(env, alerts=...)`: the `spec.groups` of the PrometheusRule that charts/qlens renders
  for an environment (through the embedded Helm engine, with `qlensctl render`'s values and any
  monitoring.alerts overrides), so tests prove exactly what a cluster would load.
- `promtool(*args)`: Debian's promtool (package `prometheus`).
- `PrometheusServer`: Debian's `prometheus` on a free port with a temp TSDB, scraping given
  targets every second with the namespace label added by relabelling (as the Prometheus
  Operator's ServiceMonitor does) and evaluating the given rules every second.
"""

from __future__ import annotations

import copy
import functools
import json
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from qlensctl.local import free_port, stop_pid

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


@functools.cache
def _engine() -> Any:
    from qlensctl.helm import EmbeddedHelm

    return EmbeddedHelm()


def chart_rules(env: str = "production", alerts: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """{"groups": [...]} of the rendered PrometheusRule (monitoring forced to full), with
    monitoring.alerts overrides (`for` merged key by key). Rendered once per argument set."""
    return copy.deepcopy(_render_rules(env, json.dumps(alerts or {}, sort_keys=True)))


@functools.cache
def _render_rules(env: str, alerts_json: str) -> dict[str, Any]:
    from qlensctl.environments import load_environment
    from qlensctl.helm import manifests
    from qlensctl.render import chart_dir, render_values

    alerts = json.loads(alerts_json)
    environment = load_environment(str(ROOT / "environments" / f"{env}.yaml"))
    v = render_values(environment, version="v1.0.0")
    v["monitoring"] = {**v["monitoring"], "mode": "full"}
    if alerts:
        merged = {**v["monitoring"].get("alerts", {}), **alerts}
        merged["for"] = {**v["monitoring"].get("alerts", {}).get("for", {}), **alerts.get("for", {})}
        v["monitoring"]["alerts"] = merged
    text = _engine().template(chart_dir(), v, environment.namespace)
    rules = [o for o in manifests(text) if o.get("kind") == "PrometheusRule"]
    assert len(rules) == 1, [o.get("kind") for o in manifests(text)]
    return {"groups": rules[0]["spec"]["groups"]}


def alert_rules(rules: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


class PrometheusServer:
    """A real Prometheus; `with PrometheusServer(dir, targets, rules) as prom: prom.query(...)`.

    `targets`: job name -> "host:port". Every series gets namespace=`namespace`.
    """

    def __init__(self, directory: Path, targets: Mapping[str, str], rules: Mapping[str, Any] | None = None,
                 namespace: str = "qlens-test", interval: str = "1s") -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets = dict(targets)
        self.rules = rules
        self.namespace = namespace
        self.interval = interval
        self._proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, timeout=10, trust_env=False)

    def config(self) -> dict[str, Any]:
        relabel = [{"target_label": "namespace", "replacement": self.namespace}]
        return {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval,
                       "scrape_timeout": self.interval},
            "rule_files": ["rules.yaml"] if self.rules else [],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}], "relabel_configs": relabel}
                for job, target in self.targets.items()
            ],
        }

    def __enter__(self) -> PrometheusServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "prometheus.yml").write_text(yaml.safe_dump(self.config()))
        if self.rules:
            (self.directory / "rules.yaml").write_text(yaml.safe_dump(dict(self.rules)))
        log = open(self.directory / "prometheus.log", "wb")
        self._proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.directory / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--web.enable-lifecycle"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError("prometheus exited:\n" + self.log()[-2000:])
            try:
                if self.client.get("/-/ready").status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("prometheus not ready within 60s:\n" + self.log()[-2000:])

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        if self._proc is not None:
            stop_pid(self._proc.pid)
            self._proc.wait(timeout=10)

    def log(self) -> str:
        return (self.directory / "prometheus.log").read_text(errors="replace")

    # --- the HTTP API ----------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        r = self.client.get(f"/api/v1/{path}", params=params)
        body = r.json()
        if body.get("status") != "success":
            raise PromQLError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector (a scalar comes back as one sample without labels)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def alerts(self) -> dict[str, list[str]]:
        """Alert name -> the states of its active alerts (pending / firing)."""
        out: dict[str, list[str]] = {}
        for a in self.api("alerts")["alerts"]:
            out.setdefault(a["labels"]["alertname"], []).append(a["state"])
        return out

    def metric_names(self) -> set[str]:
        return set(self.api("label/__name__/values"))

    def wait(self, what: str, check: Any, timeout: float = 60.0) -> Any:
        """Poll `check()` until it returns something truthy; AssertionError naming `what` after `timeout`."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(0.25)
        raise AssertionError(f"{what}: not within {timeout}s (last: {last!r}; alerts {self.alerts()})")


class PromQLError(Exception):
    pass
