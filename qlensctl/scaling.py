"""Replica counts of the three deployments, and the HorizontalPodAutoscaler that may own them.

`scale`, `maintenance start|end` use this layer. It changes only the Deployment's scale
subresource (what `kubectl scale deployment qlens-gateway --replicas=5` does), reads HPAs through
autoscaling/v1 (served by every Kubernetes version) to say what the autoscaler will do with a
manual count, and reports readiness per deployment. It returns data and raises qlensctl.errors
types; it never prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qlensctl.errors import ClusterError, ConfigError, OperationError

SERVICES = ("gateway", "router", "cache")
MAX_REPLICAS = 100


def deployment_name(service: str) -> str:
    return f"qlens-{service}"


def check_request(service: str, replicas: int | None = None) -> None:
    """Bad service names and counts are usage errors (exit 2), caught before the cluster is asked."""
    if service not in SERVICES:
        raise ConfigError(f"unknown service {service!r}", f"use one of: {', '.join(SERVICES)}")
    if replicas is not None and not 0 <= replicas <= MAX_REPLICAS:
        raise ConfigError(f"replicas must be between 0 and {MAX_REPLICAS} (got {replicas})",
                          "pass a count in that range; 0 stops the service")


@dataclass(frozen=True)
class Autoscaler:
    name: str
    min_replicas: int
    max_replicas: int
    target_cpu: int | None

    def verdict(self, replicas: int) -> str:
        """What the HPA will do with a manual `replicas`, in words."""
        bounds = f"min {self.min_replicas}, max {self.max_replicas}"
        if self.target_cpu:
            bounds += f", target CPU {self.target_cpu}%"
        if replicas == 0:
            return f"HPA {self.name} ({bounds}) stops autoscaling while the deployment is at 0"
        if replicas < self.min_replicas:
            return f"HPA {self.name} ({bounds}) will raise it back to {self.min_replicas} within seconds"
        if replicas > self.max_replicas:
            return f"HPA {self.name} ({bounds}) will lower it back to {self.max_replicas} within seconds"
        return f"HPA {self.name} ({bounds}) will keep adjusting it to CPU load"


@dataclass(frozen=True)
class ScaleChange:
    service: str
    deployment: str
    before: int
    after: int
    autoscaler: Autoscaler | None


@dataclass(frozen=True)
class DeploymentState:
    name: str
    desired: int
    ready: int
    updated: int
    available: int

    @property
    def ok(self) -> bool:
        return self.ready >= self.desired and self.updated >= self.desired and self.available >= self.desired


def _apps(api: Any) -> Any:
    from kubernetes import client

    return client.AppsV1Api(api)


def _fail(exc: Exception, what: str, namespace: str) -> Exception:
    from kubernetes.client.rest import ApiException

    if isinstance(exc, ApiException):
        if exc.status == 404:
            return ClusterError(f"{what}: not found in namespace {namespace}",
                                "is the release deployed? `qlensctl status ENV` shows what is there")
        if exc.status in (401, 403):
            return ClusterError(f"{what}: the cluster refused (HTTP {exc.status})",
                                "your kube credentials may not scale deployments here")
        return ClusterError(f"{what}: HTTP {exc.status} {exc.reason}", None)
    if isinstance(exc, OSError) or type(exc).__module__.startswith("urllib3"):
        return ClusterError(f"{what}: cannot reach the cluster ({type(exc).__name__})",
                            "check your kubeconfig and kube context")
    return exc


def current_replicas(api: Any, namespace: str, service: str) -> int:
    name = deployment_name(service)
    try:
        scale = _apps(api).read_namespaced_deployment_scale(name, namespace)
    except Exception as exc:
        raise _fail(exc, f"deployment {name}", namespace) from None
    return int(scale.spec.replicas or 0)


def autoscaler_for(api: Any, namespace: str, service: str) -> Autoscaler | None:
    """The HPA whose scale target is this service's Deployment, if any."""
    from kubernetes import client

    name = deployment_name(service)
    try:
        hpas = client.AutoscalingV1Api(api).list_namespaced_horizontal_pod_autoscaler(namespace).items
    except Exception as exc:
        raise _fail(exc, "listing HorizontalPodAutoscalers", namespace) from None
    for hpa in hpas:
        ref = hpa.spec.scale_target_ref
        if ref.kind == "Deployment" and ref.name == name:
            return Autoscaler(hpa.metadata.name, int(hpa.spec.min_replicas or 1), int(hpa.spec.max_replicas),
                              hpa.spec.target_cpu_utilization_percentage)
    return None


def plan(api: Any, namespace: str, service: str, replicas: int) -> ScaleChange:
    """What `scale` would change, read before asking for confirmation."""
    check_request(service, replicas)
    before = current_replicas(api, namespace, service)
    hpa = autoscaler_for(api, namespace, service)
    return ScaleChange(service, deployment_name(service), before, replicas, hpa)


def apply(api: Any, namespace: str, change: ScaleChange) -> ScaleChange:
    """Set the deployment's scale; returns the change with the count the cluster now holds."""
    try:
        result = _apps(api).patch_namespaced_deployment_scale(
            change.deployment, namespace, {"spec": {"replicas": change.after}})
    except Exception as exc:
        raise _fail(exc, f"scaling deployment {change.deployment}", namespace) from None
    return ScaleChange(change.service, change.deployment, change.before, int(result.spec.replicas or 0),
                       change.autoscaler)


def deployment_states(api: Any, namespace: str) -> list[DeploymentState]:
    states = []
    for service in SERVICES:
        name = deployment_name(service)
        try:
            d = _apps(api).read_namespaced_deployment(name, namespace)
        except Exception as exc:
            raise _fail(exc, f"deployment {name}", namespace) from None
        st = d.status
        states.append(DeploymentState(name, int(d.spec.replicas or 0), int(st.ready_replicas or 0),
                                      int(st.updated_replicas or 0), int(st.available_replicas or 0)))
    return states


def wait_ready(api: Any, namespace: str, timeout: float,
               progress: Callable[[list[DeploymentState]], None] | None = None) -> list[DeploymentState]:
    """Poll until every deployment has all its replicas ready (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        states = deployment_states(api, namespace)
        if progress:
            progress(states)
        if all(s.ok for s in states):
            return states
        if time.monotonic() >= deadline:
            waiting = ", ".join(f"{s.name} {s.ready}/{s.desired} ready" for s in states if not s.ok)
            raise OperationError(f"not healthy after {timeout:.0f}s: {waiting}",
                                 f"inspect with `kubectl get pods -n {namespace}` and "
                                 f"`kubectl describe deployment -n {namespace}`")
        time.sleep(0.5)
