"""`qlensctl deploy staging --wait` on the real node, as the deployment guide runs it.

The images are built from the Dockerfile (buildah) and imported into the node; the environment is
the shipped staging.yaml with a namespace of this test, the built image (`pullPolicy: Never`: the
node cannot pull) and the built-in echo model added, so the smoke test gets answers without cloud
credentials. The guide's five variables are set; their values must never appear in any output.
One deploy for the module; each test checks one thing on the running pods.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.k8s.fixtures import NodeClients, NodeCluster
from tests.support.cli import ROOT, Result, run_cli

SECRET_VARS = {
    "AZURE_OPENAI_ENDPOINT": "https://node-test.openai.azure.com",
    "AZURE_OPENAI_API_KEY": "sk-node-azure-NEVER-PRINTED-4321",
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "AKIANODENEVERPRINTED",
    "AWS_SECRET_ACCESS_KEY": "aws-node-secret-NEVER-PRINTED-8765",
}
SECRET_VALUES = [v for k, v in SECRET_VARS.items() if k != "AWS_REGION"]
DEPLOYMENTS = ("qlens-cache", "qlens-gateway", "qlens-router")
TAG = "node-staging"
# the first build of the images (from nothing: a minute or more on 2 busy cores) is in the setup
pytestmark = pytest.mark.timeout(1500)


@dataclass
class Deployed(NodeClients):
    node: NodeCluster
    namespace: str
    deploy: Result
    env: dict[str, str]

    def kubectl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", "--namespace", self.namespace, *args], capture_output=True,
                              text=True, env=self.env, timeout=timeout, stdin=subprocess.DEVNULL)


def staging_environment(dest: Path, namespace: str, image: dict[str, str]) -> None:
    doc = yaml.safe_load((ROOT / "environments" / "staging.yaml").read_text())
    doc["namespace"] = namespace
    doc["image"] = {"repository": image["repository"], "tag": image["tag"], "pullPolicy": image["pullPolicy"]}
    doc["providers"]["echo"] = {"enabled": True}
    doc["models"]["echo"] = {"deployments": [{"provider": "echo", "target": "echo"}]}
    doc["smokeTest"] = {"model": "echo"}  # staging's own smoke model is a real provider's
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture(scope="module")
def deployed(real_node: NodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    images = real_node.images(TAG)
    namespace = real_node.new_namespace("qlens-staging")
    work = tmp_path_factory.mktemp("deploy-staging")
    (work / "environments").mkdir()
    staging_environment(work / "environments" / "staging.yaml", namespace, images.values()["image"])
    env = {"KUBECONFIG": str(real_node.kubeconfig), "QLENS_ENVIRONMENTS": str(work / "environments"),
           **SECRET_VARS}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.chdir(work)  # backup/ lands here
        result = run_cli("deploy", "staging", "--wait", "--timeout", "300")
        assert result.code == 0, f"deploy staging failed ({result.code}):\n{result.text}"
        yield Deployed(real_node, namespace, result, {**os.environ, **env})


def test_deploy_creates_the_secret_and_prints_no_secret(deployed: Deployed) -> None:
    secret = deployed.core.read_namespaced_secret("qlens-secrets", deployed.namespace)
    assert {"azure-openai-api-key", "aws-secret-access-key"} <= set(secret.data)
    assert "Traceback" not in deployed.deploy.text
    assert [v for v in SECRET_VALUES if v in deployed.deploy.text] == []


def test_all_three_deployments_are_ready_through_their_readiness_probes(deployed: Deployed) -> None:
    for name in DEPLOYMENTS:
        dep = deployed.apps.read_namespaced_deployment(name, deployed.namespace)
        assert (dep.status.ready_replicas, dep.status.replicas) == (1, 1), name
        probe = dep.spec.template.spec.containers[0].readiness_probe
        assert probe.http_get.path == "/health/ready", name
    pods = deployed.core.list_namespaced_pod(deployed.namespace,
                                             label_selector="app.kubernetes.io/name=qlens").items
    components = sorted(p.metadata.labels["app.kubernetes.io/component"] for p in pods)
    assert components == ["cache", "gateway", "router"]
    for pod in pods:
        assert pod.spec.node_name == deployed.node.node.name
        (status,) = pod.status.container_statuses
        assert status.ready and status.state.running is not None, pod.metadata.name
        assert status.image.endswith(f":{TAG}")


def test_the_gateway_reaches_router_and_cache_by_service_name(deployed: Deployed) -> None:
    probe = ("import json, urllib.request as u\n"
             "for url in ('http://qlens-router:8081/health/ready', 'http://qlens-cache:8082/health/ready',"
             " 'http://127.0.0.1:8080/health/ready'):\n"
             "    with u.urlopen(url, timeout=5) as r: print(url, r.status, r.read().decode())\n")
    proc = deployed.kubectl("exec", "deploy/qlens-gateway", "--", "python", "-c", probe)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [line.split()[1] for line in lines] == ["200", "200", "200"], proc.stdout
    gateway_ready = json.loads(lines[2].split(" ", 2)[2])
    assert "router" in json.dumps(gateway_ready) and "cache" in json.dumps(gateway_ready)


def test_smoke_test_passes_every_check_through_the_pods(deployed: Deployed) -> None:
    with pytest.MonkeyPatch.context() as mp:
        for key in ("KUBECONFIG", "QLENS_ENVIRONMENTS"):
            mp.setenv(key, deployed.env[key])
        result = run_cli("smoke-test", "staging", "--port-forward", "--json")
    assert result.code == 0, result.text
    report = json.loads(result.out)
    assert report["ok"] is True
    assert len(report["checks"]) >= 4
    assert [c for c in report["checks"] if c["status"] != "pass"] == []


def test_logs_are_json_lines_without_secrets(deployed: Deployed) -> None:
    """The guide's `kubectl logs -l app.kubernetes.io/name=qlens`: every service's lines are JSON."""
    proc = deployed.kubectl("logs", "-l", "app.kubernetes.io/name=qlens", "--tail", "200", "--prefix")
    assert proc.returncode == 0, proc.stderr
    by_pod: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        prefix, _, text = line.partition("] ")
        by_pod.setdefault(prefix.split("/")[1].rsplit("-", 2)[0], []).append(text)
    assert sorted(by_pod) == list(DEPLOYMENTS), proc.stdout
    for pod, lines in by_pod.items():
        parsed = [json.loads(text) for text in lines if text.startswith("{")]
        assert parsed and len(parsed) == len(lines), f"{pod}: not all JSON:\n" + "\n".join(lines[:5])
        assert all({"ts", "level", "msg"} <= set(p) for p in parsed), pod
    assert [v for v in SECRET_VALUES if v in proc.stdout] == []


def test_exec_runs_a_shell_as_uid_10001(deployed: Deployed) -> None:
    proc = deployed.kubectl("exec", "deploy/qlens-gateway", "--", "/bin/sh", "-c", "id -u")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "10001"
