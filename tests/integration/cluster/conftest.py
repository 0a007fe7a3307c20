"""Per-test deployment targets on the session's real control plane.

Each test gets its own staging/production environment files (copies of environments/*.yaml with
a namespace unique to the test), a kubeconfig with the contexts `local` and `qlens-production`
(both pointing at the test cluster, `local` current), the fake kubelet serving those namespaces,
and fake provider credentials in the process environment. `qlensctl` runs in-process through
`qlensctl.main.run`, so exit codes and messages are exactly what a user sees.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.fixtures import KubeCluster

ROOT = Path(__file__).resolve().parents[3]
SECRET_VARS = {
    "AZURE_OPENAI_ENDPOINT": "https://unit-test.openai.azure.com",
    "AZURE_OPENAI_API_KEY": "sk-test-azure-NEVER-PRINTED-1234",
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "AKIATESTNEVERPRINTED",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-NEVER-PRINTED-5678",
}


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@dataclass
class Target:
    """What a test deploys to."""

    cluster: KubeCluster
    staging_ns: str
    production_ns: str
    kubeconfig: Path
    envdir: Path
    backups: Path

    def qlensctl(self, *args: str) -> Result:
        """Run `qlensctl ARGS` in-process; returns its exit code and output."""
        from qlensctl.main import run

        out, err = io.StringIO(), io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return Result(code, out.getvalue(), err.getvalue())

    def use_context(self, name: str) -> None:
        doc = yaml.safe_load(self.kubeconfig.read_text())
        doc["current-context"] = name
        self.kubeconfig.write_text(yaml.safe_dump(doc))

    # reading the cluster
    @property
    def apps(self) -> Any:
        from kubernetes import client

        return client.AppsV1Api(self.cluster.api)

    @property
    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.cluster.api)

    def images(self, ns: str) -> dict[str, str]:
        return {d.metadata.name: d.spec.template.spec.containers[0].image
                for d in self.apps.list_namespaced_deployment(ns).items}

    def tags(self, ns: str) -> set[str]:
        return {image.rsplit(":", 1)[1] for name, image in self.images(ns).items() if "-previous" not in name}

    def snapshot(self, ns: str) -> dict[str, Any]:
        """Every object the deploy commands could touch in `ns`, with its resourceVersion (which
        changes on any write), plus whether the namespace exists at all."""
        from kubernetes import client

        api = self.cluster.api
        if not any(n.metadata.name == ns for n in self.core.list_namespace().items):
            return {"namespace": False}
        lists = {
            "Deployment": client.AppsV1Api(api).list_namespaced_deployment,
            "Service": self.core.list_namespaced_service,
            "ConfigMap": self.core.list_namespaced_config_map,
            "Secret": self.core.list_namespaced_secret,
            "ServiceAccount": self.core.list_namespaced_service_account,
            "NetworkPolicy": client.NetworkingV1Api(api).list_namespaced_network_policy,
            "Ingress": client.NetworkingV1Api(api).list_namespaced_ingress,
            "Role": client.RbacAuthorizationV1Api(api).list_namespaced_role,
            "RoleBinding": client.RbacAuthorizationV1Api(api).list_namespaced_role_binding,
        }
        snap: dict[str, Any] = {"namespace": True}
        for kind, fn in lists.items():
            snap[kind] = sorted((o.metadata.name, o.metadata.resource_version) for o in fn(ns).items)
        # the HPA controller rewrites status on its own schedule: compare what we write, the spec
        hpas = client.AutoscalingV1Api(api).list_namespaced_horizontal_pod_autoscaler(ns).items
        snap["HorizontalPodAutoscaler"] = sorted((h.metadata.name, str(h.spec.to_dict())) for h in hpas)
        custom = client.CustomObjectsApi(api)
        for group, version, plural in (("policy", "v1beta1", "poddisruptionbudgets"),  # 1.20: not v1
                                       ("external-secrets.io", "v1", "externalsecrets"),
                                       ("monitoring.coreos.com", "v1", "servicemonitors"),
                                       ("monitoring.coreos.com", "v1", "prometheusrules")):
            try:
                items = custom.list_namespaced_custom_object(group, version, ns, plural)["items"]
            except client.ApiException as exc:
                if exc.status != 404:  # CRDs not installed yet
                    raise
                items = []
            snap[plural] = sorted((o["metadata"]["name"], o["metadata"]["resourceVersion"]) for o in items)
        return snap


    def settled_snapshot(self, ns: str, timeout: float = 20) -> dict[str, Any]:
        """A snapshot once the controllers have stopped writing (two equal reads a second apart):
        the baseline a refused command must leave untouched."""
        import time

        deadline = time.monotonic() + timeout
        previous = self.snapshot(ns)
        while time.monotonic() < deadline:
            time.sleep(1)
            now = self.snapshot(ns)
            if now == previous:
                return now
            previous = now
        raise AssertionError(f"objects in {ns} kept changing for {timeout} s")


def _environment_file(source: Path, dest: Path, namespace: str) -> None:
    doc = yaml.safe_load(source.read_text())
    doc["namespace"] = namespace
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture
def target(kube_cluster: KubeCluster, fake_kubelet: Any, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Target]:
    staging = kube_cluster.new_namespace("qlens-staging", create=False)
    production = kube_cluster.new_namespace("qlens-production", create=False)
    fake_kubelet.serve(staging)
    fake_kubelet.serve(production)
    envdir = tmp_path / "environments"
    envdir.mkdir()
    _environment_file(ROOT / "environments" / "staging.yaml", envdir / "staging.yaml", staging)
    _environment_file(ROOT / "environments" / "production.yaml", envdir / "production.yaml", production)
    kubeconfig = kube_cluster.kubeconfig_with_contexts(tmp_path / "kubeconfig", ["qlens-production"], "local")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("QLENS_ENVIRONMENTS", str(envdir))
    for key, value in SECRET_VARS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # `backup/` lands here
    yield Target(kube_cluster, staging, production, kubeconfig, envdir, tmp_path / "backup")
