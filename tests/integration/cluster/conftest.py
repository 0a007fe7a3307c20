"""Per-test deployment targets on the session's real control plane.

Each test gets its own staging/production environment files (copies of environments/*.yaml with
a namespace unique to the test), a kubeconfig with the contexts `local` and `qlens-production`
(both pointing at the test cluster, `local` current), the fake kubelet serving those namespaces,
and fake provider credentials in the process environment. `qlensctl` runs in-process through
`qlensctl.main.run`, so exit codes and messages are exactly what a user sees (or as a real
process with `Target.spawn`, for tests that run two commands at once or interrupt one).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.fixtures import KubeCluster
from tests.support.cli import ROOT, Result, run_cli

SECRET_VARS = {
    "AZURE_OPENAI_ENDPOINT": "https://unit-test.openai.azure.com",
    "AZURE_OPENAI_API_KEY": "sk-test-azure-NEVER-PRINTED-1234",
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "AKIATESTNEVERPRINTED",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-NEVER-PRINTED-5678",
}


SERVICES = ("qlens-cache", "qlens-gateway", "qlens-router")


def assert_ok(result: Result, what: str = "command") -> None:
    assert result.code == 0, f"{what} failed ({result.code}):\n{result.text}"
    assert "Traceback" not in result.text


def assert_refused(result: Result, code: int, *words: str) -> None:
    """A refusal as the user sees it: the exit code, no traceback, an error and a hint line, and
    the words that say what happened and what to do."""
    assert result.code == code, result.text
    assert "Traceback" not in result.text
    assert "error:" in result.err and "hint:" in result.err, result.err
    for word in words:
        assert word in result.err, f"{word!r} not in:\n{result.err}"


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
        """Run `qlensctl ARGS` in-process (this test's environment files and kubeconfig)."""
        return run_cli(*args)

    def spawn(self, *args: str, name: str = "qlensctl") -> subprocess.Popen[bytes]:
        """Start `qlensctl ARGS` as a process (this test's environment and folder); its output goes
        to NAME.out / NAME.err beside the backups. The test waits for it or stops it."""
        work = self.backups.parent
        env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "COLUMNS": "200"}
        with open(work / f"{name}.out", "wb") as out, open(work / f"{name}.err", "wb") as err:
            return subprocess.Popen([sys.executable, "-m", "qlensctl.main", *args], cwd=work, env=env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    def spawned_output(self, name: str = "qlensctl") -> str:
        work = self.backups.parent
        return (work / f"{name}.out").read_text() + (work / f"{name}.err").read_text()

    def wait_for(self, what: str, condition: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not after {timeout} s")
            time.sleep(0.1)

    def release_secrets(self, ns: str, status: str | None = None) -> list[str]:
        """Helm's release records (one Secret per revision), optionally only those in `status`."""
        selector = "owner=helm,name=qlens" + (f",status={status}" if status else "")
        items = self.core.list_namespaced_secret(ns, label_selector=selector).items
        return sorted(s.metadata.name for s in items)

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

    def _lists(self) -> dict[str, Any]:
        """kind -> its namespaced list call, for the kinds the chart and qlensctl write."""
        from kubernetes import client

        api = self.cluster.api
        return {
            "Deployment": client.AppsV1Api(api).list_namespaced_deployment,
            "Service": self.core.list_namespaced_service,
            "ConfigMap": self.core.list_namespaced_config_map,
            "Secret": self.core.list_namespaced_secret,
            "ServiceAccount": self.core.list_namespaced_service_account,
            "NetworkPolicy": client.NetworkingV1Api(api).list_namespaced_network_policy,
            "Ingress": client.NetworkingV1Api(api).list_namespaced_ingress,
            "Role": client.RbacAuthorizationV1Api(api).list_namespaced_role,
            "RoleBinding": client.RbacAuthorizationV1Api(api).list_namespaced_role_binding,
            "Lease": client.CoordinationV1Api(api).list_namespaced_lease,  # qlensctl's deploy lock
        }

    def contents(self, ns: str, kinds: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        """What the objects of `kinds` in `ns` say: labels, annotations and spec (or data), without
        what the API server and controllers write (resourceVersion, generation, status, ...).
        Equal before and after when an object was changed and changed back (a rollback)."""
        serialize = self.cluster.api.sanitize_for_serialization
        lists = self._lists()
        out: dict[str, dict[str, Any]] = {}
        for kind in kinds:
            for obj in lists[kind](ns).items:
                doc = serialize(obj)
                meta = doc.get("metadata", {})
                notes = {k: v for k, v in (meta.get("annotations") or {}).items()
                         if k != "deployment.kubernetes.io/revision"}  # counts rollouts
                out[f"{kind}/{meta['name']}"] = {"labels": meta.get("labels"), "annotations": notes,
                                                 **{k: v for k, v in doc.items()
                                                    if k not in ("metadata", "status", "apiVersion", "kind")}}
        return out

    def snapshot(self, ns: str) -> dict[str, Any]:
        """Every object the deploy commands could touch in `ns`, with its resourceVersion (which
        changes on any write), plus whether the namespace exists at all."""
        from kubernetes import client

        api = self.cluster.api
        if not any(n.metadata.name == ns for n in self.core.list_namespace().items):
            return {"namespace": False}
        snap: dict[str, Any] = {"namespace": True}
        for kind, fn in self._lists().items():
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


def assert_no_secrets(text: str) -> None:
    for name, value in SECRET_VARS.items():
        if name != "AWS_REGION":  # a region is not secret (and "us-east-1" is also in the values)
            assert value not in text, f"{name}'s value was printed"


def revisions(target: Target, env: str = "staging") -> list[dict[str, Any]]:
    """`qlensctl history ENV --json`: what the operator sees."""
    import json

    result = target.qlensctl("history", env, "--json")
    assert_ok(result, "history")
    revs: list[dict[str, Any]] = json.loads(result.out)["revisions"]
    return revs


def deploy_staging(target: Target, version: str, *extra: str) -> Result:
    result = target.qlensctl("deploy", "staging", "--version", version, "--timeout", "60", *extra)
    assert_ok(result, f"deploy staging {version}")
    return result


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
