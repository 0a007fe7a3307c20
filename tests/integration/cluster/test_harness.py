"""The test harness itself: the control plane is real and the fake kubelet makes rollouts real."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.k8s.controlplane import missing_binaries

pytestmark = pytest.mark.cluster


def _deployment(name: str, image: str, replicas: int = 2) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "app", "image": image}]}}},
    }


def _wait_ready(apps, name: str, ns: str, want: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    ready = 0
    while time.monotonic() < deadline:
        ready = apps.read_namespaced_deployment_status(name, ns).status.ready_replicas or 0
        if ready >= want:
            break
        time.sleep(0.2)
    return ready


def test_rollout_completes_with_the_fake_kubelet(kube_cluster, fake_kubelet):
    from kubernetes import client

    ns = kube_cluster.new_namespace("harness")
    fake_kubelet.serve(ns)
    apps = client.AppsV1Api(kube_cluster.api)
    apps.create_namespaced_deployment(ns, _deployment("web", "example/web:1"))
    assert _wait_ready(apps, "web", ns, 2, 60) == 2, fake_kubelet.errors
    pods = client.CoreV1Api(kube_cluster.api).list_namespaced_pod(ns).items
    assert len(pods) == 2
    assert all(p.status.phase == "Running" and p.spec.node_name == "fake-node" for p in pods)


def test_unready_image_never_becomes_ready(kube_cluster, fake_kubelet):
    from kubernetes import client

    ns = kube_cluster.new_namespace("harness")
    fake_kubelet.serve(ns)
    apps = client.AppsV1Api(kube_cluster.api)
    core = client.CoreV1Api(kube_cluster.api)
    apps.create_namespaced_deployment(ns, _deployment("stuck", "example/web:unready", replicas=1))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # bound to the node, then left alone
        pods = core.list_namespaced_pod(ns).items
        if pods and pods[0].spec.node_name:
            break
        time.sleep(0.2)
    assert pods and pods[0].spec.node_name == "fake-node"
    time.sleep(2)  # several kubelet rounds: it must still not have started the pod
    assert core.read_namespaced_pod(pods[0].metadata.name, ns).status.phase == "Pending"
    assert not apps.read_namespaced_deployment_status("stuck", ns).status.ready_replicas


def test_pods_outside_served_namespaces_stay_pending(kube_cluster, fake_kubelet):
    from kubernetes import client

    ns = kube_cluster.new_namespace("unserved")
    apps = client.AppsV1Api(kube_cluster.api)
    core = client.CoreV1Api(kube_cluster.api)
    apps.create_namespaced_deployment(ns, _deployment("idle", "example/web:1", replicas=1))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not core.list_namespaced_pod(ns).items:
        time.sleep(0.2)
    time.sleep(1.5)
    pods = core.list_namespaced_pod(ns).items
    assert len(pods) == 1 and not pods[0].spec.node_name and pods[0].status.phase == "Pending"


def test_kubernetes_1_20_api_groups_and_crds(kube_cluster):
    from kubernetes import client

    kube_cluster.install_crds()
    api_groups = client.ApisApi(kube_cluster.api).get_api_versions().groups
    groups = {g.name: [v.version for v in g.versions] for g in api_groups}
    assert "v2beta2" in groups["autoscaling"]
    assert "v1beta1" in groups["policy"]
    assert "external-secrets.io" in groups and "monitoring.coreos.com" in groups
    ns = kube_cluster.new_namespace("crd")
    custom = client.CustomObjectsApi(kube_cluster.api)
    custom.create_namespaced_custom_object("monitoring.coreos.com", "v1", ns, "servicemonitors", {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": {"name": "m"}, "spec": {"endpoints": [{"port": "http"}]}})
    got = custom.get_namespaced_custom_object("monitoring.coreos.com", "v1", ns, "servicemonitors", "m")
    assert got["spec"]["endpoints"] == [{"port": "http"}]


def test_control_plane_script_start_and_stop(tmp_path):
    """The script users run by hand: start prints the KUBECONFIG export, stop leaves nothing running."""
    if missing_binaries():
        pytest.fail("control-plane binaries missing: run tests/k8s/control-plane build")
    state = tmp_path / "cp"
    out = subprocess.run(["tests/k8s/control-plane", "start", str(state)], capture_output=True, text=True,
                         timeout=120)
    try:
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"export KUBECONFIG={state / 'kubeconfig'}"
        pids = [int((state / f"{n}.pid").read_text()) for n in ("etcd", "apiserver", "controller-manager")]
        from kubernetes import client, config

        with config.new_client_from_config(config_file=str(state / "kubeconfig")) as api:
            assert client.VersionApi(api).get_code().git_version.startswith("v1.")
    finally:
        subprocess.run(["tests/k8s/control-plane", "stop", str(state)], timeout=60, check=True)
    time.sleep(0.2)
    for pid in pids:
        assert not _alive(pid)


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_missing_binaries_fail_the_cluster_tests_loudly(tmp_path):
    """Without binaries a cluster test errors (never skips) and says how to build them."""
    import os
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    empty = tmp_path / "assets"
    empty.mkdir()
    env = {**os.environ, "KUBEBUILDER_ASSETS": str(empty)}
    env.pop("PYTEST_ADDOPTS", None)  # the child's output is read below: CI's options (-q) must not thin it
    test = "tests/integration/cluster/test_harness.py::test_kubernetes_1_20_api_groups_and_crds"
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rE", test],
                         cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0, out.stdout
    assert "1 error" in out.stdout and "skipped" not in out.stdout
    assert "tests/k8s/control-plane build" in out.stdout
