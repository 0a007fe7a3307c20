"""`backup`, `restore` and `maintenance` against a release installed by the real Helm adapter on
the real control plane (the fake kubelet runs the pods)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from qlensctl.backup import FORMAT, body_checksum
from qlensctl.release import history
from tests.k8s.harness import Cli, Target, assert_no_secrets
from tests.support.json_errors import json_error

pytestmark = pytest.mark.cluster


@pytest.fixture
def staging(ops: Target) -> Target:
    ops.install("staging")
    ops.wait_ready("staging")
    return ops


def _revision(ops: Target, env: str) -> int:
    return ops.helm().status("qlens", ops.namespaces[env]).revision


def _values(ops: Target, env: str) -> dict:
    return ops.helm().get_values("qlens", ops.namespaces[env])


def test_backup_then_restore_gives_identical_values(staging: Target, cli: Cli, tmp_path: Path,
                                                    sentinels: dict[str, str]) -> None:
    original = _values(staging, "staging")
    backups = cli.cwd / "backup"
    first = cli("backup", "staging", "--json")
    assert first.code == 0, first
    path = Path(cli.cwd / json.loads(first.out)["file"])
    assert path.parent == backups and len(path.stem) == len("values-20260101")  # values-YYYYMMDD
    text = path.read_text()
    assert f"# format: {FORMAT}" in text and f"# namespace: {staging.namespaces['staging']}" in text
    assert "# revision: 1" in text and "# chart: qlens-" in text
    assert yaml.safe_load(text) == original  # the body is exactly `helm get values`

    second = cli("backup", "staging", "--json")
    assert second.code == 0, second
    second_path = Path(cli.cwd / json.loads(second.out)["file"])
    assert second_path != path and second_path.name.startswith(path.stem + "-")
    assert path.read_text() == text  # the first one was not overwritten

    changed = dict(original, replicas={"gateway": 2, "router": 1, "cache": 1})
    staging.helm().upgrade_or_install("qlens", _chart(), changed, staging.namespaces["staging"],
                                      atomic=False, wait=False)
    assert _values(staging, "staging") != original

    restored = cli("restore", "staging", str(path), "--timeout", "120", "--json", env=sentinels)
    assert restored.code == 0, restored
    assert _values(staging, "staging") == original
    assert _revision(staging, "staging") == 3
    result = json.loads(restored.out)
    assert result["revision"] == 3
    assert (result["environment"], result["namespace"]) == ("staging", staging.namespaces["staging"])
    assert (result["ok"], result["status"], result["file"]) == (True, "deployed", str(path))
    assert (result["backupRevision"], result["state"]) == (1, None)
    assert {d["name"]: (d["ready"], d["desired"]) for d in result["deployments"]} == {
        "qlens-gateway": (1, 1), "qlens-router": (1, 1), "qlens-cache": (1, 1)}
    assert staging.replicas("staging") == {"gateway": 1, "router": 1, "cache": 1}
    # restore saved what it replaced, so it can itself be undone
    replaced = Path(cli.cwd / result["previousValues"])
    assert yaml.safe_load(replaced.read_text()) == changed
    saved = list(backups.glob("values-*.yaml"))
    assert len(saved) == 3
    for f in saved:
        assert_no_secrets(f.read_text(), sentinels, where=str(f))
    assert_no_secrets(cli.all_output(), sentinels)


def _chart() -> Path:
    from qlensctl import render

    return render.chart_dir()


def _snapshot(ops: Target, env: str) -> tuple:
    return _revision(ops, env), _values(ops, env), ops.replicas(env)


A_LIST = "- a list\n"


@pytest.mark.parametrize("content,message", [
    ("key: [unclosed\n", "not valid YAML"),
    ("replicas: {gateway: 9}\n", "not a QLens values backup"),
    (f"# format: {FORMAT}\n# sha256: {body_checksum(A_LIST)}\n{A_LIST}", "must be a YAML mapping"),
    (f"# format: {FORMAT}\nreplicas: {{gateway: 9}}\n", "no '# sha256:' checksum line"),
])
def test_bad_backup_files_are_refused_and_the_cluster_is_unchanged(staging: Target, cli: Cli,
                                                                   tmp_path: Path, content: str,
                                                                   message: str) -> None:
    before = _snapshot(staging, "staging")
    bad = tmp_path / "values-20260101.yaml"
    bad.write_text(content)
    run = cli("--debug", "restore", "staging", str(bad))
    assert run.code == 2, run
    assert message in run.err and "hint:" in run.err
    assert _snapshot(staging, "staging") == before


def test_another_environments_backup_is_refused(staging: Target, cli: Cli) -> None:
    made = cli("backup", "staging", "--json")
    assert made.code == 0, made
    path = Path(cli.cwd / json.loads(made.out)["file"])
    before = _snapshot(staging, "staging")
    refused = cli("restore", "production", str(path), "--yes")
    assert refused.code == 2, refused
    assert "backup of environment 'staging'" in refused.err
    error = json_error(cli("restore", "production", str(path), "--yes", "--json"))
    assert error["type"] == "ConfigError" and "backup of environment 'staging'" in error["message"]
    assert _snapshot(staging, "staging") == before
    assert history(staging.helm(), staging.namespaces["production"]) == []


def _point_domain_at(ops: Target, env: str, address: str) -> None:
    """The environment's domain (where `maintenance end` smoke-tests by default) := host:port."""
    ops.environment_file(env, domain=address, tls={"enabled": False})


def test_maintenance_round_trip(staging: Target, cli: Cli, shared_stack) -> None:
    start = cli("maintenance", "start", "staging", "--json")
    assert start.code == 0, start
    started = json.loads(start.out)
    assert Path(cli.cwd / started["backup"]).is_file()
    assert (started["environment"], started["namespace"]) == ("staging", staging.namespaces["staging"])
    assert staging.replicas("staging") == {"gateway": 2, "router": 2, "cache": 2}
    assert {(c["service"], c["deployment"], c["before"], c["after"]) for c in started["changes"]} == {
        ("gateway", "qlens-gateway", 1, 2), ("router", "qlens-router", 1, 2), ("cache", "qlens-cache", 1, 2)}

    # the smoke test goes to the environment's URL (here its domain is a real local gateway)
    _point_domain_at(staging, "staging", shared_stack.gateway_url.removeprefix("http://"))
    end = cli("maintenance", "end", "staging", "--timeout", "60", "--model", "echo")  # a local echo stack
    assert end.code == 0, end
    assert "PASS" in end.out and "Maintenance ended" in end.out
    assert f"Smoke test of {shared_stack.gateway_url}: all 6 checks passed" in end.out
    assert staging.replicas("staging") == {"gateway": 1, "router": 1, "cache": 1}

    to_n = cli("maintenance", "start", "staging", "--replicas", "3")
    assert to_n.code == 0, to_n
    assert staging.replicas("staging") == {"gateway": 3, "router": 3, "cache": 3}
    assert "Backed up the values" in to_n.out
    # --url: any gateway, here the same one
    by_url = cli("maintenance", "end", "staging", "--url", shared_stack.gateway_url, "--model", "echo",
                 "--json")
    assert by_url.code == 0, by_url
    report = json.loads(by_url.out)
    assert report["smoke"]["target"] == shared_stack.gateway_url
    assert {c["status"] for c in report["smoke"]["checks"]} == {"pass"}
    assert (report["environment"], report["namespace"]) == ("staging", staging.namespaces["staging"])
    assert {(h["name"], h["ready"], h["desired"], h["done"]) for h in report["health"]} == {
        ("qlens-gateway", 3, 3, True), ("qlens-router", 3, 3, True), ("qlens-cache", 3, 3, True)}
    assert {(c["deployment"], c["before"], c["after"]) for c in report["changes"]} == {
        ("qlens-gateway", 3, 1), ("qlens-router", 3, 1), ("qlens-cache", 3, 1)}
    assert staging.replicas("staging") == {"gateway": 1, "router": 1, "cache": 1}


def test_maintenance_end_keeps_replicas_when_the_smoke_test_fails(staging: Target, cli: Cli) -> None:
    from qlensctl.local import free_port

    assert cli("maintenance", "start", "staging").code == 0
    closed = f"127.0.0.1:{free_port()}"
    _point_domain_at(staging, "staging", closed)
    end = cli("maintenance", "end", "staging", "--timeout", "30")
    assert end.code == 1, end
    assert "Traceback" not in end.text
    assert f"smoke test of http://{closed} failed (gateway /health: " in end.err
    assert "replicas left as they are" in end.err and "add --port-forward" in end.err
    as_json = cli("maintenance", "end", "staging", "--timeout", "30", "--json")
    error = json_error(as_json)
    assert (error["type"], error["exitCode"]) == ("OperationError", 1)
    assert f"smoke test of http://{closed} failed" in error["message"]
    assert "add --port-forward" in error["hint"]
    assert staging.replicas("staging") == {"gateway": 2, "router": 2, "cache": 2}


def test_maintenance_end_usage_errors_change_nothing(staging: Target, cli: Cli) -> None:
    assert cli("maintenance", "start", "staging").code == 0
    for args, words in ((["--url", "http://127.0.0.1:1", "--port-forward"], "are exclusive"),
                        (["--url", "ftp://gateway"], "is not an http(s) URL")):
        run = cli("maintenance", "end", "staging", *args)
        assert run.code == 2 and words in run.err and "hint:" in run.err, run
    # production needs a key for its smoke test: said before the cluster is even asked
    no_key = cli("maintenance", "end", "production", "--yes")
    assert no_key.code == 2 and "requires an API key" in no_key.err, no_key
    assert staging.replicas("staging") == {"gateway": 2, "router": 2, "cache": 2}


def test_maintenance_end_keeps_replicas_when_unhealthy(staging: Target, cli: Cli) -> None:
    from kubernetes import client

    assert cli("maintenance", "start", "staging").code == 0
    apps = client.AppsV1Api(staging.api)
    ns = staging.namespaces["staging"]
    d = apps.read_namespaced_deployment("qlens-router", ns)
    image = d.spec.template.spec.containers[0].image
    d.spec.template.spec.containers[0].image = image.rsplit(":", 1)[0] + ":unready"
    apps.replace_namespaced_deployment("qlens-router", ns, d)
    end = cli("maintenance", "end", "staging", "--timeout", "3")
    assert end.code == 1, end
    assert "qlens-router" in end.err and "replicas left as they are" in end.err
    assert staging.replicas("staging") == {"gateway": 2, "router": 2, "cache": 2}


def test_state_backup_and_restore_through_the_cli(staging: Target, cli: Cli, redis_server,
                                                  sentinels: dict[str, str]) -> None:
    import redis

    r = redis.Redis.from_url(redis_server.url)
    r.set("qlens:budget:2026-03-14:total", "42.5", ex=3600)
    r.set("qlens:cache:acme:" + "cd" * 32, b"cached answer", ex=600)
    # an unreachable Redis (with a password in its URL) is a warning; the values are still saved
    unreachable = cli("backup", "staging", "--state", env={"QLENS_REDIS_URL": sentinels["QLENS_REDIS_URL"]})
    assert unreachable.code == 0, unreachable
    assert "not reachable" in unreachable.err and "127.0.0.1:1/0" in unreachable.err
    assert_no_secrets(unreachable.text, sentinels)

    made = cli("backup", "staging", "--state", "--redis-url", redis_server.url, "--json")
    assert made.code == 0, made
    result = json.loads(made.out)
    assert result["state"]["keys"] == 2
    values_file = cli.cwd / result["file"]
    state_name = values_file.name.replace("values-", "state-").replace(".yaml", ".json")
    assert (cli.cwd / result["state"]["file"]).name == state_name

    r.flushall()
    restored = cli("restore", "staging", str(values_file), "--state", "--redis-url", redis_server.url,
                   "--json")
    assert restored.code == 0, restored
    state_file = str(values_file.with_name(state_name))
    assert json.loads(restored.out)["state"] == {"file": state_file, "restored": 2, "expired": 0}
    assert r.get("qlens:budget:2026-03-14:total") == b"42.5"
    assert 0 < r.ttl("qlens:cache:acme:" + "cd" * 32) <= 600
    r.close()
