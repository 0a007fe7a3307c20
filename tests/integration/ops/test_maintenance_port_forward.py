"""`maintenance end ENV --port-forward`: the smoke test through a real port-forward to
svc/qlens-gateway, through the real API server, to a real local QLens stack standing in for the
gateway pod (the kubelet's streaming endpoint is played by tests/integration/cluster's
KubeletPortForward, reused here with its fixture)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.cluster.test_smoke_cluster import (  # noqa: F401  (fixtures)
    KubeletPortForward,
    assert_forward_closed,
    kubelet,
    ready_gateway_pods,
)
from tests.k8s.harness import Target, assert_ok, deploy_staging
from tests.support.json_errors import json_error

pytestmark = pytest.mark.cluster


def test_maintenance_end_smoke_tests_through_a_port_forward(
        target: Target, kubelet: tuple[KubeletPortForward, Any]) -> None:  # noqa: F811
    streams, running = kubelet
    ns = target.staging_ns
    deploy_staging(target, "v1")
    assert_ok(target.qlensctl("maintenance", "start", "staging"), "maintenance start")

    end = target.qlensctl("maintenance", "end", "staging", "--port-forward", "--timeout", "60",
                         "--model", "echo", "--json")  # the stand-in pods serve echo
    assert_ok(end, "maintenance end")
    report = json.loads(end.out)
    pod = report["smoke"]["target"].split("-> pod/", 1)[1].split(":", 1)[0]
    assert pod in ready_gateway_pods(target, ns)
    assert {c["name"]: c["status"] for c in report["smoke"]["checks"]} == {
        "gateway /health": "pass", "gateway /health/ready": "pass", "models": "pass",
        "chat completion": "pass", "cache hit": "pass", "gateway /metrics": "pass"}
    assert {(c["service"], c["deployment"], c["before"], c["after"]) for c in report["changes"]} == {
        ("gateway", "qlens-gateway", 2, 1), ("router", "qlens-router", 2, 1), ("cache", "qlens-cache", 2, 1)}
    assert (report["environment"], report["namespace"]) == ("staging", ns)
    assert {(h["name"], h["ready"], h["done"]) for h in report["health"]} == {
        ("qlens-gateway", 2, True), ("qlens-router", 2, True), ("qlens-cache", 2, True)}
    assert _replicas(target, ns) == {"qlens-gateway": 1, "qlens-router": 1, "qlens-cache": 1}
    # the checks really went through the API server to that pod's kubelet endpoint
    assert streams.paths and all(p.startswith(f"/portForward/{ns}/{pod}?") for p in streams.paths)
    local = report["smoke"]["target"].split("port-forward ", 1)[1].split(" ->", 1)[0]
    assert_forward_closed(local)

    # the pod's port refuses: the smoke test fails, the replicas stay, the kubelet's reason is shown
    assert_ok(target.qlensctl("maintenance", "start", "staging"), "maintenance start")
    target.wait_for("two Ready gateway pods", lambda: len(ready_gateway_pods(target, ns)) == 2)
    running.stop_service("gateway")
    down = target.qlensctl("maintenance", "end", "staging", "--port-forward", "--timeout", "60", "--json")
    assert down.code == 1, down.text
    error = json_error(down)
    assert error["type"] == "OperationError" and "replicas left as they are" in error["message"]
    assert "Traceback" not in down.text
    assert "failed (gateway /health: " in down.err and "replicas left as they are" in down.err
    assert "warning: port-forward: pod qlens-gateway-" in down.err
    assert "error forwarding port 8080" in down.err
    assert _replicas(target, ns) == {"qlens-gateway": 2, "qlens-router": 2, "qlens-cache": 2}


def _replicas(on: Target, ns: str) -> dict[str, int]:
    return {d.metadata.name: d.spec.replicas for d in on.apps.list_namespaced_deployment(ns).items}
