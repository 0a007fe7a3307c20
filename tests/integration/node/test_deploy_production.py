"""`qlensctl deploy production --version vX --wait` on the real node, as the guide runs it.

The shipped production.yaml with a namespace of this test, the built images (`pullPolicy: Never`)
and echo added for the smoke test. What a production cluster brings and the chart does not ship
is played by the test: Redis runs as a pod (Debian's redis-server image, `tests/k8s/node build`),
and the test writes Secret `qlens-secrets` as the External Secrets Operator would sync it (there is
no operator here: the ExternalSecret stays an object). The kubeconfig's current context is the
pinned `qlens-production`.

First, production's own sizing (1 CPU requested per pod, 8 pods) on the 2-core node: the preflight
warns with the numbers, and the failure names the scheduler's `Insufficient cpu` (issue 19). Then
the same release with requests a small node can hold: 3/3/2 Ready, budgets and cache in the Redis
pod, the smoke test passes, and an answer cached by one gateway replica is a hit on every other.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.fixtures import NodeClients, NodeCluster
from tests.support.cli import ROOT, Result, run_cli

pytestmark = pytest.mark.timeout(1500)
VERSION = "v9.9.0"
REDIS_IMAGE = "localhost/qlens-redis:bookworm"
SECRETS = {
    "azure-openai-endpoint": "https://prod-node.openai.azure.com",
    "azure-openai-api-key": "sk-prod-node-NEVER-PRINTED-1357",
    "aws-region": "us-east-1",
    "aws-access-key-id": "AKIAPRODNODENEVERPRINTED",
    "aws-secret-access-key": "aws-prod-node-secret-NEVER-PRINTED-2468",
}
SMALL = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1000m", "memory": "512Mi"}}


@dataclass
class Production(NodeClients):
    node: NodeCluster
    namespace: str
    env: dict[str, str]
    envfile: Path

    def cli(self, *args: str) -> Result:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in self.env.items():
                mp.setenv(key, value)
            return run_cli(*args)

    def kubectl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", "--namespace", self.namespace, *args], capture_output=True,
                              text=True, env={**os.environ, **self.env}, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def set_resources(self, resources: dict[str, Any] | None) -> None:
        doc = yaml.safe_load(self.envfile.read_text())
        if resources is None:
            doc.pop("resources", None)
        else:
            doc["resources"] = resources
        self.envfile.write_text(yaml.safe_dump(doc, sort_keys=False))


def production_environment(dest: Path, namespace: str, repository: str) -> None:
    doc = yaml.safe_load((ROOT / "environments" / "production.yaml").read_text())
    doc["namespace"] = namespace
    doc["image"] = {"repository": repository, "tag": None, "pullPolicy": "Never"}
    doc["providers"]["echo"] = {"enabled": True}
    doc["models"]["echo"] = {"deployments": [{"provider": "echo", "target": "echo"}]}
    doc["smokeTest"] = {"model": "echo"}
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))


def start_redis(prod: Production) -> str:
    """Redis as production has it: a pod and a Service beside the release, not part of the chart."""
    from kubernetes import client

    labels = {"app": "redis"}
    container = client.V1Container(
        name="redis", image=REDIS_IMAGE, image_pull_policy="Never",
        ports=[client.V1ContainerPort(container_port=6379, name="redis")],
        readiness_probe=client.V1Probe(tcp_socket=client.V1TCPSocketAction(port=6379), period_seconds=2))
    prod.apps.create_namespaced_deployment(prod.namespace, client.V1Deployment(
        metadata=client.V1ObjectMeta(name="redis"),
        spec=client.V1DeploymentSpec(
            replicas=1, selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels),
                                              spec=client.V1PodSpec(containers=[container])))))
    prod.core.create_namespaced_service(prod.namespace, client.V1Service(
        metadata=client.V1ObjectMeta(name="redis"),
        spec=client.V1ServiceSpec(selector=labels,
                                  ports=[client.V1ServicePort(port=6379, target_port=6379)])))
    proc = prod.kubectl("rollout", "status", "deploy/redis", "--timeout=120s", timeout=130)
    assert proc.returncode == 0, proc.stderr + prod.kubectl("describe", "pod", "-l", "app=redis").stdout
    return f"redis://redis.{prod.namespace}.svc.cluster.local:6379/0"


@pytest.fixture(scope="module")
def production(real_node: NodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Production]:
    from kubernetes import client

    images = real_node.images(VERSION)
    real_node.cluster.install_crds()  # ExternalSecret, ServiceMonitor, PrometheusRule: objects only
    namespace = real_node.new_namespace("qlens-production")
    work = tmp_path_factory.mktemp("deploy-production")
    (work / "environments").mkdir()
    envfile = work / "environments" / "production.yaml"
    production_environment(envfile, namespace, images.repository)
    kubeconfig = real_node.cluster.kubeconfig_with_contexts(work / "kubeconfig", ["qlens-production"],
                                                            current="qlens-production")
    env = {"KUBECONFIG": str(kubeconfig), "QLENS_ENVIRONMENTS": str(work / "environments")}
    prod = Production(real_node, namespace, env, envfile)
    redis_url = start_redis(prod)
    data = {**SECRETS, "redis-url": redis_url}
    prod.core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="qlens-secrets"),
        data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()}))
    old_cwd = Path.cwd()
    os.chdir(work)  # backups land here
    try:
        yield prod
    finally:
        os.chdir(old_cwd)


@pytest.fixture(scope="module")
def deployed(production: Production) -> tuple[Production, Result, str]:
    production.set_resources(SMALL)
    created = production.cli("keys", "create", "production", "--tenant", "node", "--user", "smoke",
                             "--yes", "--json")
    assert created.code == 0, created.text
    key = json.loads(created.out)["key"]
    result = production.cli("deploy", "production", "--version", VERSION, "--yes", "--wait",
                            "--timeout", "300")
    assert result.code == 0, f"deploy production failed ({result.code}):\n{result.text}"
    return production, result, key


def test_production_sizing_on_a_two_core_node_is_warned_and_fails_with_insufficient_cpu(
        production: Production) -> None:
    production.set_resources(None)  # the shipped 1000m/1Gi per pod
    result = production.cli("deploy", "production", "--version", VERSION, "--yes", "--wait",
                            "--timeout", "45")
    text = " ".join(result.text.split())
    assert result.code != 0, text
    assert "preflight: production does not fit on the nodes (8 pods" in text, text
    assert "cpu: the release requests 8000m CPU" in text, text
    assert "Insufficient cpu" in text, text
    assert "the failed install was removed" in text, text
    assert [v for v in SECRETS.values() if v in result.text] == []
    assert production.apps.list_namespaced_deployment(
        production.namespace, label_selector="app.kubernetes.io/name=qlens").items == []


def test_production_runs_3_3_2_ready_replicas(deployed: tuple[Production, Result, str]) -> None:
    prod, result, _ = deployed
    assert "Traceback" not in result.text
    assert [v for v in SECRETS.values() if v in result.text] == []
    for name, replicas in (("qlens-gateway", 3), ("qlens-router", 3), ("qlens-cache", 2)):
        status = prod.apps.read_namespaced_deployment(name, prod.namespace).status
        assert (status.ready_replicas, status.replicas) == (replicas, replicas), name
    external = prod.kubectl("get", "externalsecret", "qlens-secrets", "-o", "json")
    assert external.returncode == 0, external.stderr  # the operator's object, applied, never synced here


def test_smoke_test_passes_through_the_pods(deployed: tuple[Production, Result, str]) -> None:
    prod, _, key = deployed
    result = prod.cli("smoke-test", "production", "--port-forward", "--api-key", key, "--json")
    assert result.code == 0, result.text
    report = json.loads(result.out)
    assert report["ok"] is True and [c for c in report["checks"] if c["status"] != "pass"] == []
    assert key not in result.text


ASK = """import json, sys, urllib.request as u
req = u.Request("http://127.0.0.1:8080/v1/chat/completions", method="POST",
    data=json.dumps({"model": "echo", "messages": [{"role": "user", "content": "cached on node"}]}).encode(),
    headers={"Authorization": "Bearer " + sys.argv[1], "Content-Type": "application/json"})
with u.urlopen(req, timeout=10) as r:
    print(r.status, r.headers["x-qlens-cache"])
"""


def test_an_answer_cached_by_one_gateway_is_a_hit_on_every_other(
        deployed: tuple[Production, Result, str]) -> None:
    prod, _, key = deployed
    pods = sorted(p.metadata.name for p in prod.core.list_namespaced_pod(
        prod.namespace, label_selector="app.kubernetes.io/component=gateway").items
        if p.metadata.deletion_timestamp is None)
    assert len(pods) == 3
    seen = []
    for pod in pods:
        proc = prod.kubectl("exec", pod, "--", "python", "-c", ASK, key)
        assert proc.returncode == 0, proc.stderr
        seen.append(proc.stdout.split())
    assert seen == [["200", "miss"], ["200", "hit"], ["200", "hit"]], seen


def test_budgets_and_cache_live_in_the_redis_pod(deployed: tuple[Production, Result, str]) -> None:
    prod, _, _ = deployed
    proc = prod.kubectl("exec", "deploy/redis", "--", "redis-cli", "--scan")
    assert proc.returncode == 0, proc.stderr
    keys = proc.stdout.split()
    assert any("budget" in k or "spend" in k for k in keys), keys
    assert any("cache" in k for k in keys), keys
