"""deploy's preflight capacity check and the diagnosis of a failed rollout, on the real control
plane with the fake kubelet's node (64 CPUs, 256Gi allocatable). What the pods really say
(FailedScheduling, CrashLoopBackOff, ...) is checked on the real node (tests/integration/node/)."""

from __future__ import annotations

import json
import re

import pytest

from qlensctl.capacity import DEFAULT_TOLERATIONS
from tests.k8s.fake_kubelet import FAKE_NODE_TAINT
from tests.k8s.harness import Target, assert_ok, assert_refused, deploy_staging

pytestmark = pytest.mark.cluster


def tolerate_the_fake_node(target: Target) -> None:
    """The fake kubelet's node is tainted (a real scheduler must never use it), and preflight counts
    only nodes the release's pods tolerate: give the namespace the fake node's toleration, the way
    a cluster gives a namespace a dedicated pool (PodTolerationRestriction's default tolerations)."""
    # and the node controller's not-ready taint, which nothing clears on a node no kubelet runs
    not_ready = {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"}
    toleration = json.dumps([{**FAKE_NODE_TAINT, "operator": "Equal"}, not_ready])
    target.create_namespace("staging", annotations={DEFAULT_TOLERATIONS: toleration})


def oversize(target: Target, cpu: str) -> None:
    target.environment_file("staging", resources={"requests": {"cpu": cpu, "memory": "256Mi"},
                                                  "limits": {"cpu": cpu, "memory": "512Mi"}})


def test_a_release_larger_than_the_nodes_is_warned_about_or_refused_with_strict(target: Target) -> None:
    ns = target.staging_ns
    tolerate_the_fake_node(target)
    oversize(target, "30")  # 3 pods x 30 CPUs = 90 > 64
    before = target.settled_snapshot(ns)
    refused = target.qlensctl("deploy", "staging", "--version", "v1", "--strict")
    assert_refused(refused, 2, "preflight: staging does not fit on the nodes (3 pods",
                   "nothing was changed", "resources.requests in environments/staging.yaml")
    _assert_short_of_cpu(refused.err, 90000)
    assert "memory" not in refused.err.split("hint:")[0]  # 768Mi fits: only the short resource is named
    assert target.snapshot(ns) == before

    oversize(target, "20")  # 60 fits a first install, but an upgrade's surge pods make it 120
    assert_ok(target.qlensctl("deploy", "staging", "--version", "v1", "--timeout", "60"), "install")
    upgrade = target.qlensctl("deploy", "staging", "--version", "v2", "--timeout", "60", "--json")
    assert upgrade.code == 0, upgrade.text
    preflight = json.loads(upgrade.out)["preflight"]
    assert preflight["fits"] is False and preflight["pods"] == 6
    assert [(x["resource"], x["needed"]) for x in preflight["shortfalls"]] == [("cpu", "120000m CPU")]
    warning = " ".join(upgrade.err.split())  # the console wraps long lines
    assert "warning: preflight: staging does not fit on the nodes (6 pods at the peak" in warning
    _assert_short_of_cpu(warning, 120000)


def _assert_short_of_cpu(text: str, requested: int) -> None:
    """The CPU sentence, with the free CPU the node's 64 CPUs less what other pods request (the
    session's cluster is shared: earlier tests' releases may still hold requests on it)."""
    m = re.search(rf"cpu: the release requests {requested}m CPU but the nodes have (\d+)m CPU free "
                  r"\(64000m CPU allocatable, (\d+)m CPU requested by other pods\)", text)
    assert m, text
    assert int(m.group(1)) == 64000 - int(m.group(2))


def test_a_failed_rollout_names_its_unready_pods_and_what_is_left(target: Target) -> None:
    ns = target.staging_ns
    deploy_staging(target, "v1")
    failed = target.qlensctl("deploy", "staging", "--version", "unready", "--timeout", "8", "--json")
    assert failed.code == 1, failed.text
    report = json.loads(failed.out)  # --json: stdout is the document, also on failure
    assert report["ok"] is False and report["rolledBackTo"] == 1 and report["version"] == "unready"
    assert sorted(p["component"] for p in report["unready"]) == ["cache", "gateway", "router"]
    assert all(p["reason"] == "Pending, not Ready yet" for p in report["unready"]), report["unready"]
    assert report["preflight"]["checked"] is True and report["preflight"]["pods"] == 6
    assert "rolled back to revision 1" in failed.err
    assert "unready pods:" in failed.err
    for service in ("gateway", "router", "cache"):  # the fake kubelet never starts `:unready` pods
        assert f"qlens-{service}-" in failed.err.split("unready pods:")[1]
    assert "Pending, not Ready yet" in failed.err
    hint = failed.err.split("hint:")[1]
    assert "revision 1 serves again (`qlensctl status staging`)" in hint
    assert f"kubectl get events -n {ns}" in hint


def test_a_failed_first_install_says_nothing_is_left(target: Target) -> None:
    failed = target.qlensctl("deploy", "staging", "--version", "unready", "--timeout", "8")
    assert failed.code == 1, failed.text
    assert "the failed install was removed" in failed.err and "unready pods:" in failed.err
    assert "nothing of the release is left" in failed.err.split("hint:")[1]
