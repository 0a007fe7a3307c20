"""The Helm adapter against a real API server (the session's control plane, Kubernetes 1.20, with
the fake kubelet so rollouts and waits are real), and the chart accepted by that server.

1. One contract suite for the engine qlensctl uses (EmbeddedHelm, the Helm SDK in-process, which
   `--helm auto` selects): install, upgrade, history, get values, rollback (previous and given
   revision), status, an atomic upgrade that never gets Ready and is rolled back, dry
   runs, errors.
2. The rendered manifests of local, staging and production are accepted by the API server with
   server-side dry run, validate strictly against that server's own OpenAPI document (1.20: the
   oldest Kubernetes the chart supports), and a live install picks the API versions the cluster
   serves (autoscaling/v2beta2 and policy/v1beta1 on 1.20).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from qlensctl.environments import load_environment
from qlensctl.errors import ClusterError, ConfigError, OperationError
from qlensctl.helm import EmbeddedHelm, ReleaseNotFoundError, manifests, select_helm
from qlensctl.render import chart_dir, render_values

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
RELEASE = "qlens"
SERVICES = ("gateway", "router", "cache")
CRD_KINDS = {"SecretStore", "ExternalSecret", "ServiceMonitor", "PrometheusRule"}


@pytest.fixture
def helm(kube_cluster: Any) -> EmbeddedHelm:
    return select_helm("auto", kubeconfig=kube_cluster.kubeconfig)


@pytest.fixture
def namespace(kube_cluster: Any, fake_kubelet: Any) -> str:
    ns = kube_cluster.new_namespace("helm")
    fake_kubelet.serve(ns)
    return ns


def values_for(env: str, namespace: str, tag: str = "v1.0.0") -> dict[str, Any]:
    """The environment's rendered values, retargeted at a test namespace."""
    values = render_values(load_environment(str(ROOT / "environments" / f"{env}.yaml")), version=tag)
    values["namespace"] = namespace
    return values


def deployed_images(cluster: Any, ns: str) -> dict[str, str]:
    from kubernetes import client

    apps = client.AppsV1Api(cluster.api)
    return {
        d.metadata.name: d.spec.template.spec.containers[0].image
        for d in apps.list_namespaced_deployment(ns).items
    }


# --- 1. the contract -----------------------------------------------------------------------------------


def test_lifecycle_install_upgrade_history_rollback_status_values(
    helm: EmbeddedHelm, namespace: str, kube_cluster: Any
) -> None:
    v1 = values_for("staging", namespace, "v1.0.0")
    first = helm.upgrade_or_install(
        RELEASE, chart_dir(), v1, namespace, wait=True, timeout=60,
        description="qlensctl deploy staging v1.0.0",
    )
    assert (first.revision, first.status, first.chart) == (1, "deployed", "qlens-0.1.0")
    assert (first.app_version, first.description) == ("v1.0.0", "qlensctl deploy staging v1.0.0")
    assert first.namespace == namespace and first.name == RELEASE
    assert deployed_images(kube_cluster, namespace) == {
        f"qlens-{s}": f"ghcr.io/quantumlayer/qlens-{s}:v1.0.0" for s in SERVICES
    }

    v2 = values_for("staging", namespace, "v1.1.0")
    second = helm.upgrade_or_install(
        RELEASE, chart_dir(), v2, namespace, wait=True, timeout=60,
        description="qlensctl deploy staging v1.1.0",
    )
    assert (second.revision, second.status) == (2, "deployed")
    assert "qlens-gateway:v1.1.0" in second.manifest
    assert [(r.revision, r.status) for r in helm.history(RELEASE, namespace)] == [
        (1, "superseded"),
        (2, "deployed"),
    ]
    assert helm.get_values(RELEASE, namespace) == json.loads(json.dumps(v2))
    assert helm.get_values(RELEASE, namespace, revision=1)["image"]["tag"] == "v1.0.0"
    assert (
        helm.get_values(RELEASE, namespace, all_values=True)["networkPolicy"]["enabled"] is True
    )  # a chart default

    back = helm.rollback(RELEASE, namespace, wait=True, timeout=60)  # to the previous revision
    assert (back.revision, back.status) == (3, "deployed")
    assert helm.get_values(RELEASE, namespace)["image"]["tag"] == "v1.0.0"
    assert set(deployed_images(kube_cluster, namespace).values()) == {
        f"ghcr.io/quantumlayer/qlens-{s}:v1.0.0" for s in SERVICES
    }

    again = helm.rollback(RELEASE, namespace, revision=2, wait=True, timeout=60)  # to a given revision
    assert again.revision == 4
    assert helm.get_values(RELEASE, namespace)["image"]["tag"] == "v1.1.0"

    # each revision's description (ours, or Helm's "Rollback to N") and the image tag it runs as
    # its app version (the chart's appVersion is a fixed 0.1.0)
    assert [(r.revision, r.app_version, r.description) for r in helm.history(RELEASE, namespace)] == [
        (1, "v1.0.0", "qlensctl deploy staging v1.0.0"),
        (2, "v1.1.0", "qlensctl deploy staging v1.1.0"),
        (3, "v1.0.0", "Rollback to 1"),
        (4, "v1.1.0", "Rollback to 2"),
    ]
    status = helm.status(RELEASE, namespace)
    assert (status.revision, status.status, status.app_version) == (4, "deployed", "v1.1.0")
    assert status.description == "Rollback to 2"
    assert {o["kind"] for o in manifests(status.manifest)} >= {
        "Deployment",
        "Service",
        "ConfigMap",
        "NetworkPolicy",
    }
    assert status.to_dict()["revision"] == 4 and "manifest" not in status.to_dict()


def test_an_upgrade_that_never_gets_ready_is_rolled_back(
    helm: EmbeddedHelm, namespace: str, kube_cluster: Any
) -> None:
    helm.upgrade_or_install(
        RELEASE, chart_dir(), values_for("staging", namespace), namespace, wait=True, timeout=60
    )
    broken = values_for("staging", namespace, "unready")  # the fake kubelet never makes `:unready` Ready
    started = time.monotonic()
    with pytest.raises(OperationError) as err:
        helm.upgrade_or_install(RELEASE, chart_dir(), broken, namespace, atomic=True, wait=True, timeout=6)
    assert time.monotonic() - started < 120  # bounded by --timeout (plus the rollback), not forever
    assert "failed and was rolled back" in err.value.message
    assert err.value.exit_code == 1 and err.value.hint
    history = helm.history(RELEASE, namespace)
    assert [r.status for r in history] == ["superseded", "failed", "deployed"]
    status = helm.status(RELEASE, namespace)
    assert status.revision == 3 and status.status == "deployed"
    assert helm.get_values(RELEASE, namespace)["image"]["tag"] == "v1.0.0"
    deadline = time.monotonic() + 30  # the rollback's own rollout settles the Deployments' spec at once
    while time.monotonic() < deadline and any(
        ":unready" in i for i in deployed_images(kube_cluster, namespace).values()
    ):
        time.sleep(0.2)
    assert all(i.endswith(":v1.0.0") for i in deployed_images(kube_cluster, namespace).values())


def test_dry_run_changes_nothing(helm: EmbeddedHelm, namespace: str, kube_cluster: Any) -> None:
    result = helm.upgrade_or_install(
        RELEASE, chart_dir(), values_for("staging", namespace), namespace, dry_run=True
    )
    assert "kind: Deployment" in result.manifest
    with pytest.raises(ReleaseNotFoundError):
        helm.history(RELEASE, namespace)
    assert deployed_images(kube_cluster, namespace) == {}


def test_unknown_release_and_revision(helm: EmbeddedHelm, namespace: str) -> None:
    for call in (
        lambda: helm.status("nope", namespace),
        lambda: helm.history("nope", namespace),
        lambda: helm.get_values("nope", namespace),
        lambda: helm.rollback("nope", namespace, wait=False),
    ):
        with pytest.raises(ReleaseNotFoundError) as err:
            call()
        assert "not found" in err.value.message and err.value.hint
    helm.upgrade_or_install(RELEASE, chart_dir(), values_for("staging", namespace), namespace, wait=False)
    with pytest.raises(ReleaseNotFoundError):
        helm.rollback(RELEASE, namespace, revision=99, wait=False)
    assert [r.revision for r in helm.history(RELEASE, namespace)] == [1]


def test_bad_values_are_refused_before_anything_changes(
    helm: EmbeddedHelm, namespace: str, kube_cluster: Any
) -> None:
    bad = values_for("staging", namespace)
    bad["replicas"]["gateway"] = "three"
    with pytest.raises(ConfigError, match=r"/replicas/gateway|replicas\.gateway"):  # Helm 4 | Helm 3 wording
        helm.upgrade_or_install(RELEASE, chart_dir(), bad, namespace, wait=False)
    wrong_ns = values_for("staging", "qlens-staging")
    with pytest.raises(ConfigError, match="for namespace qlens-staging"):
        helm.upgrade_or_install(RELEASE, chart_dir(), wrong_ns, namespace, wait=False)
    with pytest.raises(ReleaseNotFoundError):
        helm.history(RELEASE, namespace)
    assert deployed_images(kube_cluster, namespace) == {}


def test_unreachable_cluster_unknown_context_missing_kubeconfig(
    request: pytest.FixtureRequest, helm: EmbeddedHelm, tmp_path: Path, kube_cluster: Any
) -> None:
    """One-line errors with a hint, quickly: no hang, no traceback."""
    import yaml

    from qlensctl.local import free_port

    doc = yaml.safe_load(Path(kube_cluster.kubeconfig).read_text())
    doc["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"  # nothing listens
    dead = tmp_path / "dead.yaml"
    dead.write_text(yaml.safe_dump(doc))
    kind = helm.kind
    started = time.monotonic()
    with pytest.raises(ClusterError) as err:
        select_helm(kind, kubeconfig=dead).status(RELEASE, "default")
    assert time.monotonic() - started < 30
    assert "cannot reach the Kubernetes API server" in err.value.message and err.value.exit_code == 1
    with pytest.raises(ConfigError, match="unknown kube context"):
        select_helm(kind, kubeconfig=kube_cluster.kubeconfig, kube_context="no-such-context").history(
            RELEASE, "default"
        )
    with pytest.raises(ConfigError, match="does not exist"):
        select_helm(kind, kubeconfig=tmp_path / "missing.yaml").status(RELEASE, "default")


def test_template_and_lint_work_offline(helm: EmbeddedHelm) -> None:
    values = values_for("production", "qlens-production")
    text = helm.template(chart_dir(), values, "qlens-production", kube_version="1.20.0")
    assert {o["apiVersion"] for o in manifests(text) if o["kind"] == "HorizontalPodAutoscaler"} == {
        "autoscaling/v2beta2"
    }
    assert helm.lint(chart_dir(), values, "qlens-production").ok


def test_a_live_install_uses_the_api_versions_the_cluster_serves(
    helm: EmbeddedHelm, namespace: str, kube_cluster: Any
) -> None:
    """Production on Kubernetes 1.20: discovery has no autoscaling/v2 or policy/v1, and the test
    CRDs serve external-secrets.io/v1, so the chart picks v2beta2, v1beta1 and ESO v1."""
    kube_cluster.install_crds()
    release = helm.upgrade_or_install(
        RELEASE, chart_dir(), values_for("production", namespace), namespace, wait=True, timeout=90
    )
    assert release.status == "deployed"
    api = {o["kind"]: o["apiVersion"] for o in manifests(helm.status(RELEASE, namespace).manifest)}
    assert api["HorizontalPodAutoscaler"] == "autoscaling/v2beta2"
    assert api["PodDisruptionBudget"] == "policy/v1beta1"
    assert api["ExternalSecret"] == api["SecretStore"] == "external-secrets.io/v1"
    assert {k: v for k, v in deployed_replicas(kube_cluster, namespace).items()} == {
        "qlens-gateway": 3,
        "qlens-router": 3,
        "qlens-cache": 2,
    }


def deployed_replicas(cluster: Any, ns: str) -> dict[str, int]:
    from kubernetes import client

    apps = client.AppsV1Api(cluster.api)
    return {d.metadata.name: d.status.ready_replicas or 0 for d in apps.list_namespaced_deployment(ns).items}


# --- 2. the API server accepts what the chart renders --------------------------------------------------


def _server_version(cluster: Any) -> str:
    from kubernetes import client

    info = client.VersionApi(cluster.api).get_code()
    return info.git_version.lstrip("v").split("-")[0]


def _served_api_versions(cluster: Any) -> list[str]:
    """What `helm install` sees through discovery: every group/version the server serves."""
    from kubernetes import client

    versions = ["v1"]
    for group in client.ApisApi(cluster.api).get_api_versions().groups:
        versions += [v.group_version for v in group.versions]
    return sorted(versions)


def _rendered_for_cluster(env: str, namespace: str, cluster: Any) -> list[dict[str, Any]]:
    text = select_helm("embedded").template(
        chart_dir(),
        values_for(env, namespace),
        namespace,
        kube_version=_server_version(cluster),
        api_versions=_served_api_versions(cluster),
    )
    return manifests(text)


@pytest.mark.parametrize("env", ["local", "staging", "production"])
def test_the_api_server_accepts_every_object_with_server_side_dry_run(env: str, kube_cluster: Any) -> None:
    from kubernetes import dynamic

    kube_cluster.install_crds()
    namespace = kube_cluster.new_namespace("dryrun")
    client = dynamic.DynamicClient(kube_cluster.api)
    objs = _rendered_for_cluster(env, namespace, kube_cluster)
    accepted = []
    for obj in objs:
        resource = client.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        resource.create(body=obj, namespace=namespace, dry_run="All")
        accepted.append(obj["kind"])
    assert {"Deployment", "Service", "ConfigMap", "Ingress", "NetworkPolicy", "Role", "RoleBinding"} <= set(
        accepted
    )
    if env == "production":
        assert {"HorizontalPodAutoscaler", "PodDisruptionBudget"} | CRD_KINDS <= set(accepted)
    # dry run: nothing was stored
    assert client.resources.get(api_version="apps/v1", kind="Deployment").get(namespace=namespace).items == []


def _strict_openapi(cluster: Any) -> tuple[dict[str, Any], dict[tuple[str, str, str], str]]:
    """The server's /openapi/v2 with unknown fields forbidden (1.20's API server drops them
    silently, so only a strict check catches a misspelt field for that version)."""
    response = cluster.api.call_api(
        "/openapi/v2",
        "GET",
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
    )
    spec = json.loads(response.data)
    definitions = spec["definitions"]
    for name, schema in definitions.items():
        if name.endswith("intstr.IntOrString"):
            definitions[name] = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
        elif name.endswith("api.resource.Quantity"):
            definitions[name] = {"oneOf": [{"type": "string"}, {"type": "number"}]}
        elif "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    by_gvk = {}
    for name, schema in definitions.items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            by_gvk[(gvk["group"], gvk["version"], gvk["kind"])] = name
    return definitions, by_gvk


@pytest.mark.parametrize("env", ["local", "staging", "production"])
def test_every_object_validates_against_the_1_20_servers_openapi(env: str, kube_cluster: Any) -> None:
    import jsonschema

    assert _server_version(kube_cluster).startswith("1.20.")
    definitions, by_gvk = _strict_openapi(kube_cluster)
    failures, checked = [], set()
    for obj in _rendered_for_cluster(env, "qlens-check", kube_cluster):
        if obj["kind"] in CRD_KINDS:
            continue
        group, _, version = obj["apiVersion"].rpartition("/")
        name = by_gvk[(group, version, obj["kind"])]
        validator = jsonschema.Draft4Validator({"$ref": f"#/definitions/{name}", "definitions": definitions})
        errors = [
            f"{obj['kind']}/{obj['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}"
            for e in validator.iter_errors(obj)
        ]
        failures += errors
        checked.add(obj["kind"])
    assert not failures, "\n".join(failures)
    assert {"Deployment", "Service", "ConfigMap", "Ingress", "NetworkPolicy"} <= checked
    # negative control: the strict schema does catch a misspelt field
    deployment = next(
        o for o in _rendered_for_cluster(env, "qlens-check", kube_cluster) if o["kind"] == "Deployment"
    )
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    validator = jsonschema.Draft4Validator(
        {"$ref": f"#/definitions/{by_gvk[('apps', 'v1', 'Deployment')]}", "definitions": definitions}
    )
    assert any("imagePullPolicyy" in e.message for e in validator.iter_errors(deployment))
