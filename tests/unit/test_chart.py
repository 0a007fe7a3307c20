"""charts/qlens rendered through the real Helm engine (the embedded SDK, offline) with the values
`qlensctl render` makes for local, staging and production, checked object by object against the
deployment guide; every object validated against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict); lint; values.schema.json; determinism; capability switches; and
the `template` / `lint` commands. What needs an API server is in
tests/integration/test_helm_adapter.py.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from qlensctl.environments import load_environment, parse_environment
from qlensctl.errors import ConfigError
from qlensctl.helm import EmbeddedHelm, manifests
from qlensctl.render import chart_dir, render_values
from tests.support.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
ENVS = ("local", "staging", "production")
SERVICES = ("gateway", "router", "cache")
PORTS = {"gateway": 8080, "router": 8081, "cache": 8082}
CRD_KINDS = {"SecretStore", "ExternalSecret", "ServiceMonitor", "PrometheusRule"}
TAG = "v1.0.0"


@pytest.fixture(autouse=True)
def _checkout_environments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QLENS_ENVIRONMENTS", str(ROOT / "environments"))


@functools.cache
def engine() -> EmbeddedHelm:
    return EmbeddedHelm()


def template_text(
    env: str, *, kube_version: str | None = None, api_versions: tuple[str, ...] = (), **overrides: Any
) -> str:
    environment = load_environment(str(ROOT / "environments" / f"{env}.yaml"))
    values = render_values(environment, version=TAG)
    values.update(overrides)
    return engine().template(
        chart_dir(), values, environment.namespace, kube_version=kube_version, api_versions=api_versions
    )


@functools.cache
def objects(env: str, kube_version: str | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object for an environment's rendered manifests."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for obj in manifests(template_text(env, kube_version=kube_version)):
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in out, f"two objects named {key}"
        out[key] = obj
    return out


def kinds(env: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for kind, name in objects(env):
        found.setdefault(kind, []).append(name)
    return found


def container(env: str, service: str) -> dict[str, Any]:
    return objects(env)[("Deployment", f"qlens-{service}")]["spec"]["template"]["spec"]["containers"][0]


def env_vars(env: str, service: str) -> dict[str, Any]:
    return {e["name"]: e for e in container(env, service)["env"]}


def service_config(env: str) -> dict[str, Any]:
    return yaml.safe_load(objects(env)[("ConfigMap", "qlens-config")]["data"]["config.yaml"])


# --- what exists where -------------------------------------------------------------------------


def test_every_environment_renders_the_same_core_objects() -> None:
    for env in ENVS:
        k = kinds(env)
        assert sorted(k["Deployment"]) == sorted(f"qlens-{s}" for s in SERVICES)
        assert sorted(k["Service"]) == sorted(f"qlens-{s}" for s in SERVICES)
        assert sorted(k["ConfigMap"]) == (["qlens-config", "qlens-dashboard"] if env == "production"
                                          else ["qlens-config"])
        assert k["Ingress"] == ["qlens-gateway"]
        assert (
            k["ServiceAccount"] == ["qlens"]
            and k["Role"] == ["qlens-role"]
            and k["RoleBinding"] == ["qlens-role"]
        )
        assert "qlens-network-policy" in k["NetworkPolicy"]
        assert "Secret" not in k  # the chart never holds secrets: qlensctl or the operator writes them


def test_crd_kinds_render_only_when_enabled() -> None:
    for env in ("local", "staging"):
        assert not CRD_KINDS & set(kinds(env)), env
        assert "HorizontalPodAutoscaler" not in kinds(env) and "PodDisruptionBudget" not in kinds(env)
    assert CRD_KINDS <= set(kinds("production"))


@pytest.mark.parametrize(
    ("env", "replicas"), [("local", (1, 1, 1)), ("staging", (1, 1, 1)), ("production", (3, 3, 2))]
)
def test_replicas(env: str, replicas: tuple[int, int, int]) -> None:
    got = tuple(objects(env)[("Deployment", f"qlens-{s}")]["spec"]["replicas"] for s in SERVICES)
    assert got == replicas


def test_production_autoscales_2_to_10_at_70_percent_cpu_with_disruption_budgets() -> None:
    objs = objects("production")
    for s in SERVICES:
        hpa = objs[("HorizontalPodAutoscaler", f"qlens-{s}")]
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": f"qlens-{s}",
        }
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
        assert hpa["spec"]["metrics"] == [
            {
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
            }
        ]
        pdb = objs[("PodDisruptionBudget", f"qlens-{s}")]
        assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["minAvailable"] == 1
        pod_labels = objs[("Deployment", f"qlens-{s}")]["spec"]["template"]["metadata"]["labels"]
        assert _selects(pdb["spec"]["selector"], pod_labels)


# --- pods: images, probes, resources, security -----------------------------------------------------


def test_images_ports_probes_and_labels() -> None:
    for env in ENVS:
        for s in SERVICES:
            deploy = objects(env)[("Deployment", f"qlens-{s}")]
            pod = deploy["spec"]["template"]
            c = container(env, s)
            assert c["image"] == f"ghcr.io/quantumlayer/qlens-{s}:{TAG}"
            assert c["ports"] == [{"name": "http", "containerPort": PORTS[s], "protocol": "TCP"}]
            assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
            assert c["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
            labels = pod["metadata"]["labels"]
            assert labels["app.kubernetes.io/name"] == "qlens"
            assert labels["app.kubernetes.io/component"] == s
            assert _selects(deploy["spec"]["selector"], labels)
            svc = objects(env)[("Service", f"qlens-{s}")]
            assert svc["spec"]["ports"] == [
                {"name": "http", "port": PORTS[s], "targetPort": "http", "protocol": "TCP"}
            ]
            assert svc["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]


def test_image_tag_falls_back_to_the_charts_app_version() -> None:
    environment = load_environment("production")
    values = render_values(environment)  # no --version: tag null
    text = engine().template(chart_dir(), values, environment.namespace)
    app_version = yaml.safe_load((chart_dir() / "Chart.yaml").read_text())["appVersion"]
    assert f"ghcr.io/quantumlayer/qlens-gateway:{app_version}" in text


def test_resources_are_each_environments() -> None:
    """Production (and local, by default): the guide's sizing; staging: small requests for a shared
    cluster, the same limits."""
    guide = {"cpu": "1000m", "memory": "1Gi"}
    requests = {"local": guide, "production": guide, "staging": {"cpu": "250m", "memory": "256Mi"}}
    for env in ENVS:
        for s in SERVICES:
            assert container(env, s)["resources"] == {
                "requests": requests[env],
                "limits": {"cpu": "2000m", "memory": "2Gi"},
            }


def test_resources_are_overridable_per_service(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "environments" / "staging.yaml").read_text())
    data["serviceResources"] = {"cache": {"limits": {"cpu": "2000m", "memory": "4Gi"}}}
    environment = parse_environment(data, "staging.yaml")
    values = render_values(environment, version=TAG)
    objs = {
        (o["kind"], o["metadata"]["name"]): o
        for o in manifests(engine().template(chart_dir(), values, "qlens-staging"))
    }
    cache = objs[("Deployment", "qlens-cache")]["spec"]["template"]["spec"]["containers"][0]["resources"]
    gateway = objs[("Deployment", "qlens-gateway")]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert cache["limits"] == {"cpu": "2000m", "memory": "4Gi"}
    # a serviceResources entry is a whole Resources model: its unset requests are the model's
    # default (1000m/1Gi), not the environment's (staging: 250m/256Mi)
    assert cache["requests"] == {"cpu": "1000m", "memory": "1Gi"}
    assert gateway["limits"] == {"cpu": "2000m", "memory": "2Gi"}


def test_pods_run_non_root_read_only_with_no_capabilities_and_a_writable_tmp() -> None:
    for env in ENVS:
        for s in SERVICES:
            spec = objects(env)[("Deployment", f"qlens-{s}")]["spec"]["template"]["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["securityContext"]["runAsUser"] != 0
            sc = spec["containers"][0]["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert mounts["tmp"]["mountPath"] == "/tmp" and "emptyDir" in volumes["tmp"]
            assert spec["serviceAccountName"] == "qlens"


def test_config_is_mounted_and_its_checksum_rolls_the_pods() -> None:
    for s in SERVICES:
        c = container("staging", s)
        assert env_vars("staging", s)["QLENS_CONFIG"]["value"] == "/etc/qlens/config.yaml"
        mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
        assert (mount["mountPath"], mount["subPath"]) == ("/etc/qlens/config.yaml", "config.yaml")

    def checksums(text: str) -> set[str]:
        return {
            o["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for o in manifests(text)
            if o["kind"] == "Deployment"
        }

    before = checksums(template_text("staging"))
    assert len(before) == 1 and re.fullmatch(r"[0-9a-f]{64}", next(iter(before)))
    changed = render_values(load_environment("staging"), version=TAG)
    changed["routing"]["deadlineSeconds"] = 60
    after = checksums(engine().template(chart_dir(), changed, "qlens-staging"))
    assert len(after) == 1 and after != before
    # the checksum covers config.yaml only: a new version rolls the pods through the image
    other_tag = render_values(load_environment("staging"), version="v9.9.9")
    assert checksums(engine().template(chart_dir(), other_tag, "qlens-staging")) == checksums(
        template_text("staging")
    )


# --- configuration and secrets -------------------------------------------------------------------


def test_the_configmap_is_the_environments_service_config() -> None:
    """The services parse config.yaml with ServiceConfig: it must equal the environment's."""
    from services.common.config import ServiceConfig

    for env in ENVS:
        rendered = ServiceConfig.model_validate(service_config(env))
        expected = ServiceConfig.model_validate(load_environment(env).public_dict())
        assert rendered.model_dump() == expected.model_dump(), env
        assert set(service_config(env)) == {
            "name",
            "providers",
            "models",
            "routing",
            "cache",
            "costControls",
            "auth",
            "usage",
            "admin",
            "gateway",
            "ports",
            "observability",
        }


@pytest.mark.parametrize(
    ("env", "cache", "limits", "auth"),
    [
        ("local", "memory", {"total": 10}, False),
        ("staging", "memory", {"total": 100}, False),
        ("production", "redis", {"total": 1000, "perTenant": 200, "perUser": 50}, True),
    ],
)
def test_cache_cost_limits_and_auth_per_environment(env: str, cache: str, limits: dict, auth: bool) -> None:
    cfg = service_config(env)
    assert cfg["cache"]["backend"] == cache
    assert {k: v for k, v in cfg["costControls"]["dailyLimits"].items() if v is not None} == limits
    assert cfg["auth"]["required"] is auth
    uses_redis = cache == "redis"
    assert ("QLENS_REDIS_URL" in env_vars(env, "cache")) is uses_redis
    # budget counters live in Redis in production: the gateway talks to Redis itself
    assert ("QLENS_REDIS_URL" in env_vars(env, "gateway")) is (cfg["costControls"]["store"] == "redis")
    assert "QLENS_REDIS_URL" not in env_vars(env, "router")
    if uses_redis:
        ref = env_vars(env, "cache")["QLENS_REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "qlens-secrets", "key": "redis-url", "optional": True}


def test_peers_and_api_keys_reach_the_gateway() -> None:
    v = env_vars("production", "gateway")
    assert v["QLENS_ROUTER_URL"]["value"] == "http://qlens-router:8081"
    assert v["QLENS_CACHE_URL"]["value"] == "http://qlens-cache:8082"
    assert v["QLENS_API_KEYS_FILE"]["value"] == "/etc/qlens/keys/keys.json"
    spec = objects("production")[("Deployment", "qlens-gateway")]["spec"]["template"]["spec"]
    keys = next(vol for vol in spec["volumes"] if vol["name"] == "api-keys")
    assert keys["secret"] == {"secretName": "qlens-api-keys", "optional": True}
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "api-keys")
    assert mount["mountPath"] == "/etc/qlens/keys" and "subPath" not in mount  # updates must reach the pod
    for s in ("router", "cache"):
        assert "QLENS_API_KEYS_FILE" not in env_vars("production", s)


def test_provider_credentials_come_from_qlens_secrets_to_the_router_only() -> None:
    expected = {
        "AZURE_OPENAI_ENDPOINT": "azure-openai-endpoint",
        "AZURE_OPENAI_API_KEY": "azure-openai-api-key",
        "AWS_REGION": "aws-region",
        "AWS_ACCESS_KEY_ID": "aws-access-key-id",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-access-key",
    }
    for env in ("staging", "production"):
        router = env_vars(env, "router")
        for name, key in expected.items():
            assert router[name]["valueFrom"]["secretKeyRef"] == {
                "name": "qlens-secrets",
                "key": key,
                "optional": True,
            }
            assert "value" not in router[name]
        for s in ("gateway", "cache"):
            assert not set(expected) & set(env_vars(env, s))


@pytest.mark.parametrize(
    "path",
    [
        ("providers", "azureOpenAI", "apiKey"),
        ("providers", "awsBedrock", "secretAccessKey"),
        ("cache", "redisUrl"),
        ("secrets", "values"),
    ],
)
def test_a_secret_value_cannot_reach_a_manifest_through_the_environment_file(path: tuple[str, ...]) -> None:
    """The chart's only input is the values rendered from an environment file, and the file cannot
    carry a credential: a key for one is refused (unknown keys are errors) before anything renders.
    Credentials reach pods by reference only (test_provider_credentials_come_from_qlens_secrets_...),
    and the chart makes no Secret object that could hold one."""
    data = yaml.safe_load((ROOT / "environments" / "production.yaml").read_text())
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = "sentinel-credential-9c1d"
    with pytest.raises(ConfigError) as err:
        parse_environment(data, "production.yaml")
    assert ".".join(path) in str(err.value) and "9c1d" not in str(err.value)
    for env in ENVS:
        assert "Secret" not in kinds(env)


def test_production_syncs_secrets_from_key_vault_and_staging_does_not() -> None:
    objs = objects("production")
    store = objs[("SecretStore", "qlens-secret-store")]
    assert store["spec"]["provider"]["azurekv"]["vaultUrl"] == "https://qlens-production.vault.azure.net"
    ext = objs[("ExternalSecret", "qlens-secrets")]
    assert ext["spec"]["refreshInterval"] == "3600s"
    assert ext["spec"]["secretStoreRef"] == {"name": "qlens-secret-store", "kind": "SecretStore"}
    assert ext["spec"]["target"]["name"] == "qlens-secrets"
    assert {d["secretKey"]: d["remoteRef"]["key"] for d in ext["spec"]["data"]} == {
        k: k
        for k in (
            "azure-openai-endpoint",
            "azure-openai-api-key",
            "aws-region",
            "aws-access-key-id",
            "aws-secret-access-key",
            "redis-url",
        )
    }
    assert ("ExternalSecret", "qlens-secrets") not in objects("staging")


# --- exposure: ingress, TLS ----------------------------------------------------------------------


@pytest.mark.parametrize(("env", "tls"), [("local", False), ("staging", False), ("production", True)])
def test_ingress_on_the_environment_domain_with_tls_only_in_production(env: str, tls: bool) -> None:
    ing = objects(env)[("Ingress", "qlens-gateway")]
    domain = load_environment(env).domain
    rule = ing["spec"]["rules"][0]
    assert rule["host"] == domain
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "qlens-gateway", "port": {"name": "http"}}
    if tls:
        assert ing["spec"]["tls"] == [{"hosts": [domain], "secretName": "qlens-tls"}]
    else:
        assert "tls" not in ing["spec"]


# --- network policies: evaluated, not just looked at ----------------------------------------------------


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        raise AssertionError(f"matchExpressions not evaluated by this test: {expr}")
    return True


class Endpoint:
    """Something that sends or receives traffic: a pod (labels, namespace labels) or the outside."""

    def __init__(
        self,
        labels: dict[str, str] | None = None,
        ns_labels: dict[str, str] | None = None,
        same_namespace: bool = True,
    ) -> None:
        self.labels = labels  # None: not a pod (the internet, a managed Redis)
        self.ns_labels = ns_labels or {}
        self.same_namespace = same_namespace


def _peer_matches(peer: dict[str, Any], who: Endpoint) -> bool:
    if "ipBlock" in peer:
        return who.labels is None
    if who.labels is None:
        return False
    ns_ok = (
        _selects(peer["namespaceSelector"], who.ns_labels)
        if "namespaceSelector" in peer
        else who.same_namespace
    )
    pod_ok = _selects(peer["podSelector"], who.labels) if "podSelector" in peer else True
    return ns_ok and pod_ok


def _port_ok(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    return not ports or any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports)


def _allowed(
    policies: list[dict], pod: Endpoint, direction: str, other: Endpoint, port: int, protocol: str
) -> bool:
    """Kubernetes semantics: no policy of that type selects the pod -> allowed; else any rule."""
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [
        p
        for p in policies
        if direction in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], pod.labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if _port_ok(rule.get("ports"), port, protocol) and (
                not peers or any(_peer_matches(p, other) for p in peers)
            ):
                return True
    return False


def reaches(env: str, src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
    policies = [o for (kind, _), o in objects(env).items() if kind == "NetworkPolicy"]
    out_ok = src.labels is None or _allowed(policies, src, "Egress", dst, port, protocol)
    in_ok = (
        dst.labels is None
        or not dst.same_namespace
        or _allowed(policies, dst, "Ingress", src, port, protocol)
    )
    return out_ok and in_ok


def _pod(env: str, service: str) -> Endpoint:
    return Endpoint(
        objects(env)[("Deployment", f"qlens-{service}")]["spec"]["template"]["metadata"]["labels"]
    )


INGRESS_CONTROLLER = Endpoint(
    {"app.kubernetes.io/name": "ingress-nginx"},
    {"kubernetes.io/metadata.name": "ingress-nginx"},
    same_namespace=False,
)
PROMETHEUS = Endpoint(
    {"app.kubernetes.io/name": "prometheus"},
    {"kubernetes.io/metadata.name": "monitoring"},
    same_namespace=False,
)
NEIGHBOUR = Endpoint({"app": "something-else"})  # another pod in the same namespace
STRANGER = Endpoint({"app": "x"}, {"kubernetes.io/metadata.name": "elsewhere"}, same_namespace=False)
INTERNET = Endpoint(None)  # Azure OpenAI, Bedrock, a managed Redis: outside the cluster
KUBE_DNS = Endpoint(
    {"k8s-app": "kube-dns"}, {"kubernetes.io/metadata.name": "kube-system"}, same_namespace=False
)


@pytest.mark.parametrize("env", ["staging", "production"])
def test_network_policy_paths(env: str) -> None:
    gw, router, cache = (_pod(env, s) for s in SERVICES)
    # only the ingress controller reaches the gateway
    assert reaches(env, INGRESS_CONTROLLER, gw, 8080)
    for who in (NEIGHBOUR, STRANGER, router, cache):
        assert not reaches(env, who, gw, 8080)
    # only the gateway reaches router and cache
    assert reaches(env, gw, router, 8081) and reaches(env, gw, cache, 8082)
    for who in (INGRESS_CONTROLLER, NEIGHBOUR, STRANGER, cache):
        assert not reaches(env, who, router, 8081)
    for who in (INGRESS_CONTROLLER, NEIGHBOUR, STRANGER, router):
        assert not reaches(env, who, cache, 8082)
    # the router reaches providers on 443, nothing else goes out
    assert reaches(env, router, INTERNET, 443)
    assert not reaches(env, router, INTERNET, 80)
    assert not reaches(env, gw, INTERNET, 443) and not reaches(env, cache, INTERNET, 443)
    # DNS for everyone; metrics scraped from the monitoring namespace
    for pod in (gw, router, cache):
        assert reaches(env, pod, KUBE_DNS, 53, "UDP") and reaches(env, pod, KUBE_DNS, 53, "TCP")
    for pod, port in ((gw, 8080), (router, 8081), (cache, 8082)):
        assert reaches(env, PROMETHEUS, pod, port)
    # Redis: the cache and the gateway (budget counters) in production, nobody in staging
    redis = env == "production"
    assert reaches(env, cache, INTERNET, 6379) is redis
    assert reaches(env, gw, INTERNET, 6379) is redis
    assert not reaches(env, router, INTERNET, 6379)


def test_the_guides_network_policy_is_there() -> None:
    base = objects("production")[("NetworkPolicy", "qlens-network-policy")]
    assert base["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "qlens"}}
    assert base["spec"]["policyTypes"] == ["Ingress", "Egress"]


# --- RBAC ------------------------------------------------------------------------------------------


def test_rbac_is_the_guides_minimal_role_and_nothing_more() -> None:
    for env in ENVS:
        objs = objects(env)
        role = objs[("Role", "qlens-role")]
        assert role["rules"] == [
            {"apiGroups": [""], "resources": ["secrets", "configmaps"], "verbs": ["get", "list"]}
        ]
        binding = objs[("RoleBinding", "qlens-role")]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "qlens-role",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "qlens", "namespace": load_environment(env).namespace}
        ]
        rbac_kinds = {k for k, _ in objs if k in {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}}
        assert rbac_kinds == {"Role", "RoleBinding"}


# --- monitoring --------------------------------------------------------------------------------------


def test_basic_monitoring_is_scrape_annotations() -> None:
    for s in SERVICES:
        ann = objects("staging")[("Deployment", f"qlens-{s}")]["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true"
        assert ann["prometheus.io/port"] == str(PORTS[s]) and ann["prometheus.io/path"] == "/metrics"
        prod = objects("production")[("Deployment", f"qlens-{s}")]["spec"]["template"]["metadata"][
            "annotations"
        ]
        assert "prometheus.io/scrape" not in prod  # full: the ServiceMonitor scrapes, not annotations


def test_full_monitoring_has_a_service_monitor_and_the_guides_alerts() -> None:
    objs = objects("production")
    sm = objs[("ServiceMonitor", "qlens")]
    assert sm["spec"]["endpoints"][0]["port"] == "http" and sm["spec"]["endpoints"][0]["path"] == "/metrics"
    for s in SERVICES:
        assert _selects(sm["spec"]["selector"], objs[("Service", f"qlens-{s}")]["metadata"]["labels"])
    rules = [r for g in objs[("PrometheusRule", "qlens")]["spec"]["groups"] for r in g["rules"]]
    by_name = {r["alert"]: r for r in rules}
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert 'namespace="qlens-production"' in rule["expr"], rule["alert"]
    # availability, error rate, cost, provider failures, performance
    assert "up{" in by_name["QLensServiceDown"]["expr"]
    assert 'status=~"5.."' in by_name["QLensHighErrorRate"]["expr"]
    spend = by_name["QLensDailySpendNearLimit"]["expr"]
    assert "qlens_budget_remaining_usd" in spend and "1000" in spend
    assert "qlens_cost_usd_total" in by_name["QLensSpendRateHigh"]["expr"]
    assert "$1000" in by_name["QLensDailyLimitReached"]["annotations"]["summary"]
    assert re.search(r"qlens_circuit_state\{[^}]*\}\) == 2", by_name["QLensCircuitOpen"]["expr"])
    assert "qlens_provider_requests_total" in by_name["QLensProviderErrorRatio"]["expr"]
    assert "qlens_request_duration_seconds_bucket" in by_name["QLensGatewayLatencyHigh"]["expr"]
    assert "qlens_gateway_overhead_seconds_bucket" in by_name["QLensGatewayOverheadHigh"]["expr"]
    # Prometheus templates pass through Helm untouched
    assert "{{ $labels.deployment }}" in by_name["QLensCircuitOpen"]["annotations"]["summary"]


# --- schemas: Kubernetes OpenAPI, values.schema.json --------------------------------------------------


@pytest.mark.parametrize("env", ENVS)
@pytest.mark.parametrize("kube", ["1.25.0", None], ids=["k8s-1.25", "k8s-current"])
def test_every_object_validates_against_the_kubernetes_openapi_schemas(env: str, kube: str | None) -> None:
    """Strict (unknown fields fail). 1.25 is the oldest schema set kubernetes-validate ships; 1.20 is
    checked against a real 1.20 API server's OpenAPI document in tests/integration."""
    import kubernetes_validate

    version = kube or kubernetes_validate.latest_version()
    failures, checked = [], set()
    for (kind, name), obj in objects(env, kube).items():
        if kind in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
            checked.add(kind)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            failures.append(f"{kind}/{name}: {getattr(exc, 'message', exc)}")
    assert not failures, "\n".join(failures)
    assert {"Deployment", "Service", "ConfigMap", "Ingress", "NetworkPolicy", "Role"} <= checked


def test_the_validator_is_strict_enough_to_fail() -> None:
    """Negative control: a typo in a field name is caught, so a pass above means something."""
    import kubernetes_validate

    deploy = yaml.safe_load(yaml.safe_dump(objects("staging")[("Deployment", "qlens-gateway")]))
    deploy["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deploy, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize(
    ("override", "path"),
    [
        ({"replicas": {"gateway": "three", "router": 1, "cache": 1}}, "/replicas/gateway"),
        ({"autoscaling": {"enabled": "yes"}}, "/autoscaling/enabled"),
        ({"ports": {"gateway": 70000, "router": 8081, "cache": 8082}}, "/ports/gateway"),
        ({"monitoring": {"mode": "everything"}}, "/monitoring/mode"),
        ({"costControls": {"dailyLimits": {"total": "lots"}}}, "/costControls/dailyLimits/total"),
        ({"replica": {"gateway": 1}}, "replica"),
    ],
    ids=["int", "bool", "port", "enum", "limit", "typo"],
)
def test_values_schema_rejects_a_wrong_type_naming_the_path(override: dict, path: str) -> None:
    environment = load_environment("staging")
    values = {**render_values(environment, version=TAG), **override}
    with pytest.raises(ConfigError) as err:
        engine().template(chart_dir(), values, environment.namespace)
    assert "values.schema.json" in err.value.message and path in err.value.message
    assert err.value.exit_code == 2


def test_the_chart_refuses_values_for_another_namespace() -> None:
    values = render_values(load_environment("production"), version=TAG)
    with pytest.raises(
        ConfigError, match="these values are for namespace qlens-production, not qlens-staging"
    ):
        engine().template(chart_dir(), values, "qlens-staging")


def test_key_vault_without_an_external_secret_is_refused() -> None:
    values = render_values(load_environment("production"), version=TAG)
    values["externalSecrets"]["enabled"] = False
    with pytest.raises(ConfigError, match="secrets.backend is keyVault but externalSecrets.enabled is false"):
        engine().template(chart_dir(), values, "qlens-production")


# --- capabilities, determinism, lint ------------------------------------------------------------------


def test_api_versions_follow_the_clusters_capabilities() -> None:
    def api(kind: str, **kw: Any) -> set[str]:
        return {o["apiVersion"] for o in manifests(template_text("production", **kw)) if o["kind"] == kind}

    assert api("HorizontalPodAutoscaler", kube_version="1.20.0") == {"autoscaling/v2beta2"}
    assert api("PodDisruptionBudget", kube_version="1.20.0") == {"policy/v1beta1"}
    assert api("HorizontalPodAutoscaler", kube_version="1.22.0") == {"autoscaling/v2beta2"}
    assert api("PodDisruptionBudget", kube_version="1.22.0") == {"policy/v1"}
    assert api("HorizontalPodAutoscaler", kube_version="1.30.0") == {"autoscaling/v2"}
    assert api("PodDisruptionBudget", kube_version="1.30.0") == {"policy/v1"}
    # External Secrets Operator: v1 where the cluster serves it, else v1beta1
    assert api("ExternalSecret") == {"external-secrets.io/v1beta1"}
    assert api("ExternalSecret", api_versions=("external-secrets.io/v1",)) == {"external-secrets.io/v1"}
    assert api("SecretStore", api_versions=("external-secrets.io/v1",)) == {"external-secrets.io/v1"}


def test_template_output_is_byte_identical_across_runs_and_processes() -> None:
    for env in ENVS:
        assert template_text(env) == template_text(env)
    outputs = set()
    for seed in ("3", "4"):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "qlensctl.main",
                "template",
                "production",
                "--version",
                TAG,
                "--helm",
                "embedded",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
            env={**os.environ, "PYTHONHASHSEED": seed, "QLENS_ENVIRONMENTS": str(ROOT / "environments")},
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.add(proc.stdout)
    assert len(outputs) == 1
    assert outputs.pop() == template_text("production")


def test_template_is_in_helms_install_order_with_source_lines() -> None:
    text = template_text("production")
    order = [o["kind"] for o in manifests(text)]
    assert order.index("NetworkPolicy") < order.index("ServiceAccount") < order.index("ConfigMap")
    assert order.index("ConfigMap") < order.index("Role") < order.index("Service") < order.index("Deployment")
    assert order.index("Deployment") < order.index("HorizontalPodAutoscaler") < order.index("Ingress")
    assert text.count("# Source: qlens/templates/") == len(order)


@pytest.mark.parametrize("env", ENVS)
def test_lint_is_clean(env: str) -> None:
    environment = load_environment(env)
    report = engine().lint(chart_dir(), render_values(environment, version=TAG), environment.namespace)
    assert report.ok, report.messages
    assert not [m for m in report.messages if m.severity != "info"]


def test_lint_reports_bad_values() -> None:
    environment = load_environment("staging")
    values = {**render_values(environment, version=TAG), "replicas": {"gateway": "three"}}
    report = engine().lint(chart_dir(), values, environment.namespace)
    assert not report.ok
    assert any("/replicas/gateway" in m.message for m in report.errors)


# --- the commands ------------------------------------------------------------------------------------


def test_template_command_prints_the_manifests() -> None:
    result = run_cli("template", "production", "--version", TAG, "--helm", "embedded")
    assert result.code == 0, result.err
    assert result.out == template_text("production")


def test_template_command_for_an_old_cluster() -> None:
    result = run_cli(
        "template", "production", "--version", TAG, "--kube-version", "1.20.0", "--helm", "embedded"
    )
    assert result.code == 0, result.err
    assert (
        "apiVersion: autoscaling/v2beta2" in result.out and "apiVersion: autoscaling/v2\n" not in result.out
    )


def test_lint_command() -> None:
    ok = run_cli("lint", "production", "--helm", "embedded", "--json")
    assert ok.code == 0, ok.err
    assert yaml.safe_load(ok.out)["ok"] is True
    people = run_cli("lint", "staging", "--helm", "embedded")
    assert people.code == 0 and "lint clean" in people.out


def test_unknown_helm_mode_and_missing_binary_are_usage_errors() -> None:
    bad = run_cli("template", "staging", "--helm", "docker")
    assert bad.code == 2 and "--helm 'docker'" in bad.err
    gone = run_cli("template", "staging", "--helm", "binary")
    assert gone.code == 2 and "--helm binary is no longer offered" in gone.err
    assert "--helm embedded" in gone.err


def test_auto_is_the_embedded_engine_the_suite_tests() -> None:
    from qlensctl.helm import EmbeddedHelm, select_helm

    assert type(select_helm("auto")) is EmbeddedHelm


def test_template_with_a_bad_environment_is_exit_2_with_the_key_path(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "environments" / "staging.yaml").read_text())
    data["replicas"]["cache"] = "two"
    path = tmp_path / "staging.yaml"
    path.write_text(yaml.safe_dump(data))
    result = run_cli("template", str(path), "--helm", "embedded")
    assert result.code == 2 and "replicas.cache: must be a number" in result.err


# --- the image the chart runs ----------------------------------------------------------------------


def test_dockerfile_builds_the_images_the_chart_runs() -> None:
    """One target per service, running `python -m services.<service>` on its port, as the
    chart's non-root user; the chart's image names are <repository>/qlens-<target>."""
    text = (ROOT / "Dockerfile").read_text()
    run_as = objects("production")[("Deployment", "qlens-gateway")]["spec"]["template"]["spec"][
        "securityContext"
    ]
    for s in SERVICES:
        stage = text.split(f" AS {s}\n", 1)[1].split("\nFROM ", 1)[0]
        assert f"EXPOSE {PORTS[s]}" in stage
        assert f'CMD ["python", "-m", "services.{s}"]' in stage
        assert (ROOT / "services" / s / "__main__.py").is_file()
    assert f"USER {run_as['runAsUser']}:{run_as['runAsGroup']}" in text
    assert "--uid 10001" in text and "--gid 10001" in text
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1] == "!services/"  # nothing but the services in the build context


def test_admin_api_mounts_its_keys_and_opens_its_network_policy_rule() -> None:
    """admin.enabled: Secret qlens-admin-keys mounted (optional) + QLENS_ADMIN_KEYS_FILE, and the
    gateway's NetworkPolicy admits networkPolicy.admin.from; off (every environment today): neither."""
    def render(admin: bool) -> dict[tuple[str, str], dict[str, Any]]:
        text = template_text("production", admin={"enabled": admin, "keysFile": None})
        return {(o["kind"], o["metadata"]["name"]): o for o in manifests(text)}

    on, off = render(True), render(False)
    for objs, enabled in ((on, True), (off, False)):
        pod = objs[("Deployment", "qlens-gateway")]["spec"]["template"]["spec"]
        gateway = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in gateway["env"]}
        mounts = {m["name"]: m["mountPath"] for m in gateway["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        rules = objs[("NetworkPolicy", "qlens-gateway-network-policy")]["spec"]["ingress"]
        admin_rule = {"from": [{"podSelector": {"matchLabels": {"qlens.io/admin-client": "true"}}}],
                      "ports": [{"protocol": "TCP", "port": 8080}]}
        assert (admin_rule in rules) is enabled
        if enabled:
            assert env["QLENS_ADMIN_KEYS_FILE"] == "/etc/qlens/admin-keys/keys.json"
            assert mounts["admin-keys"] == "/etc/qlens/admin-keys"
            assert volumes["admin-keys"]["secret"] == {"secretName": "qlens-admin-keys", "optional": True}
        else:
            assert "QLENS_ADMIN_KEYS_FILE" not in env and "admin-keys" not in mounts
        cfg = yaml.safe_load(objs[("ConfigMap", "qlens-config")]["data"]["config.yaml"])
        assert cfg["admin"]["enabled"] is enabled and cfg["usage"] == {"enabled": True, "retentionDays": 400}
        assert cfg["costControls"]["limits"]["perTenant"] == {"daily": None, "monthly": None, "rpm": None,
                                                              "tpm": None}
