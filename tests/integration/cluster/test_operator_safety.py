"""Operator safety against the real control plane: every way qlensctl refuses leaves the cluster
as it was, and two commands never change one release at once.

"As it was" is `Target.snapshot` (tests/k8s/harness.py): every object deploy could touch in the
namespace with its resourceVersion (which changes on any write), Helm's release records (Secrets)
and the deploy lock (Lease) included. Refusals covered here: an invalid environment file, corrupt
backups given to `restore`, a deploy while another runs (the deploy lock), a release left
pending-upgrade by an interrupted deploy, a live and a stale lock. Also refused without a change,
in test_release.py: the wrong kube context, missing secrets, bad rollback revisions; and there a
failed upgrade is rolled back to the same deployments and images.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest
import yaml

from tests.k8s.harness import (
    LOCK,
    Target,
    assert_no_secrets,
    assert_ok,
    assert_refused,
    deploy_staging,
    lease,
    plant_lease,
    revisions,
)

pytestmark = pytest.mark.cluster


# -- bad input -------------------------------------------------------------------------------------


def test_an_invalid_environment_file_changes_nothing(target: Target, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ns = target.staging_ns
    deploy_staging(target, "v1")
    before = target.settled_snapshot(ns)
    broken = tmp_path / "broken-environments"
    shutil.copytree(target.envdir, broken)
    monkeypatch.setenv("QLENS_ENVIRONMENTS", str(broken))
    good = (target.envdir / "staging.yaml").read_text()
    doc = yaml.safe_load(good)
    doc["replicas"]["gateway"] = "three"
    for text, words in ((good.replace("replicas:", "replicas: [", 1), "YAML"),  # a syntax error
                        (yaml.safe_dump(doc, sort_keys=False), "replicas")):  # a wrong type
        (broken / "staging.yaml").write_text(text)
        for args in (["deploy", "staging", "--version", "v2"], ["rollback", "staging", "--yes"]):
            result = target.qlensctl(*args)
            assert_refused(result, 2, "staging.yaml", words)
    assert target.snapshot(ns) == before
    assert not target.backups.exists()


def test_corrupt_backups_given_to_restore_change_nothing(target: Target, tmp_path: Path) -> None:
    ns = target.staging_ns
    from qlensctl.backup import backup_values, body_checksum
    from qlensctl.environments import load_environment

    deploy_staging(target, "v1")
    good = backup_values(target.helm(), load_environment("staging"), tmp_path / "saved").read_text()
    header = "".join(line + "\n" for line in good.splitlines() if line.startswith("#"))
    values = yaml.safe_load(good)

    def sealed(body_values: dict) -> str:
        """Other values under the good header with a checksum that matches them: well-formed backups."""
        body = yaml.safe_dump(body_values)
        head = "".join(line + "\n" for line in good.splitlines()
                       if line.startswith("#") and not line.startswith("# sha256:"))
        return head + f"# sha256: {body_checksum(body)}\n" + body

    bad_type = dict(values, replicas={**values["replicas"], "gateway": "three"})
    cases = {
        "garbage": (b"\x00\x9f\xff" * 100, "cannot read"),
        "broken-yaml": (header + "image: {tag: [v1\n", "not valid YAML"),
        "no-header": (good.split("\n", 1)[0] + "\n" + yaml.safe_dump(values), "not a QLens values backup"),
        "other-environment": (good.replace("# environment: staging", "# environment: production"),
                              "backup of environment 'production'"),
        "other-namespace": (sealed(dict(values, namespace="qlens-elsewhere")),
                            "values for namespace 'qlens-elsewhere'"),
        # well-formed, for this environment, and refused by the chart's schema: the last line of
        # defence, after the lock was taken and the current values were backed up
        "values-the-chart-refuses": (sealed(bad_type), "values.schema.json"),
    }
    before = target.settled_snapshot(ns)
    for name, (content, words) in cases.items():
        path = tmp_path / f"values-{name}.yaml"
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        args = ("restore", "staging", str(path), "--timeout", "30")
        result = target.qlensctl(*args)
        assert_refused(result, 2, words)
        assert target.snapshot(ns) == before, f"restore of {name} changed the cluster"
    assert [r["revision"] for r in revisions(target)] == [1]


def test_a_restore_leaves_the_staging_secret_alone_and_says_so(target: Target, tmp_path: Path) -> None:
    """What `restore` runs: release.deploy with the backup's values and no secrets to sync."""
    from qlensctl import release
    from qlensctl.backup import backup_values, read_backup
    from qlensctl.cluster import connect
    from qlensctl.environments import load_environment

    ns = target.staging_ns
    deploy_staging(target, "v1")
    environment = load_environment("staging")
    cluster = connect(environment)
    kube, helm = cluster.kube, cluster.helm
    saved = read_backup(backup_values(helm, environment, tmp_path / "saved"))
    secret = target.core.read_namespaced_secret("qlens-secrets", ns).metadata.resource_version
    steps: list[str] = []
    plan = release.DeployPlan(environment, ns, "v1", saved.values, None, release.history(helm, ns))
    result = release.deploy(plan, kube, helm, timeout=60, backup_dir=tmp_path / "before-restore",
                            on_step=steps.append, operation=f"qlensctl restore staging {saved.path.name}")
    cluster.close()
    assert result.ok and result.revision == 2, result.message
    assert "Secret qlens-secrets: unchanged (not synced by this command)" in steps
    assert not any("Key Vault" in step for step in steps), steps
    assert target.core.read_namespaced_secret("qlens-secrets", ns).metadata.resource_version == secret
    assert revisions(target)[-1]["description"] == f"qlensctl restore staging {saved.path.name}"


def test_a_truncated_backup_is_refused(target: Target, tmp_path: Path) -> None:
    from qlensctl.backup import backup_values
    from qlensctl.environments import load_environment

    ns = target.staging_ns
    deploy_staging(target, "v1")
    saved = backup_values(target.helm(), load_environment("staging"), tmp_path / "saved")
    lines = saved.read_text().splitlines(True)
    last_key = max(i for i, line in enumerate(lines) if line[:1].isalpha())  # e.g. `tls:`
    cut = tmp_path / "values-cut.yaml"
    cut.write_text("".join(lines[:last_key]))  # a disk that filled up, a copy that stopped
    before = target.settled_snapshot(ns)
    result = target.qlensctl("restore", "staging", str(cut), "--timeout", "30")
    assert_refused(result, 2, "values-cut.yaml")
    assert target.snapshot(ns) == before


# -- one command at a time -------------------------------------------------------------------------


def test_a_second_deploy_is_refused_while_the_first_runs(target: Target) -> None:
    ns = target.staging_ns
    deploy_staging(target, "v1")
    # the first deploy's pods never get Ready: it holds the lock for its whole --timeout
    first = target.spawn("deploy", "staging", "--version", "unready", "--timeout", "10", name="first")
    try:
        target.wait_for("the first deploy's lock", lambda: lease(target, ns) is not None)
        second = target.qlensctl("deploy", "staging", "--version", "v2", "--backup-dir", "second-backup")
        assert first.poll() is None, "the first deploy was still running when the second was refused"
        assert_refused(second, 2, "another command is changing the release",
                       "`qlensctl deploy staging unready`", f"pid {first.pid}", "nothing was changed",
                       "wait for it to finish")
        assert not (target.cwd / "second-backup").exists(), "the refused deploy backed nothing up"
        assert first.wait(timeout=120) == 1, target.spawned_output("first")
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert "rolled back to revision 1" in target.spawned_output("first")
    # Helm's history holds the first deploy only; the lock went with it
    assert [(r["app_version"], r["status"]) for r in revisions(target)] == [
        ("v1", "superseded"), ("unready", "failed"), ("v1", "deployed")]
    assert lease(target, ns) is None
    again = deploy_staging(target, "v2")
    assert "release qlens revision 4 (deployed)" in again.out
    assert_no_secrets(target.spawned_output("first") + second.text + again.text)


def test_an_interrupted_deploy_is_refused_with_the_way_out(target: Target) -> None:
    ns = target.staging_ns
    deploy_staging(target, "v1")
    first = target.spawn("deploy", "staging", "--version", "unready", "--timeout", "120", name="interrupted")
    try:
        target.wait_for("the upgrade to be pending",
                        lambda: target.release_secrets(ns, status="pending-upgrade") != [])
        first.send_signal(signal.SIGINT)  # Ctrl-C while Helm waits for the rollout
        assert first.wait(timeout=60) != 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert "Traceback" not in target.spawned_output("interrupted")
    assert lease(target, ns) is None, "Ctrl-C released the deploy lock"
    # Helm never finished: revision 2 stays pending-upgrade, and no later deploy may go on top of it
    before = target.settled_snapshot(ns)
    refused = target.qlensctl("deploy", "staging", "--version", "v2")
    assert_refused(refused, 2, "is pending-upgrade (revision 2, version unready",
                   "`qlensctl rollback staging` (back to revision 1, version v1)")
    assert target.snapshot(ns) == before
    status = target.qlensctl("status", "staging", "--json")
    assert_ok(status, "status")
    assert json.loads(status.out)["release"]["status"] == "pending-upgrade"

    # the way out the message gave
    back = target.qlensctl("rollback", "staging", "--timeout", "60")
    assert_ok(back, "rollback")
    assert target.tags(ns) == {"v1"}
    assert_ok(target.qlensctl("deploy", "staging", "--version", "v2", "--timeout", "60"), "deploy v2")
    assert target.tags(ns) == {"v2"}
    assert revisions(target)[-1]["status"] == "deployed"


def test_a_stale_lock_is_taken_over_and_a_live_one_refuses(target: Target) -> None:
    ns = target.create_namespace("staging")
    # a deploy that died (kill -9, a closed laptop) ten minutes ago: its lock is stale
    plant_lease(target, ns, "ghost@gone pid 1", "qlensctl deploy staging v0", renewed_ago=600)
    first = deploy_staging(target, "v1")
    assert "took over a stale deploy lock: `qlensctl deploy staging v0` by ghost@gone pid 1" in first.out
    assert lease(target, ns) is None
    deploy_staging(target, "v2")  # a revision to roll back to

    # a live lock: refused, and the lock is not stolen
    plant_lease(target, ns, "alice@laptop pid 42", "qlensctl rollback staging to revision 1", renewed_ago=5)
    before = target.settled_snapshot(ns)
    for args in (["deploy", "staging", "--version", "v3"], ["rollback", "staging", "--yes"]):
        assert_refused(target.qlensctl(*args), 2, "`qlensctl rollback staging to revision 1` by alice@laptop",
                       "expires by itself at")
    assert target.snapshot(ns) == before
    status = target.qlensctl("status", "staging")
    assert_ok(status, "status")
    assert "in progress: `qlensctl rollback staging to revision 1` by alice@laptop pid 42" in status.text
    from kubernetes import client

    client.CoordinationV1Api(target.cluster.api).delete_namespaced_lease(LOCK, ns)
    plant_lease(target, ns, "alice@laptop pid 42", "qlensctl deploy staging v3", renewed_ago=120)
    stale = target.qlensctl("status", "staging")
    assert_ok(stale, "status")
    assert "stale deploy lock: `qlensctl deploy staging v3` by alice@laptop pid 42" in stale.text


def test_the_lock_is_renewed_while_held_and_only_its_holder_releases_it(target: Target) -> None:
    """The lock layer itself, with a lock that lasts 3 s without renewals (deploys use 60 s)."""
    from qlensctl.cluster import connect
    from qlensctl.environments import load_environment
    from qlensctl.kube import LockHeldError, NamespaceLock

    ns = target.cluster.new_namespace("lock")
    kube = connect(load_environment("staging")).kube
    with kube.lock(ns, "qlensctl deploy staging v1", seconds=3) as held:
        first = lease(target, ns).spec.renew_time
        target.wait_for("a renewal", lambda: lease(target, ns).spec.renew_time > first, timeout=10)
        time.sleep(3.5)  # longer than the lock lasts unless renewed
        with pytest.raises(LockHeldError) as err:
            kube.lock(ns, "qlensctl deploy staging v2").acquire()
        assert err.value.lock.holder == held.identity
        assert err.value.lock.operation == "qlensctl deploy staging v1"
    assert lease(target, ns) is None, "released on leaving the block"

    # a holder that stalled past its lock's expiry (no renewals here) was taken over: its release
    # must not delete the new holder's lock
    stalled = NamespaceLock(kube, ns, "qlensctl deploy staging v3", seconds=1).acquire()
    time.sleep(1.2)
    new = NamespaceLock(kube, ns, "qlensctl deploy staging v4", identity="bob@elsewhere pid 7").acquire()
    assert new.taken_over is not None and new.taken_over.holder == stalled.identity
    stalled.release()
    assert lease(target, ns).spec.holder_identity == "bob@elsewhere pid 7"
    new.release()
    assert lease(target, ns) is None
    kube.close()
