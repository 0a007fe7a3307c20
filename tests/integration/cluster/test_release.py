"""deploy / rollback / status / history against the real control plane (`target`: tests/k8s/harness.py).

Pods are played by the fake kubelet: they become Ready, except for image tag `:unready`, which
makes a rollout fail for real. Refusals are checked by snapshotting the namespace's objects
(with resourceVersions) before and after.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.k8s.harness import (
    LOCK,
    SECRET_VARS,
    SERVICES,
    Target,
    assert_no_secrets,
    assert_ok,
    assert_refused,
    deploy_staging,
    plant_lease,
    revisions,
)
from tests.support.cli import ROOT

pytestmark = pytest.mark.cluster


# -- deploy, status, history -----------------------------------------------------------------------


def test_deploy_staging_then_status_and_history_match_the_cluster(target: Target) -> None:
    ns = target.staging_ns
    result = deploy_staging(target, "v1")
    assert f"namespace {ns}: created" in result.out
    assert "release qlens revision 1 (deployed)" in result.out
    assert_no_secrets(result.text)

    # the Secret holds the five provider keys (names from docs/internals.md) with the shell's values
    secret = target.core.read_namespaced_secret("qlens-secrets", ns)
    assert sorted(secret.data) == ["aws-access-key-id", "aws-region", "aws-secret-access-key",
                                   "azure-openai-api-key", "azure-openai-endpoint"]
    import base64

    stored_key = base64.b64decode(secret.data["azure-openai-api-key"]).decode()
    assert stored_key == SECRET_VARS["AZURE_OPENAI_API_KEY"]

    # --wait means rolled out: every deployment's pods are Ready on the fake node
    for name in SERVICES:
        d = target.apps.read_namespaced_deployment(name, ns)
        assert d.status.ready_replicas == d.spec.replicas == 1
    assert target.tags(ns) == {"v1"}

    status = target.qlensctl("status", "staging", "--json")
    assert_ok(status, "status")
    data = json.loads(status.out)
    assert data["namespace"] == ns and data["context"] == "local"
    assert data["release"]["revision"] == 1 and data["release"]["status"] == "deployed"
    assert data["release"]["chart"].startswith("qlens-")
    live = {d.metadata.name: d for d in target.apps.list_namespaced_deployment(ns).items}
    assert {d["name"] for d in data["deployments"]} == set(live)
    for d in data["deployments"]:
        assert d["ready"] == live[d["name"]].status.ready_replicas
        assert d["images"] == [live[d["name"]].spec.template.spec.containers[0].image]
        assert d["done"]
    pods = {p.metadata.name for p in target.core.list_namespaced_pod(ns).items}
    assert {p["name"] for p in data["pods"]} == pods and all(p["phase"] == "Running" for p in data["pods"])
    assert any(e["reason"] == "ScalingReplicaSet" for e in data["events"])
    assert data["autoscalers"] == []  # staging has no HPA

    # history is what Helm stored: one release Secret per revision
    history = revisions(target)
    stored = target.core.list_namespaced_secret(ns, label_selector="owner=helm,name=qlens").items
    assert [r["revision"] for r in history] == [1] and len(stored) == 1

    human = target.qlensctl("status", "staging")
    assert_ok(human, "status")
    for word in ("revision 1", "deployed", *SERVICES, "Pods", "Running"):
        assert word in human.out


def test_upgrade_backs_up_values_and_a_rollout_that_never_gets_ready_is_rolled_back(target: Target) -> None:
    ns = target.staging_ns
    chart_kinds = ("Deployment", "Service", "ConfigMap", "ServiceAccount", "NetworkPolicy", "Ingress",
                   "Role", "RoleBinding")
    deploy_staging(target, "v1")
    at_v1 = target.contents(ns, chart_kinds)
    upgraded = deploy_staging(target, "v2")
    assert "release qlens revision 2 (deployed)" in upgraded.out
    assert target.tags(ns) == {"v2"}
    backups = sorted(target.backups.glob("values-*.yaml"))
    assert len(backups) == 1, "the upgrade backs up the values it replaces"
    saved = backups[0].read_text()
    assert "# revision: 1" in saved and "v1" in saved
    assert_no_secrets(saved)

    before = target.settled_snapshot(ns)
    contents = target.contents(ns, chart_kinds)
    assert contents != at_v1, "contents() sees a version change"
    images = target.images(ns)
    records = target.release_secrets(ns)
    failed = target.qlensctl("deploy", "staging", "--version", "unready", "--timeout", "8")
    assert failed.code == 1, failed.text
    assert "Traceback" not in failed.text
    assert "failed" in failed.err and "rolled back to revision 2" in failed.err
    # the cluster runs v2 again, every pod Ready; Helm's history says what happened
    assert target.tags(ns) == {"v2"}
    for name in SERVICES:
        d = target.apps.read_namespaced_deployment(name, ns)
        assert d.status.ready_replicas == 1 and d.status.updated_replicas == 1
    history = revisions(target)
    assert [r["status"] for r in history] == ["superseded", "superseded", "failed", "deployed"]
    assert [r["app_version"] for r in history] == ["v1", "v2", "unready", "v2"]
    assert history[-1]["description"] == "Rollback to 2"
    # the atomic rollback restored what served before: the same deployments with the same
    # images, and every object the chart owns says again what it said (the upgrade relabelled
    # them all with the new version, so they were written twice); Helm kept the two records it
    # had and added the failed revision and the rollback; qlens-secrets was not rewritten; no
    # deploy lock is left behind
    after = target.settled_snapshot(ns)
    assert target.images(ns) == images
    assert target.contents(ns, chart_kinds) == contents
    for kind in chart_kinds:
        assert [n for n, _ in after[kind]] == [n for n, _ in before[kind]], kind
    now = target.release_secrets(ns)
    assert set(records) < set(now) and len(now) == len(records) + 2
    other = {s for s in before["Secret"] if s[0] not in records}
    assert other <= set(after["Secret"]), "qlens-secrets and the token secrets are untouched"
    assert after["Lease"] == before["Lease"] == []


def test_rollback_to_previous_and_to_a_given_revision(target: Target) -> None:
    ns = target.staging_ns
    for version in ("v1", "v2", "v3"):
        deploy_staging(target, version)

    back = target.qlensctl("rollback", "staging", "--timeout", "60")
    assert_ok(back, "rollback")
    assert "(before)" in back.out and "(after)" in back.out, "history tables before and after"
    assert "rolled back to revision 2" in back.out
    assert target.tags(ns) == {"v2"}
    assert [r["revision"] for r in revisions(target)] == [1, 2, 3, 4]

    to_one = target.qlensctl("rollback", "staging", "--revision", "1", "--timeout", "60", "--json")
    assert_ok(to_one, "rollback --revision 1")
    report = json.loads(to_one.out)  # --json: only the document on stdout, progress on stderr
    assert (report["ok"], report["from"], report["to"], report["revision"]) == (True, 4, 1, 5)
    assert [r["revision"] for r in report["after"]] == [1, 2, 3, 4, 5]
    assert target.tags(ns) == {"v1"}
    history = revisions(target)
    assert history[-1]["revision"] == 5 and history[-1]["status"] == "deployed"

    before = target.settled_snapshot(ns)
    for bad, words in ((["--revision", "99"], "no revision 99"), (["--revision", "5"], "is the current one")):
        result = target.qlensctl("rollback", "staging", *bad)
        assert result.code == 2 and words in result.err, result.text
    assert target.snapshot(ns) == before


def test_emergency_rollback_scales_current_down_and_previous_up(target: Target) -> None:
    ns = target.staging_ns
    deploy_staging(target, "v2")
    for service in ("gateway", "router"):  # the guide's qlens-<service>-previous, kept at 0
        labels = {"app": f"qlens-{service}-previous"}
        container = {"name": service, "image": f"ghcr.io/quantumlayer/qlens-{service}:v1"}
        target.apps.create_namespaced_deployment(ns, {
            "metadata": {"name": f"qlens-{service}-previous"},
            "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}}}})
    before = target.settled_snapshot(ns)
    unconfirmed = target.qlensctl("rollback", "staging", "--emergency")
    assert unconfirmed.code == 2 and "--yes" in unconfirmed.err, unconfirmed.text
    assert target.snapshot(ns) == before
    # a deploy running: the emergency rollback takes the deploy lock too, never scales unlocked
    from kubernetes import client

    plant_lease(target, ns, "alice@laptop pid 42", "qlensctl deploy staging v3", renewed_ago=5)
    before = target.settled_snapshot(ns)
    held = target.qlensctl("rollback", "staging", "--emergency", "--yes", "--timeout", "60")
    assert_refused(held, 2, "`qlensctl deploy staging v3` by alice@laptop pid 42", "nothing was changed")
    assert target.snapshot(ns) == before
    client.CoordinationV1Api(target.cluster.api).delete_namespaced_lease(LOCK, ns)

    result = target.qlensctl("rollback", "staging", "--emergency", "--yes", "--timeout", "60", "--json")
    assert_ok(result, "emergency rollback")
    report = json.loads(result.out)
    assert report["ok"] is True and report["emergency"] is True
    assert {s["service"]: (s["current_replicas"], s["target_replicas"]) for s in report["steps"]
            if s["previous"]} == {"gateway": (1, 1), "router": (1, 1)}
    replicas = {d.metadata.name: (d.spec.replicas, d.status.ready_replicas or 0)
                for d in target.apps.list_namespaced_deployment(ns).items}
    assert replicas["qlens-gateway"][0] == 0 and replicas["qlens-router"][0] == 0
    assert replicas["qlens-gateway-previous"] == (1, 1) and replicas["qlens-router-previous"] == (1, 1)
    assert replicas["qlens-cache"] == (1, 1), "no qlens-cache-previous: the cache is left running"


def test_previous_version_keeps_the_replaced_version_for_an_emergency_rollback(target: Target) -> None:
    ns = target.staging_ns
    target.environment_file("staging", previousVersion={"enabled": True})

    deploy_staging(target, "v1")  # a first install replaces nothing: no -previous yet
    assert set(target.images(ns)) == set(SERVICES)
    deploy_staging(target, "v2")
    previous = {f"{name}-previous" for name in SERVICES}
    images = target.images(ns)
    assert set(images) == set(SERVICES) | previous
    for name in SERVICES:
        assert images[name].endswith(f"{name}:v2") and images[f"{name}-previous"].endswith(f"{name}:v1")
        prev = target.apps.read_namespaced_deployment(f"{name}-previous", ns)
        assert prev.spec.replicas == 0
        assert prev.spec.selector.match_labels["qlens.quantumlayer.ai/track"] == "previous"
        env = {e.name: e.value for e in prev.spec.template.spec.containers[0].env}
        assert env["QLENS_VERSION"] == "v1"
    # the same version again replaces nothing: the kept version stays v1; a failed rollout,
    # rolled back atomically, leaves it as it was too
    deploy_staging(target, "v2")
    failed = target.qlensctl("deploy", "staging", "--version", "unready", "--timeout", "8")
    assert failed.code == 1, failed.text
    assert target.images(ns) == images

    result = target.qlensctl("rollback", "staging", "--emergency", "--yes", "--timeout", "60", "--json")
    assert_ok(result, "emergency rollback")
    report = json.loads(result.out)
    assert report["ok"] is True and report["emergency"] is True
    assert {s["service"]: (s["current_replicas"], s["target_replicas"]) for s in report["steps"]
            if s["previous"]} == {"gateway": (1, 1), "router": (1, 1), "cache": (1, 1)}
    for name in SERVICES:
        current = target.apps.read_namespaced_deployment(name, ns)
        prev = target.apps.read_namespaced_deployment(f"{name}-previous", ns)
        assert current.spec.replicas == 0
        assert (prev.spec.replicas, prev.status.ready_replicas) == (1, 1)


def test_emergency_rollback_without_previous_deployments_changes_nothing(target: Target) -> None:
    deploy_staging(target, "v1")
    before = target.settled_snapshot(target.staging_ns)
    result = target.qlensctl("rollback", "staging", "--emergency", "--yes")
    assert result.code == 1 and "nothing to fall back to" in result.err, result.text
    assert "qlensctl rollback staging" in result.err  # the hint names the Helm rollback
    assert target.snapshot(target.staging_ns) == before


# -- refusals change nothing -----------------------------------------------------------------------


def test_missing_secrets_are_all_named_and_nothing_changes(target: Target,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ns = target.staging_ns
    missing = ["AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    for name in missing:
        monkeypatch.delenv(name)
    first = target.qlensctl("deploy", "staging", "--version", "v1")
    assert first.code == 2, first.text
    assert all(name in first.err for name in missing) and "nothing was changed" in first.err
    assert target.snapshot(ns) == {"namespace": False}, "not even the namespace is created"

    for name in missing:
        monkeypatch.setenv(name, SECRET_VARS[name])
    deploy_staging(target, "v1")
    before = target.settled_snapshot(ns)
    monkeypatch.delenv("AZURE_OPENAI_API_KEY")
    again = target.qlensctl("deploy", "staging", "--version", "v2")
    assert again.code == 2 and "AZURE_OPENAI_API_KEY" in again.err, again.text
    assert target.snapshot(ns) == before
    assert len(revisions(target)) == 1
    assert not target.backups.exists(), "a refused deploy takes no backup"


def test_dry_run_shows_the_diff_and_changes_nothing(target: Target) -> None:
    ns = target.staging_ns
    fresh = target.qlensctl("deploy", "staging", "--dry-run", "--version", "v1")
    assert_ok(fresh, "dry run (no release)")
    assert "does not exist" in fresh.out and "Deployment/qlens-gateway (added)" in fresh.out
    assert target.snapshot(ns) == {"namespace": False}

    deploy_staging(target, "v1")
    before = target.settled_snapshot(ns)
    diff = target.qlensctl("deploy", "staging", "--dry-run", "--version", "v2")
    assert_ok(diff, "dry run")
    assert "Deployment/qlens-gateway (changed)" in diff.out
    assert "-        image: ghcr.io/quantumlayer/qlens-gateway:v1" in diff.out
    assert "+        image: ghcr.io/quantumlayer/qlens-gateway:v2" in diff.out
    assert "Nothing was changed." in diff.out
    assert_no_secrets(diff.text)
    same = target.qlensctl("deploy", "staging", "--dry-run", "--version", "v1")
    assert_ok(same, "dry run (same version)")
    assert "no changes" in same.out
    assert target.snapshot(ns) == before
    assert len(revisions(target)) == 1
    assert not target.backups.exists()


# -- production ------------------------------------------------------------------------------------


def _script(target: Target, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}
    return subprocess.run([str(ROOT / "scripts" / name), *args], cwd=target.cwd, env=env,
                          capture_output=True, text=True, timeout=240)


def test_production_needs_its_context_a_version_and_confirmation(target: Target) -> None:
    target.cluster.install_crds()  # ExternalSecret, ServiceMonitor, PrometheusRule
    ns = target.production_ns
    # the current context is `local`: refused before anything is read or written
    wrong = target.qlensctl("deploy", "production", "--version", "v1.0.0", "--yes")
    assert wrong.code == 2 and "deploys only to 'qlens-production'" in wrong.err, wrong.text
    other = target.qlensctl("deploy", "production", "--version", "v1.0.0", "--yes", "--kube-context", "local")
    assert other.code == 2 and "pinned to kube context 'qlens-production'" in other.err, other.text
    for bad in ([], ["--version", "1.0.0"], ["--version", "latest"]):
        result = target.qlensctl("deploy", "production", "--kube-context", "qlens-production", "--yes", *bad)
        assert result.code == 2 and "vX.Y.Z" in result.text, result.text
    unconfirmed = target.qlensctl("deploy", "production", "--version", "v1.0.0", "--kube-context",
                                  "qlens-production")
    assert unconfirmed.code == 2 and "needs confirmation" in unconfirmed.err, unconfirmed.text
    assert target.snapshot(ns) == {"namespace": False}

    # the guide's script, with the production context current
    target.use_context("qlens-production")
    usage = _script(target, "deploy-production.sh")
    assert usage.returncode == 2 and "usage" in usage.stderr
    done = _script(target, "deploy-production.sh", "v1.0.0", "--yes", "--timeout", "120")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "revision 1" in done.stdout
    replicas = {d.metadata.name: (d.spec.replicas, d.status.ready_replicas)
                for d in target.apps.list_namespaced_deployment(ns).items}
    assert replicas == {"qlens-gateway": (3, 3), "qlens-router": (3, 3), "qlens-cache": (2, 2)}
    assert target.tags(ns) == {"v1.0.0"}
    # secrets come from Key Vault through an ExternalSecret; deploy created no Secret itself
    from kubernetes import client

    custom = client.CustomObjectsApi(target.cluster.api)
    assert custom.list_namespaced_custom_object("external-secrets.io", "v1", ns, "externalsecrets")["items"]
    assert "qlens-secrets" not in {s.metadata.name for s in target.core.list_namespaced_secret(ns).items}

    status = target.qlensctl("status", "production", "--json")
    assert_ok(status, "status production")
    data = json.loads(status.out)
    assert {h["target"] for h in data["autoscalers"]} == {f"Deployment/{s}" for s in SERVICES}

    # back on `local`, an upgrade is refused and nothing changes
    target.use_context("local")
    before = target.settled_snapshot(ns)
    refused = target.qlensctl("deploy", "production", "--version", "v1.0.1", "--yes")
    assert refused.code == 2, refused.text
    rollback = target.qlensctl("rollback", "production", "--yes")
    assert rollback.code == 2, rollback.text
    assert target.snapshot(ns) == before


def test_staging_script_deploys(target: Target) -> None:
    done = _script(target, "deploy-staging.sh", "--version", "v7", "--timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    assert target.tags(target.staging_ns) == {"v7"}
    assert_no_secrets(done.stdout + done.stderr)


# -- clear errors, bounded time --------------------------------------------------------------------
# (an unreachable cluster, a missing kubeconfig, an unknown context: tests/unit/test_release_logic.py)


def test_no_release_is_a_one_line_error(target: Target) -> None:
    for args in (["status", "staging"], ["history", "staging"], ["rollback", "staging", "--yes"]):
        result = target.qlensctl(*args)
        assert result.code == 1, result.text
        assert "no release qlens" in result.err and "qlensctl deploy staging" in result.err
        assert "Traceback" not in result.text
