"""Shared setup for the day-2 cluster tests: per-test namespaces for staging and production, the
environment files pointing at them, a kubeconfig with production's pinned context, and a release
installed through the real Helm adapter (embedded Helm SDK) with the fake kubelet running pods."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.integration.ops.conftest import Cli
from tests.support.cli import ROOT


@dataclass
class OpsCluster:
    cluster: Any  # tests.k8s.fixtures.KubeCluster
    kubelet: Any
    envdir: Path
    kubeconfig: Path
    namespaces: dict[str, str]  # environment name -> its namespace in this test

    @property
    def api(self) -> Any:
        return self.cluster.api

    def environment(self, name: str) -> Any:
        from qlensctl.environments import load_environment

        return load_environment(name, self.envdir)

    def helm(self) -> Any:
        from qlensctl.helm import select_helm

        return select_helm("embedded", kubeconfig=self.kubeconfig, kube_context="qlens-production")

    def install(self, env: str, version: str = "v1.0.0", **overrides: Any) -> dict[str, Any]:
        """Install or upgrade release qlens with the environment's rendered values (+ overrides)."""
        from qlensctl import render

        values = render.render_values(self.environment(env), version=version)
        for key, value in overrides.items():
            values[key] = value
        self.helm().upgrade_or_install("qlens", render.chart_dir(), values, self.namespaces[env],
                                       atomic=False, wait=False)
        return values

    def replicas(self, env: str) -> dict[str, int]:
        from kubernetes import client

        apps = client.AppsV1Api(self.api)
        ns = self.namespaces[env]
        return {s: int(apps.read_namespaced_deployment(f"qlens-{s}", ns).spec.replicas or 0)
                for s in ("gateway", "router", "cache")}

    def wait_ready(self, env: str, timeout: float = 90) -> None:
        from kubernetes import client

        apps = client.AppsV1Api(self.api)
        ns = self.namespaces[env]
        deadline = time.monotonic() + timeout
        while True:
            items = apps.list_namespaced_deployment(ns).items
            if items and all((d.status.ready_replicas or 0) >= (d.spec.replicas or 0)
                             and (d.status.updated_replicas or 0) >= (d.spec.replicas or 0) for d in items):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"deployments in {ns} not ready after {timeout}s: "
                                     f"{[(d.metadata.name, d.status.ready_replicas) for d in items]}")
            time.sleep(0.3)


def make_ops_cluster(kube_cluster: Any, fake_kubelet: Any, tmp_path: Path, cli: Cli) -> OpsCluster:
    namespaces = {}
    envdir = tmp_path / "environments"
    envdir.mkdir()
    for env in ("staging", "production"):
        ns = kube_cluster.new_namespace(f"qlens-{env}")
        fake_kubelet.serve(ns)
        namespaces[env] = ns
        doc = yaml.safe_load((ROOT / "environments" / f"{env}.yaml").read_text())
        doc["namespace"] = ns
        (envdir / f"{env}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    kubeconfig = kube_cluster.kubeconfig_with_contexts(tmp_path / "kubeconfig", ["qlens-production"],
                                                       current="qlens-production")
    cli.env.update({"QLENS_ENVIRONMENTS": str(envdir), "KUBECONFIG": str(kubeconfig)})
    return OpsCluster(kube_cluster, fake_kubelet, envdir, kubeconfig, namespaces)
