"""Preflight: can the release's pods be scheduled at all? Checked by deploy before it applies.

A release whose requests exceed what the nodes can give stays Pending until the rollout times
out (`0/1 nodes are available: 1 Insufficient cpu`). That is known before anything is applied:
the release needs, per service, replicas x requests, plus one surge pod per Deployment while an
upgrade rolls (maxSurge 1, the old pods stay until the new ones are Ready). The nodes offer
their allocatable capacity minus what other pods already request. deploy warns when the release
does not fit, or refuses with --strict; either way the message names the numbers.

Nodes that are cordoned or not Ready offer nothing, and neither do nodes with a NoSchedule or
NoExecute taint the release's pods do not tolerate (a GPU pool, a system pool): the chart sets no
tolerations, so only the namespace's default tolerations (the PodTolerationRestriction annotation
`scheduler.alpha.kubernetes.io/defaultTolerations`) count. The check is arithmetic over totals, so it
can pass where bin-packing on several nodes would still fail: the diagnosis after a failed
rollout (qlensctl/diagnose.py) covers that case.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from qlensctl.kube import RELEASE_SELECTOR, SERVICES, Kube

RESOURCES = ("cpu", "memory")
DEFAULT_TOLERATIONS = "scheduler.alpha.kubernetes.io/defaultTolerations"


@dataclass(frozen=True)
class Shortfall:
    resource: str  # cpu or memory
    needed: Decimal  # cores or bytes
    free: Decimal
    allocatable: Decimal
    used_by_others: Decimal

    def describe(self) -> str:
        f = _fmt(self.resource)
        return (f"{self.resource}: the release requests {f(self.needed)} but the nodes have "
                f"{f(self.free)} free ({f(self.allocatable)} allocatable, {f(self.used_by_others)} "
                "requested by other pods)")

    def as_dict(self) -> dict[str, Any]:
        f = _fmt(self.resource)
        return {"resource": self.resource, "needed": f(self.needed), "free": f(self.free),
                "allocatable": f(self.allocatable), "usedByOthers": f(self.used_by_others)}


@dataclass(frozen=True)
class Report:
    pods: int  # pods the release runs at its peak (surge included)
    needed: dict[str, Decimal]
    shortfalls: list[Shortfall]
    checked: bool = True  # False: the nodes could not be read (e.g. no permission to list them)
    note: str = ""

    @property
    def fits(self) -> bool:
        return not self.shortfalls

    def describe(self) -> str:
        return "; ".join(s.describe() for s in self.shortfalls)

    def as_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "fits": self.fits if self.checked else None, "pods": self.pods,
                "needed": {r: _fmt(r)(v) for r, v in self.needed.items()},
                "shortfalls": [s.as_dict() for s in self.shortfalls], "note": self.note}


def parse_quantity(value: Any) -> Decimal:
    from kubernetes.utils import parse_quantity as parse

    return Decimal(parse(str(value)))


def release_needs(values: dict[str, Any], upgrade: bool) -> tuple[int, dict[str, Decimal]]:
    """(pods at peak, {cpu: cores, memory: bytes}) from rendered Helm values."""
    base = values.get("resources") or {}
    overrides = values.get("serviceResources") or {}
    replicas = values.get("replicas") or {}
    pods, total = 0, dict.fromkeys(RESOURCES, Decimal(0))
    for service in SERVICES:
        n = int(replicas.get(service, 1))
        if n == 0:
            continue
        n += 1 if upgrade else 0  # the surge pod of a rolling update
        requests = {**(base.get("requests") or {}), **((overrides.get(service) or {}).get("requests") or {})}
        pods += n
        for resource in RESOURCES:
            if resource in requests:
                total[resource] += n * parse_quantity(requests[resource])
    return pods, total


def check(kube: Kube, namespace: str, values: dict[str, Any], upgrade: bool) -> Report:
    pods, needed = release_needs(values, upgrade)
    try:
        nodes = kube.core.list_node().items
        running = kube.core.list_pod_for_all_namespaces(field_selector="status.phase!=Succeeded,"
                                                                       "status.phase!=Failed").items
    except Exception as exc:  # e.g. 403: namespace-scoped credentials may not list nodes
        from qlensctl.kube import cluster_error

        return Report(pods, needed, [], checked=False, note=str(cluster_error(exc, "listing nodes")))
    tolerations = _namespace_tolerations(kube, namespace)
    usable = {n.metadata.name for n in nodes
              if not n.spec.unschedulable and _ready(n) and _schedulable_for(n, tolerations)}
    allocatable = dict.fromkeys(RESOURCES, Decimal(0))
    for n in nodes:
        if n.metadata.name in usable:
            for resource in RESOURCES:
                allocatable[resource] += parse_quantity((n.status.allocatable or {}).get(resource, 0))
    used = dict.fromkeys(RESOURCES, Decimal(0))
    mine = dict(kv.split("=", 1) for kv in RELEASE_SELECTOR.split(","))
    for p in running:
        labels = p.metadata.labels or {}
        if p.spec.node_name not in usable:
            continue
        if p.metadata.namespace == namespace and all(labels.get(k) == v for k, v in mine.items()):
            continue  # the release's own pods: replaced by what `needed` counts
        for c in p.spec.containers:
            requests = (c.resources.requests if c.resources else None) or {}
            for resource in RESOURCES:
                if resource in requests:
                    used[resource] += parse_quantity(requests[resource])
    shortfalls = [Shortfall(r, needed[r], allocatable[r] - used[r], allocatable[r], used[r])
                  for r in RESOURCES if needed[r] > allocatable[r] - used[r]]
    return Report(pods, needed, shortfalls)


def _namespace_tolerations(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    try:
        annotations = kube.core.read_namespace(namespace).metadata.annotations or {}
        found = json.loads(annotations.get(DEFAULT_TOLERATIONS) or "[]")
    except Exception:  # no namespace yet (deploy creates it), no permission, or a bad annotation
        return []
    return [t for t in found if isinstance(t, dict)] if isinstance(found, list) else []


def _schedulable_for(node: Any, tolerations: list[dict[str, Any]]) -> bool:
    """Whether every NoSchedule/NoExecute taint of `node` is tolerated (the scheduler's rule)."""
    for taint in node.spec.taints or []:
        if taint.effect not in ("NoSchedule", "NoExecute"):
            continue
        if not any(_tolerates(t, taint) for t in tolerations):
            return False
    return True


def _tolerates(toleration: dict[str, Any], taint: Any) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.effect:
        return False
    if toleration.get("operator") == "Exists":
        return not toleration.get("key") or toleration["key"] == taint.key
    return toleration.get("key") == taint.key and (toleration.get("value") or "") == (taint.value or "")


def _ready(node: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def _fmt(resource: str) -> Any:
    def cpu(v: Decimal) -> str:
        return f"{int(v * 1000)}m CPU"

    def memory(v: Decimal) -> str:
        return f"{int(v / (1024 * 1024))}Mi memory"

    return cpu if resource == "cpu" else memory
