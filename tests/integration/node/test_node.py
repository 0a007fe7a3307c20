"""The real node itself: it runs a pod, and `node stop` leaves nothing behind on the host."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tests.k8s.fixtures import KubeCluster, NodeCluster
from tests.k8s.node import RealNode, leftovers

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 60, interval: float = 0.2) -> T:
    """Poll `check` until it returns something truthy (returned), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout} s")
        time.sleep(interval)


def test_the_node_is_ready_and_runs_a_pod(real_node: NodeCluster) -> None:
    from kubernetes import client

    core = client.CoreV1Api(real_node.cluster.api)
    node = core.read_node(real_node.node.name)
    ready = {c.type: c.status for c in node.status.conditions}["Ready"]
    assert ready == "True"
    assert node.status.node_info.kubelet_version == "v1.20.2"
    assert node.status.node_info.container_runtime_version.startswith("containerd://1.6")

    ns = real_node.new_namespace()
    core.create_namespaced_pod(ns, {
        "metadata": {"name": "sleeper"},
        "spec": {"containers": [{"name": "pause", "image": "localhost/pause:3.4",
                                 "imagePullPolicy": "Never"}]},
    })
    pod = wait_for("pod sleeper Running", lambda: (
        p if (p := core.read_namespaced_pod("sleeper", ns)).status.phase == "Running" else None))
    assert pod.spec.node_name == real_node.node.name  # scheduled by the node's kube-scheduler
    assert ipaddress.ip_address(pod.status.pod_ip) in ipaddress.ip_network("10.88.0.0/16")
    core.delete_namespace(ns)


def test_node_stop_leaves_nothing_behind(kube_cluster: KubeCluster, real_node: NodeCluster,
                                         tmp_path: Path) -> None:
    """A second node on the same control plane, started and stopped: no netns, veth, cgroup, mount
    or process of it is left, and its Node object is gone (the session's node is unaffected)."""
    from kubernetes import client

    core = client.CoreV1Api(kube_cluster.api)
    second = RealNode.start(tmp_path / "node2", kube_cluster.kubeconfig)
    netns = second.netns
    assert netns and netns != real_node.node.netns
    assert leftovers(second.state, netns) != []  # it is running: the check sees it
    second.stop()
    assert leftovers(second.state, netns) == []
    wait_for(f"Node {second.name} deleted",
             lambda: second.name not in [n.metadata.name for n in core.list_node().items], timeout=30)
    ready = {c.type: c.status for c in core.read_node(real_node.node.name).status.conditions}["Ready"]
    assert ready == "True"
