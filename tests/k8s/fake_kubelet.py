"""Plays the kubelet's part on a control plane that has none (see controlplane.py).

Registers one Node and keeps its heartbeat (node status + Lease) fresh; in the namespaces it
serves it binds every unscheduled Pod to that Node, reports bound Pods Running and Ready, and
confirms deletions (what a kubelet does when a Pod is gracefully deleted). So Deployments really
roll out, `helm upgrade --wait` and rollout status really wait, and the disruption controller
sees healthy Pods. A Pod with a container image tagged `:unready` (e.g. `example/app:unready`)
is bound but never started: a test uses it to make a rollout fail on purpose.

In a test: `FakeKubelet(kubeconfig, {"ns"}).start()` ... `.stop()` (a daemon thread; `serve(ns)`
adds a namespace later). As a process: `python -m tests.k8s.fake_kubelet KUBECONFIG [NAMESPACE...]`
(no namespace: all of them), stopped by SIGTERM or SIGINT.
"""

from __future__ import annotations

import datetime as dt
import signal
import sys
import threading
from collections.abc import Iterable
from typing import Any

NODE = "fake-node"
UNREADY_TAG = ":unready"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _node_status() -> dict[str, Any]:
    t = _now()
    amounts = {"cpu": "64", "memory": "256Gi", "pods": "500"}
    return {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "fake kubelet", "lastHeartbeatTime": t, "lastTransitionTime": t}],
        "capacity": amounts,
        "allocatable": amounts,
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
    }


FAKE_NODE_TAINT = {"key": "qlens.test/fake-kubelet", "value": "true", "effect": "NoSchedule"}

class FakeKubelet:
    """One fake Node serving `namespaces` (None: every namespace). Thread-safe start/stop/serve."""

    def __init__(self, kubeconfig: str, namespaces: Iterable[str] | None = None,
                 interval: float = 0.3) -> None:
        from kubernetes import client, config

        # its own ApiClient: never the kubernetes module's global configuration, which the code
        # under test may load differently
        api = config.new_client_from_config(config_file=str(kubeconfig))
        self._core = client.CoreV1Api(api)
        self._coord = client.CoordinationV1Api(api)
        self._api_exception = client.ApiException
        self._namespaces = None if namespaces is None else set(namespaces)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._interval = interval
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []  # the last few errors, for a failing test's message

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> FakeKubelet:
        try:
            # tainted: it binds its own pods, and a real scheduler (tests/k8s/node) running in the
            # same session must never place a real node's pods on this one
            self._core.create_node({"metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
                                    "spec": {"taints": [FAKE_NODE_TAINT]}})
        except self._api_exception as exc:
            if exc.status != 409:
                raise
        self._heartbeat_once()
        for target in (self._heartbeat_loop, self._pod_loop):
            thread = threading.Thread(target=target, name=f"fake-kubelet-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        self._threads.clear()

    def serve(self, namespace: str) -> None:
        with self._lock:
            if self._namespaces is not None:
                self._namespaces.add(namespace)

    def __enter__(self) -> FakeKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the kubelet's work ----------------------------------------------------------------------
    def _note(self, exc: BaseException) -> None:
        self.errors = [*self.errors[-9:], f"{type(exc).__name__}: {exc}"[:300]]

    def _heartbeat_once(self) -> None:
        self._core.patch_node_status(NODE, {"status": _node_status()})
        renew = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        spec = {"holderIdentity": NODE, "leaseDurationSeconds": 40, "renewTime": renew}
        try:
            self._coord.patch_namespaced_lease(NODE, "kube-node-lease", {"spec": spec})
        except self._api_exception as exc:
            if exc.status != 404:
                raise
            self._coord.create_namespaced_lease("kube-node-lease", {"metadata": {"name": NODE}, "spec": spec})

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(5):
            try:
                self._heartbeat_once()
            except Exception as exc:  # keep beating: the API server may be restarting
                self._note(exc)

    def _pods(self) -> list[Any]:
        with self._lock:
            namespaces = None if self._namespaces is None else sorted(self._namespaces)
        if namespaces is None:
            return list(self._core.list_pod_for_all_namespaces().items)
        pods: list[Any] = []
        for ns in namespaces:
            pods.extend(self._core.list_namespaced_pod(ns).items)
        return pods

    def _pod_loop(self) -> None:
        while not self._stop.is_set():
            try:
                for pod in self._pods():
                    self._tend(pod)
            except Exception as exc:  # a pod deleted under us, a restart: try again next round
                self._note(exc)
            self._stop.wait(self._interval)

    def _tend(self, pod: Any) -> None:
        meta, spec = pod.metadata, pod.spec
        try:
            if meta.deletion_timestamp:
                if spec.node_name:
                    self._core.delete_namespaced_pod(meta.name, meta.namespace, grace_period_seconds=0)
            elif not spec.node_name:
                binding = {"metadata": {"name": meta.name},
                           "target": {"apiVersion": "v1", "kind": "Node", "name": NODE}}
                # the client cannot parse the Binding it gets back: read it raw
                self._core.create_namespaced_binding(meta.namespace, binding, _preload_content=False)
            elif pod.status.phase == "Pending" and not any(c.image.endswith(UNREADY_TAG)
                                                           for c in spec.containers):
                self._run(pod)
        except self._api_exception as exc:
            if exc.status not in (404, 409):  # gone, or already bound/changed: nothing to do
                raise

    def _run(self, pod: Any) -> None:
        t = _now()
        statuses = [{"name": c.name, "image": c.image, "imageID": "", "ready": True, "restartCount": 0,
                     "started": True, "state": {"running": {"startedAt": t}}} for c in pod.spec.containers]
        conditions = [{"type": k, "status": "True", "lastTransitionTime": t}
                      for k in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
        self._core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": {
            "phase": "Running", "podIP": "10.1.0.1", "hostIP": "127.0.0.1", "startTime": t,
            "conditions": conditions, "containerStatuses": statuses}})


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m tests.k8s.fake_kubelet KUBECONFIG [NAMESPACE ...]", file=sys.stderr)
        return 2
    kubelet = FakeKubelet(argv[0], argv[1:] or None).start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    kubelet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
