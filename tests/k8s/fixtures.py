"""Cluster fixtures: one real control plane per test session, and a fake kubelet.

`kube_cluster` (session): etcd + kube-apiserver + kube-controller-manager on free loopback ports
in a temp dir (about 5 s to start), stopped at the end of the session. It yields a `KubeCluster`:
`.kubeconfig` (admin, context `local`), `.new_namespace()` for a fresh namespace per test,
`.create_namespace()` for one named already, `.kubeconfig_with_contexts()` for tests that need
named contexts, `.install_crds()` for the third-party kinds the chart uses. If the binaries are
missing the fixture FAILS and names `tests/k8s/control-plane build`: a cluster test never skips
silently.

`fake_kubelet` (session): a `FakeKubelet` that serves the namespaces a test hands it with
`fake_kubelet.serve(ns)`, so Deployments in them roll out (image tag `:unready`: never Ready).

`real_node` (session, marker `node`): ONE real node (tests/k8s/node: containerd, kubelet,
kube-proxy, kube-scheduler, DNS) on the session's control plane, where pods really run. It yields
a `NodeCluster`: `.kubeconfig`, `.node` (the `RealNode`), `.new_namespace()` for a namespace whose
pods run there, `.images(tag)` to build the three service images from the Dockerfile and import
them (once per tag and session). The node is tainted and only those namespaces' pods tolerate it,
so the fake kubelet's pods (in the same session) never land on it, nor its pods on the fake Node
(tainted too). The node is stopped at the end of the session, leaving nothing behind. If it cannot
start, the fixture FAILS (never skips) with the reason and the log folder.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.controlplane import BUILD_HINT, ControlPlane, ControlPlaneError, assets_dir, missing_binaries
from tests.k8s.fake_kubelet import FakeKubelet
from tests.k8s.images import ServiceImages, build_images
from tests.k8s.node import TOLERATION_ANNOTATION, NodeError, RealNode

CRDS = Path(__file__).resolve().parent / "crds.yaml"
_names = itertools.count(1)


class KubeCluster:
    """A running control plane as tests see it."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.kubeconfig: Path = plane.kubeconfig
        self.server: str = plane.server
        self._api: Any = None
        self._crds_installed = False

    @property
    def api(self) -> Any:
        """A kubernetes ApiClient for this cluster (its own, not the module-global configuration)."""
        if self._api is None:
            from kubernetes import config

            self._api = config.new_client_from_config(config_file=str(self.kubeconfig))
        return self._api

    def new_namespace(self, prefix: str = "t", create: bool = True,
                      annotations: dict[str, str] | None = None) -> str:
        """A namespace name unique in this session; created (and its default ServiceAccount
        waited for, so Pods are admitted at once) unless create=False."""
        name = f"{prefix}-{next(_names)}"
        if create:
            self.create_namespace(name, annotations)
        return name

    def create_namespace(self, name: str, annotations: dict[str, str] | None = None) -> str:
        """Create namespace `name` and wait for its default ServiceAccount (Pods are admitted at once)."""
        from kubernetes import client

        metadata = {"name": name, "annotations": annotations or {}}
        client.CoreV1Api(self.api).create_namespace({"metadata": metadata})
        self.wait_for_default_service_account(name)
        return name

    def wait_for_default_service_account(self, namespace: str, timeout: float = 20) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sas = core.list_namespaced_service_account(
                namespace, field_selector="metadata.name=default").items
            if sas and sas[0].secrets:
                return
            time.sleep(0.1)
        raise AssertionError(f"no default ServiceAccount token in {namespace} after {timeout} s "
                             f"(controller-manager log: {self.plane.dir / 'logs'})")

    def kubeconfig_with_contexts(self, path: Path, contexts: list[str], current: str) -> Path:
        """A copy of the admin kubeconfig with extra context names, all pointing at this cluster
        (e.g. `qlens-production`), and `current` selected: for context-guard tests."""
        doc = yaml.safe_load(self.kubeconfig.read_text())
        base = doc["contexts"][0]["context"]
        doc["contexts"] = [{"name": n, "context": dict(base)} for n in dict.fromkeys(["local", *contexts])]
        doc["current-context"] = current
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)
        return path

    def install_crds(self) -> None:
        """Minimal CRDs for ExternalSecret, ServiceMonitor and PrometheusRule (the External Secrets
        and Prometheus operators are not installed here), waited until Established. Idempotent."""
        if self._crds_installed:
            return
        from kubernetes import client

        ext = client.ApiextensionsV1Api(self.api)
        names = []
        for doc in yaml.safe_load_all(CRDS.read_text()):
            if not doc:
                continue
            names.append(doc["metadata"]["name"])
            try:
                ext.create_custom_resource_definition(doc)
            except client.ApiException as exc:
                if exc.status != 409:
                    raise
        deadline = time.monotonic() + 30
        for name in names:
            while True:
                conds = ext.read_custom_resource_definition(name).status.conditions or []
                if any(c.type == "Established" and c.status == "True" for c in conds):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"CRD {name} not Established after 30 s")
                time.sleep(0.1)
        self._crds_installed = True


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    missing = missing_binaries()
    if missing:
        pytest.fail(f"the Kubernetes control plane binaries are missing ({', '.join(missing)} in "
                    f"{assets_dir()}): {BUILD_HINT}", pytrace=False)
    plane = ControlPlane(tmp_path_factory.mktemp("k8s"))
    try:
        plane.start(tie_to_parent=True)
    except ControlPlaneError as exc:
        pytest.fail(f"the Kubernetes control plane did not start: {exc}", pytrace=False)
    cluster = KubeCluster(plane)
    try:
        yield cluster
    finally:
        if cluster._api is not None:
            cluster._api.close()
        plane.stop(graceful=False)


@pytest.fixture(scope="session")
def fake_kubelet(kube_cluster: KubeCluster) -> Iterator[FakeKubelet]:
    kubelet = FakeKubelet(str(kube_cluster.kubeconfig), namespaces=()).start()
    try:
        yield kubelet
    finally:
        kubelet.stop()


class NodeClients:
    """`core` and `apps` API clients on the real node's cluster, for a test's dataclass with a `node`."""

    node: NodeCluster

    @property
    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.node.cluster.api)

    @property
    def apps(self) -> Any:
        from kubernetes import client

        return client.AppsV1Api(self.node.cluster.api)


class NodeCluster:
    """The session's control plane plus its one real node, as node tests see them."""

    def __init__(self, cluster: KubeCluster, node: RealNode, image_dir: Path) -> None:
        self.cluster = cluster
        self.node = node
        self.kubeconfig: Path = cluster.kubeconfig
        self._image_dir = image_dir
        self._images: dict[str, ServiceImages] = {}

    def new_namespace(self, prefix: str = "node") -> str:
        """A namespace whose pods run on the real node (they tolerate its taint). Create the
        namespace a release goes to with this before deploying."""
        return self.cluster.new_namespace(prefix, annotations=TOLERATION_ANNOTATION)

    def images(self, tag: str) -> ServiceImages:
        """The gateway, router and cache images tagged `tag`, built from the Dockerfile and imported
        into the node (once per tag in a session). Deploy them with repository `.repository`,
        `tag` and `pullPolicy: Never`."""
        if tag not in self._images:
            images = build_images(tag, self._image_dir)
            for tar in images.archives.values():
                self.node.import_image(tar)
            self._images[tag] = images
        return self._images[tag]


@pytest.fixture(scope="session")
def real_node(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    try:
        node = RealNode.start(tmp_path_factory.mktemp("node"), kube_cluster.kubeconfig)
    except NodeError as exc:
        pytest.fail(f"the real node did not start: {exc}", pytrace=False)
    try:
        yield NodeCluster(kube_cluster, node, tmp_path_factory.mktemp("images"))
    finally:
        node.stop()
