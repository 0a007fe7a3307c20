"""`scale` and `secrets sync staging` and the keys Secret, against the real control plane.

The three deployments here are plain ones named as the chart names them (no Helm needed to
scale); the HPA is a real autoscaling/v1 object the controller-manager acts on."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from tests.k8s.harness import LOCK, Cli, Target, assert_no_secrets, lease, plant_lease
from tests.support.json_errors import json_error

pytestmark = pytest.mark.cluster


def _deployment(name: str, replicas: int) -> dict:
    labels = {"app.kubernetes.io/instance": "qlens", "app.kubernetes.io/component": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "app", "image": f"example/{name}:1"}]}}}}


@pytest.fixture
def deployed(ops: Target) -> Target:
    """qlens-gateway/router/cache in both namespaces; production's gateway has an HPA (2..10, 70%)."""
    from kubernetes import client

    apps = client.AppsV1Api(ops.api)
    for env, counts in (("staging", (1, 1, 1)), ("production", (3, 3, 2))):
        for service, n in zip(("gateway", "router", "cache"), counts, strict=True):
            apps.create_namespaced_deployment(ops.namespaces[env], _deployment(f"qlens-{service}", n))
    hpas = client.AutoscalingV1Api(ops.api)
    hpas.create_namespaced_horizontal_pod_autoscaler(ops.namespaces["production"], {
        "metadata": {"name": "qlens-gateway"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "qlens-gateway"},
                 "minReplicas": 2, "maxReplicas": 10, "targetCPUUtilizationPercentage": 70}})
    return ops


def test_scale_staging_prints_before_and_after(deployed: Target, cli: Cli) -> None:
    run = cli("scale", "staging", "gateway", "4", "--json")
    assert run.code == 0, run
    assert json.loads(run.out) == {  # stdout is the document alone
        "environment": "staging", "namespace": deployed.namespaces["staging"], "changes": [
            {"service": "gateway", "deployment": "qlens-gateway", "before": 1, "after": 4,
             "autoscaler": None}]}
    assert deployed.replicas("staging") == {"gateway": 4, "router": 1, "cache": 1}
    human = cli("scale", "staging", "cache", "0")
    assert human.code == 0, human
    assert "qlens-cache" in human.out and "before" in human.out
    assert deployed.replicas("staging")["cache"] == 0


@pytest.mark.parametrize("args", [["gateway", "101"], ["gateway", "-1"], ["gateway", "three"],
                                  ["web", "3"], ["Gateway", "2"]])
def test_bad_service_or_count_is_exit_2_and_changes_nothing(deployed: Target, cli: Cli,
                                                            args: list[str]) -> None:
    run = cli("scale", "staging", *args)
    assert run.code == 2, run
    assert "error:" in run.err and "hint:" in run.err and "Traceback" not in run.text
    assert deployed.replicas("staging") == {"gateway": 1, "router": 1, "cache": 1}


def test_hpa_warning_says_what_the_autoscaler_will_do(deployed: Target, cli: Cli) -> None:
    above = cli("scale", "production", "gateway", "12", "--yes")
    assert above.code == 0, above
    assert "HPA qlens-gateway" in above.err and "min 2, max 10" in above.err
    assert "lower it back to 10" in above.err
    back = cli("scale", "production", "gateway", "3", "--yes", "--json")
    assert back.code == 0, back
    change = json.loads(back.out)["changes"][0]
    assert (change["before"], change["after"]) == (12, 3)
    assert change["autoscaler"] == {"name": "qlens-gateway", "min_replicas": 2, "max_replicas": 10,
                                    "target_cpu": 70,
                                    "verdict": "HPA qlens-gateway (min 2, max 10, target CPU 70%) will keep "
                                               "adjusting it to CPU load"}
    assert "HPA qlens-gateway" in back.err  # the warning still goes to stderr
    below = cli("scale", "production", "gateway", "1", "--yes")
    assert below.code == 0, below
    assert "raise it back to 2" in below.err
    plain = cli("scale", "production", "router", "4", "--yes")
    assert plain.code == 0 and "HPA" not in plain.err, plain  # no autoscaler on the router


def test_production_asks_first_and_guards_the_context(deployed: Target, cli: Cli, tmp_path: Path) -> None:
    unconfirmed = cli("scale", "production", "router", "5")
    assert unconfirmed.code == 2, unconfirmed
    assert "--yes" in unconfirmed.err
    other = deployed.cluster.kubeconfig_with_contexts(tmp_path / "other", ["qlens-production"],
                                                      current="local")
    guarded = cli("scale", "production", "router", "5", "--yes", env={"KUBECONFIG": str(other)})
    assert guarded.code == 2, guarded
    assert "qlens-production" in guarded.err
    assert deployed.replicas("production")["router"] == 3
    done = cli("scale", "production", "router", "5", "--yes")
    assert done.code == 0, done
    assert deployed.replicas("production")["router"] == 5


def test_scale_without_a_release_is_a_clear_error(ops: Target, cli: Cli) -> None:
    run = cli("scale", "staging", "gateway", "2")
    assert run.code == 1, run
    assert "qlens-gateway not found" in run.err and "Traceback" not in run.text
    as_json = cli("scale", "staging", "gateway", "2", "--json")
    assert as_json.code == 1, as_json
    error = json_error(as_json)
    assert error["type"] == "ClusterError" and "qlens-gateway not found" in error["message"]


def test_failures_with_json_are_one_error_document_and_change_nothing(deployed: Target, cli: Cli,
                                                                      tmp_path: Path) -> None:
    other = deployed.cluster.kubeconfig_with_contexts(tmp_path / "other", ["qlens-production"],
                                                      current="local")
    before = {env: deployed.replicas(env) for env in ("staging", "production")}
    cases = [  # (args, env, type, exit code, words in the message)
        (["scale", "qa", "gateway", "3"], None, "ConfigError", 2, "unknown environment 'qa'"),
        (["scale", "staging", "gateway", "101"], None, "ConfigError", 2, "between 0 and 100 (got 101)"),
        (["scale", "staging", "web", "3"], None, "ConfigError", 2, "unknown service 'web'"),
        (["scale", "production", "router", "5"], None, "RefusedError", 2, "needs confirmation"),
        (["scale", "production", "router", "5", "--yes"], {"KUBECONFIG": str(other)}, "RefusedError", 2,
         "deploys only to 'qlens-production'"),
        (["scale", "production", "router", "5", "--yes", "--kube-context", "local"], None, "RefusedError", 2,
         "is pinned to kube context 'qlens-production', not 'local'"),
        (["maintenance", "start", "production", "--yes"], {"KUBECONFIG": str(other)}, "RefusedError", 2,
         "deploys only to 'qlens-production'"),
        (["maintenance", "start", "staging", "--replicas", "101"], None, "UsageError", 2, "'--replicas'"),
    ]
    for args, env, kind, code, words in cases:
        run = cli(*args, "--json", env=env)
        assert run.code == code, run
        error = json_error(run)
        assert error["type"] == kind and words in error["message"] and error["hint"], run
    # the deploy lock, held by a deploy: refused, named, nothing changed
    plant_lease(deployed, deployed.namespaces["staging"], "alice@laptop pid 42", "qlensctl deploy staging v9",
                renewed_ago=5)
    locked = cli("scale", "staging", "gateway", "3", "--json")
    assert locked.code == 2, locked
    error = json_error(locked)
    assert error["type"] == "LockHeldError"  # a RefusedError: exit 2
    assert "`qlensctl deploy staging v9` by alice@laptop pid 42" in error["message"]
    assert {env: deployed.replicas(env) for env in ("staging", "production")} == before
    assert not (cli.cwd / "backup").exists()


# -- secrets sync staging -> Secret qlens-secrets ---------------------------------------------------


def test_secrets_sync_staging_writes_the_secret_and_shows_only_names(ops: Target, cli: Cli,
                                                                    sentinels: dict[str, str]) -> None:
    from kubernetes import client

    staging_vars = {k: v for k, v in sentinels.items() if k != "QLENS_REDIS_URL"}
    partial = {k: v for k, v in staging_vars.items() if k != "AWS_SECRET_ACCESS_KEY"}
    missing = cli("secrets", "sync", "staging", env=partial)
    assert missing.code == 2, missing
    assert "AWS_SECRET_ACCESS_KEY" in missing.err
    core = client.CoreV1Api(ops.api)
    assert not [s for s in core.list_namespaced_secret(ops.namespaces["staging"]).items
                if s.metadata.name == "qlens-secrets"]

    run = cli("secrets", "sync", "staging", env=staging_vars)
    assert run.code == 0, run
    secret = core.read_namespaced_secret("qlens-secrets", ops.namespaces["staging"])
    data = {k: base64.b64decode(v).decode() for k, v in secret.data.items()}
    assert data == {"azure-openai-endpoint": sentinels["AZURE_OPENAI_ENDPOINT"],
                    "azure-openai-api-key": sentinels["AZURE_OPENAI_API_KEY"],
                    "aws-region": "us-east-1", "aws-access-key-id": sentinels["AWS_ACCESS_KEY_ID"],
                    "aws-secret-access-key": sentinels["AWS_SECRET_ACCESS_KEY"]}
    assert "azure-openai-api-key" in run.out and "created" in run.out

    rotated = dict(staging_vars, AZURE_OPENAI_API_KEY=staging_vars["AZURE_OPENAI_API_KEY"] + "-v2")
    again = cli("--debug", "secrets", "sync", "staging", "--json", env=rotated)
    assert again.code == 0, again
    results = {r["name"]: r["result"] for r in json.loads(again.out)["secrets"]}
    assert results["azure-openai-api-key"] == "updated" and results["aws-region"] == "unchanged"
    assert_no_secrets(cli.all_output(), sentinels)


# -- keys in Secret qlens-api-keys ------------------------------------------------------------------


def test_keys_in_the_secret_hold_only_hashes(ops: Target, cli: Cli) -> None:
    from kubernetes import client

    from services.common.apikeys import hash_key, parse_keys

    made = cli("keys", "create", "staging", "--tenant", "acme", "--user", "alice", "--json")
    assert made.code == 0, made
    key = json.loads(made.out)["key"]
    secret = client.CoreV1Api(ops.api).read_namespaced_secret("qlens-api-keys", ops.namespaces["staging"])
    text = base64.b64decode(secret.data["keys.json"]).decode()
    assert key not in text
    assert list(parse_keys(text)) == [hash_key(key)]

    prod = cli("keys", "create", "production", "--tenant", "acme", "--user", "bob")
    assert prod.code == 2 and "--yes" in prod.err, prod  # production asks first

    listed = cli("keys", "list", "staging")
    assert listed.code == 0 and "alice" in listed.out and hash_key(key)[:12] in listed.out, listed
    assert key not in listed.out
    revoked = cli("keys", "revoke", "staging", "--tenant", "acme", "--user", "alice", "--json")
    assert revoked.code == 0, revoked
    secret = client.CoreV1Api(ops.api).read_namespaced_secret("qlens-api-keys", ops.namespaces["staging"])
    assert parse_keys(base64.b64decode(secret.data["keys.json"]).decode()) == {}


def _mount(ops: Target, namespace: str, path: Path) -> None:
    """What the kubelet does for the gateway's volume: copy keys.json of Secret qlens-api-keys to the
    mounted file, replacing it atomically."""
    from kubernetes import client

    secret = client.CoreV1Api(ops.api).read_namespaced_secret("qlens-api-keys", namespace)
    tmp = path.with_name(".keys.json.tmp")
    tmp.write_bytes(base64.b64decode(secret.data["keys.json"]))
    tmp.replace(path)


def test_a_gateway_reading_the_secret_accepts_then_refuses(ops: Target, cli: Cli, make_stack,
                                                           tmp_path: Path) -> None:
    import httpx

    ns = ops.namespaces["staging"]
    made = cli("keys", "create", "staging", "--tenant", "acme", "--user", "alice", "--json")
    assert made.code == 0, made
    key = json.loads(made.out)["key"]
    mounted = tmp_path / "mount" / "keys.json"
    mounted.parent.mkdir()
    _mount(ops, ns, mounted)
    stack = make_stack({"auth": {"required": True}}, extra_env={"QLENS_API_KEYS_FILE": str(mounted)})

    def status() -> int:
        r = httpx.post(f"{stack.gateway_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
        return r.status_code

    assert status() == 200
    revoked = cli("keys", "revoke", "staging", "--tenant", "acme")
    assert revoked.code == 0, revoked
    _mount(ops, ns, mounted)
    deadline = time.monotonic() + 10  # the gateway re-reads the file at most once a second
    while status() != 401 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status() == 401


def test_scale_and_maintenance_wait_for_the_deploy_lock(deployed: Target, cli: Cli) -> None:
    """A deploy holds the namespace's lock: replica changes are refused (exit 2, nothing changed,
    no backup written) naming it, and go through once it is gone; they leave no lock behind."""
    from kubernetes import client

    ns = deployed.namespaces["staging"]
    plant_lease(deployed, ns, "alice@laptop pid 42", "qlensctl deploy staging v9", renewed_ago=5)
    for args in (["scale", "staging", "gateway", "3"], ["maintenance", "start", "staging"],
                 ["maintenance", "end", "staging", "--url", "http://127.0.0.1:1"]):
        run = cli(*args)
        assert run.code == 2, run
        assert "another command is changing the release" in run.err, run
        assert "`qlensctl deploy staging v9` by alice@laptop pid 42" in run.err and "hint:" in run.err
    assert deployed.replicas("staging") == {"gateway": 1, "router": 1, "cache": 1}
    assert not (cli.cwd / "backup").exists()

    client.CoordinationV1Api(deployed.api).delete_namespaced_lease(LOCK, ns)
    run = cli("scale", "staging", "gateway", "3")
    assert run.code == 0, run
    assert deployed.replicas("staging")["gateway"] == 3
    assert lease(deployed, ns) is None

    # a lock whose holder died is taken over, and said so
    plant_lease(deployed, ns, "ghost@gone pid 1", "qlensctl deploy staging v0", renewed_ago=600)
    run = cli("scale", "staging", "gateway", "2")
    assert run.code == 0, run
    assert "took over a stale deploy lock: `qlensctl deploy staging v0` by ghost@gone pid 1" in run.err
    assert lease(deployed, ns) is None
