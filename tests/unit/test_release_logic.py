"""The decisions behind deploy and rollback that need no cluster: manifest diffs, which revision a
rollback returns to, how a rollout is judged, versions, and the context guard on a kubeconfig file;
and what `qlensctl` says, in-process, before or instead of reaching one (a kubeconfig whose server
nothing listens on: a command that asked the cluster would say "cannot reach")."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace as NS

import pytest

from qlensctl.environments import load_environment
from qlensctl.errors import ClusterError, ConfigError, OperationError, RefusedError
from qlensctl.helm import Release
from qlensctl.kube import check_context, judge_rollout
from qlensctl.local import free_port
from qlensctl.release import check_not_pending, check_version, diff_manifests, rollback_target
from tests.k8s.harness import SECRET_VARS, Cli, assert_one_clear_error
from tests.support.cli import ROOT


def _rev(n: int, status: str) -> Release:
    return Release("qlens", "ns", n, status, "qlens-0.1.0", "0.1.0", "0.1.0", "2026-01-01T00:00:00Z")


@pytest.fixture
def staging():
    return load_environment(str(ROOT / "environments" / "staging.yaml"))


@pytest.fixture
def production():
    return load_environment(str(ROOT / "environments" / "production.yaml"))


def test_diff_names_changed_added_removed_and_hides_secret_data() -> None:
    deployed = """
apiVersion: v1
kind: Secret
metadata: {name: s}
data: {token: b2xkLXNlY3JldA==}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec: {replicas: 1, template: {spec: {containers: [{name: web, image: "web:v1"}]}}}
---
kind: ConfigMap
apiVersion: v1
metadata: {name: gone}
"""
    proposed = """
apiVersion: v1
kind: Secret
metadata: {name: s}
data: {token: bmV3LXNlY3JldA==}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec: {replicas: 1, template: {spec: {containers: [{name: web, image: "web:v2"}]}}}
---
kind: Service
apiVersion: v1
metadata: {name: new}
"""
    diff = diff_manifests(deployed, proposed)
    assert diff.changed == ["Deployment/web"]
    assert diff.added == ["Service/new"] and diff.removed == ["ConfigMap/gone"]
    assert diff.unchanged == ["Secret/s"], "secret values are not compared, so not shown either"
    lines = diff.text.splitlines()
    assert any(x.startswith("-") and x.endswith("image: web:v1") for x in lines)
    assert any(x.startswith("+") and x.endswith("image: web:v2") for x in lines)
    assert "b2xk" not in diff.text and "bmV3" not in diff.text
    assert diff_manifests(proposed, proposed).empty


def test_rollback_target_skips_failed_revisions_and_checks_the_one_asked_for(staging) -> None:
    history = [_rev(1, "superseded"), _rev(2, "superseded"), _rev(3, "failed"), _rev(4, "deployed")]
    assert rollback_target(history, None, staging).revision == 2
    assert rollback_target(history, 1, staging).revision == 1
    with pytest.raises(ConfigError, match="no revision 9"):
        rollback_target(history, 9, staging)
    with pytest.raises(ConfigError, match="is the current one"):
        rollback_target(history, 4, staging)
    with pytest.raises(OperationError, match="no earlier successful revision"):
        rollback_target([_rev(1, "failed"), _rev(2, "deployed")], None, staging)
    with pytest.raises(ClusterError, match="no release qlens"):
        rollback_target([], None, staging)


def test_a_pending_release_is_refused_with_the_way_out(staging) -> None:
    check_not_pending([], staging)
    check_not_pending([_rev(1, "superseded"), _rev(2, "failed"), _rev(3, "deployed")], staging)
    with pytest.raises(RefusedError) as err:
        check_not_pending([_rev(1, "superseded"), _rev(2, "deployed"), _rev(3, "pending-upgrade")], staging)
    assert "is pending-upgrade (revision 3" in err.value.message
    assert "nothing was changed" in err.value.message
    assert "`qlensctl rollback staging` (back to revision 2" in err.value.hint
    with pytest.raises(RefusedError) as err:  # a first install that never finished: nothing to go back to
        check_not_pending([_rev(1, "pending-install")], staging)
    assert "helm uninstall qlens -n qlens-staging" in err.value.hint


def _deployment(generation=2, observed=2, replicas=3, updated=3, total=3, available=3, conditions=()):
    return NS(metadata=NS(name="web", generation=generation),
              spec=NS(replicas=replicas, template=NS(spec=NS(containers=[NS(image="web:v2")]))),
              status=NS(observed_generation=observed, updated_replicas=updated, ready_replicas=available,
                        available_replicas=available, replicas=total, conditions=list(conditions)))


@pytest.mark.parametrize(("kwargs", "done", "failed", "words"), [
    ({}, True, False, "rolled out"),
    ({"observed": 1}, False, False, "new spec"),
    ({"updated": 1}, False, False, "1 of 3 replicas updated"),
    ({"total": 4}, False, False, "1 old replicas still running"),
    ({"available": 2}, False, False, "2 of 3 updated replicas available"),
    ({"conditions": [NS(type="Progressing", reason="ProgressDeadlineExceeded")]}, False, True, "deadline"),
])
def test_rollout_is_judged_like_kubectl_rollout_status(kwargs, done, failed, words) -> None:
    state = judge_rollout(_deployment(**kwargs))
    assert (state.done, state.failed) == (done, failed) and words in state.message


def test_production_needs_a_release_version(staging, production) -> None:
    assert check_version(production, "v1.0.0") == "v1.0.0"
    for bad in (None, "1.0.0", "v1.0", "latest"):
        with pytest.raises(ConfigError, match="vX.Y.Z|explicit version"):
            check_version(production, bad)
    assert check_version(staging, None) == "latest"  # staging's image.tag
    assert check_version(staging, "rc-7") == "rc-7"
    with pytest.raises(ConfigError):
        check_version(staging, "bad tag!")


def _kubeconfig(path: Path, current: str, server: str = "https://127.0.0.1:1") -> str:
    contexts = "".join(f"- name: {n}\n  context: {{cluster: c, user: u}}\n"
                       for n in ("local", "qlens-production"))
    path.write_text("apiVersion: v1\nkind: Config\n"
                    f"clusters:\n- name: c\n  cluster: {{server: '{server}'}}\n"
                    "users:\n- name: u\n  user: {token: t}\n"
                    f"contexts:\n{contexts}current-context: {current}\n")
    return str(path)


def test_context_guard(tmp_path: Path, staging, production) -> None:
    on_local = _kubeconfig(tmp_path / "a", "local")
    on_prod = _kubeconfig(tmp_path / "b", "qlens-production")
    assert check_context(staging, None, on_local) == "local"  # staging pins nothing
    assert check_context(production, None, on_prod) == "qlens-production"
    assert check_context(production, "qlens-production", on_local) == "qlens-production"
    with pytest.raises(RefusedError, match="deploys only to 'qlens-production'"):
        check_context(production, None, on_local)
    with pytest.raises(RefusedError, match="pinned to kube context"):
        check_context(production, "local", on_prod)
    with pytest.raises(ConfigError, match="'nope' is not in"):
        check_context(staging, "nope", on_local)
    with pytest.raises(ConfigError, match="no kubeconfig"):
        check_context(staging, None, str(tmp_path / "missing"))


# -- the CLI, before any cluster is reached ----------------------------------------------------------


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """`qlensctl` in-process with the checkout's environments, the fake provider credentials and a
    kubeconfig (contexts `local`, current, and `qlens-production`) whose server nothing listens on."""
    cli = Cli("in-process", tmp_path / "work", monkeypatch)
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", "local", f"https://127.0.0.1:{free_port()}")
    cli.setenv({"KUBECONFIG": kubeconfig, **SECRET_VARS})
    return cli


def test_smoke_test_production_needs_a_key_and_its_context_before_the_cluster_is_asked(offline: Cli) -> None:
    no_key = offline("smoke-test", "production", "--port-forward")
    lines = assert_one_clear_error(no_key, code=2)
    assert lines[0] == "error: production requires an API key (auth.required is on), and none was given"
    # with a key, the context guard still stands: the current context is `local`, not the pinned one
    guarded = offline("smoke-test", "production", "--port-forward", "--api-key", "qlk-guard-test")
    lines = assert_one_clear_error(guarded, code=2)
    assert "qlens-production" in lines[0] and "nothing was changed" in lines[0]
    assert "qlk-guard-test" not in guarded.text


def test_unreachable_cluster_missing_kubeconfig_and_unknown_context(offline: Cli, tmp_path: Path) -> None:
    unknown = offline("status", "staging", "--kube-context", "nope")
    assert unknown.code == 2 and "'nope' is not in" in unknown.err and "local" in unknown.err

    missing = offline("deploy", "staging", "--version", "v1", env={"KUBECONFIG": str(tmp_path / "missing")})
    assert missing.code == 2 and "no kubeconfig" in missing.err and "KUBECONFIG" in missing.err

    for args in (["status", "staging"], ["deploy", "staging", "--version", "v1"], ["history", "staging"]):
        result = offline(*args)
        assert result.code == 1, result.text
        assert "cannot reach" in result.err and "connection refused" in result.err
        assert len(result.err.strip().splitlines()) == 2  # what failed, what to do
        assert "Traceback" not in result.text
