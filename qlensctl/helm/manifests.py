"""Rendered template files -> one YAML stream as `helm template` prints it, and back to objects."""

from __future__ import annotations

import re
from typing import Any

import yaml

# Helm's install order (releaseutil.InstallOrder): `template` output follows it, like `helm template`.
_INSTALL_ORDER = (
    "PriorityClass Namespace NetworkPolicy ResourceQuota LimitRange PodSecurityPolicy PodDisruptionBudget "
    "ServiceAccount Secret SecretList ConfigMap StorageClass PersistentVolume PersistentVolumeClaim "
    "CustomResourceDefinition ClusterRole ClusterRoleList ClusterRoleBinding ClusterRoleBindingList Role "
    "RoleList RoleBinding RoleBindingList Service DaemonSet Pod ReplicationController ReplicaSet Deployment "
    "HorizontalPodAutoscaler StatefulSet Job CronJob IngressClass Ingress APIService"
).split()


def join_manifests(files: dict[str, str]) -> str:
    """Rendered template files -> one YAML stream like `helm template`: documents in Helm's
    install order (then file name, then position), each under a `# Source:` line. Empty
    documents (disabled features) are left out. Deterministic by construction."""
    docs = []
    for path in sorted(files):
        if not path.endswith((".yaml", ".yml")) or "/templates/" not in path:
            continue  # NOTES.txt, helpers
        for index, doc in enumerate(re.split(r"(?m)^---\s*$", files[path])):
            body = doc.strip("\n")
            try:
                obj = yaml.safe_load(body)
            except yaml.YAMLError:
                obj = {}
            if not obj:
                continue
            kind = obj.get("kind", "") if isinstance(obj, dict) else ""
            rank = _INSTALL_ORDER.index(kind) if kind in _INSTALL_ORDER else len(_INSTALL_ORDER)
            docs.append((rank, path, index, body))
    docs.sort(key=lambda d: d[:3])
    return "".join(f"---\n# Source: {path}\n{body.strip()}\n" for _, path, _, body in docs)


def manifests(text: str) -> list[dict[str, Any]]:
    """The objects of a YAML stream (template output or a release manifest)."""
    return [doc for doc in yaml.safe_load_all(text) if doc]
