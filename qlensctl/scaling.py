"""Replica counts of the three deployments, and the HorizontalPodAutoscaler that may own them.

`scale` and `maintenance start|end` use this layer, on top of qlensctl.kube. It changes only the
Deployment's scale subresource (what `kubectl scale deployment qlens-gateway --replicas=5`
does), says what an HPA will do with a manual count, and judges health as `kubectl rollout
status` does. It returns data and raises qlensctl.errors types; it never prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qlensctl import diagnose
from qlensctl.errors import ClusterError, ConfigError, OperationError
from qlensctl.kube import SERVICES, deployment_name

if TYPE_CHECKING:
    from qlensctl.kube import DeploymentStatus, Kube
    from qlensctl.smoke import CheckResult

MAX_REPLICAS = 100


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

    def as_dict(self, replicas: int) -> dict[str, Any]:
        """The HPA's bounds (named as `status --json` names them) and its verdict on `replicas`."""
        return {**asdict(self), "verdict": self.verdict(replicas)}


@dataclass(frozen=True)
class ScaleChange:
    service: str
    deployment: str
    before: int
    after: int
    autoscaler: Autoscaler | None

    def as_dict(self) -> dict[str, Any]:
        return {"service": self.service, "deployment": self.deployment, "before": self.before,
                "after": self.after,
                "autoscaler": self.autoscaler.as_dict(self.after) if self.autoscaler else None}


@dataclass(frozen=True)
class ScaleResult:
    """What `scale` changed in an environment: one change per deployment it was asked about."""

    environment: str
    namespace: str
    changes: list[ScaleChange]

    def as_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "namespace": self.namespace,
                "changes": [c.as_dict() for c in self.changes]}


@dataclass(frozen=True)
class MaintenanceStart(ScaleResult):
    """`maintenance start`: the values backup taken first, then the extra replicas."""

    backup: Path

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "backup": str(self.backup)}


@dataclass(frozen=True)
class MaintenanceEnd(ScaleResult):
    """`maintenance end`: the health and smoke checks that passed, then the scale-back."""

    health: list[DeploymentStatus]
    smoke_target: str  # where the smoke test ran: a URL, or the port-forward's route
    smoke: list[CheckResult]

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "health": [s.as_dict() for s in self.health],
                "smoke": {"target": self.smoke_target, "checks": [r.to_dict() for r in self.smoke]}}


def _service_deployment(kube: Kube, namespace: str, service: str) -> Any:
    name = deployment_name(service)
    d = kube.deployment(namespace, name)
    if d is None:
        raise ClusterError(f"deployment {name} not found in namespace {namespace}",
                           "is the release deployed? `qlensctl status ENV` shows what is there")
    return d


def current_replicas(kube: Kube, namespace: str, service: str) -> int:
    return int(_service_deployment(kube, namespace, service).spec.replicas or 0)


def autoscaler_for(kube: Kube, namespace: str, service: str) -> Autoscaler | None:
    """The HPA whose scale target is this service's Deployment, if any."""
    target = f"Deployment/{deployment_name(service)}"
    for hpa in kube.autoscalers(namespace):
        if hpa.target == target:
            return Autoscaler(hpa.name, hpa.min_replicas, hpa.max_replicas, hpa.target_cpu)
    return None


def plan(kube: Kube, namespace: str, service: str, replicas: int) -> ScaleChange:
    """What `scale` would change, read before asking for confirmation."""
    check_request(service, replicas)
    before = current_replicas(kube, namespace, service)
    hpa = autoscaler_for(kube, namespace, service)
    return ScaleChange(service, deployment_name(service), before, replicas, hpa)


def apply(kube: Kube, namespace: str, change: ScaleChange) -> ScaleChange:
    """Set the deployment's scale; returns the change with the count the cluster now holds."""
    if change.before == change.after:
        return change
    now = kube.scale(namespace, change.deployment, change.after)
    return ScaleChange(change.service, change.deployment, change.before, now, change.autoscaler)


def wait_healthy(kube: Kube, namespace: str, timeout: float,
                 progress: Callable[[list[DeploymentStatus]], None] | None = None) -> list[DeploymentStatus]:
    """Every deployment rolled out with all replicas available, within `timeout`, else OperationError."""
    names = [deployment_name(s) for s in SERVICES]
    done, states = kube.wait_rollout(namespace, names, timeout, progress)
    if not done:
        found = {s.name for s in states}
        problems = [f"{s.name}: {s.message}" for s in states if not s.done]
        problems += [f"{n}: missing" for n in names if n not in found]
        why = diagnose.summary(diagnose.unready_pods(kube, namespace))
        raise OperationError(f"not healthy after {timeout:.0f}s: {'; '.join(problems)}"
                             + (f"\nunready pods:\n{why}" if why else ""),
                             f"inspect with `kubectl get pods -n {namespace}` and "
                             f"`kubectl describe deployment -n {namespace}`")
    return states
