"""`backup` and `restore` run in-process (as `qlensctl.main.run`, the way scripts and other tests
call them) reach the cluster of the *current* $KUBECONFIG, with the embedded Helm SDK.

The SDK is a Go library: it copies the process environment once, when it loads, so a Helm that
is not handed the kubeconfig explicitly keeps reading the $KUBECONFIG of that moment. Here the
SDK is loaded while $KUBECONFIG names a cluster that does not exist; the commands must still
work on the real one, because they pass the kubeconfig of their own context guard to Helm.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.k8s.harness import Target, assert_ok, deploy_staging, revisions

pytestmark = pytest.mark.cluster


def _load_helm_sdk_with_a_dead_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Load the embedded SDK (a no-op when an earlier test did: then it holds that test's
    kubeconfig, equally wrong here) while $KUBECONFIG points at nothing."""
    real = os.environ["KUBECONFIG"]
    dead = tmp_path / "dead-kubeconfig"
    dead.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dead",
        "clusters": [{"name": "dead", "cluster": {"server": "https://127.0.0.1:1"}}],
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "dead"}}],
        "users": [{"name": "dead", "user": {"token": "x"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(dead))
    import helm_python  # noqa: F401  (loads the native library, which copies the environment)

    monkeypatch.setenv("KUBECONFIG", real)


def test_backup_and_restore_in_process_use_the_current_kubeconfig(
        target: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _load_helm_sdk_with_a_dead_kubeconfig(tmp_path, monkeypatch)
    deploy_staging(target, "v1")

    made = target.qlensctl("backup", "staging", "--helm", "embedded", "--json")
    assert_ok(made, "backup")
    path = Path(json.loads(made.out)["file"])
    assert (target.cwd / path).is_file()
    assert "# revision: 1" in (target.cwd / path).read_text()

    restored = target.qlensctl("restore", "staging", str(path), "--helm", "embedded", "--timeout", "60",
                               "--json")
    assert_ok(restored, "restore")
    assert json.loads(restored.out)["revision"] == 2
    assert [r["revision"] for r in revisions(target)] == [1, 2]
    # Helm's history (and, while it ran, the deploy lock) says it was a restore, from which file
    assert revisions(target)[-1]["description"] == f"qlensctl restore staging {path.name}"
