"""Secret hygiene, the CLI half (issue 9): provider credentials, a Redis password and API keys,
planted as sentinel values, appear in no `qlensctl` output (stdout and stderr, with `--debug`, on
success and on error paths), no rendered values or manifests, no backup file, and no object in
the deployed namespace except the Secret `qlens-secrets` that exists to hold them.

Helm keeps each revision in a Secret of its own (`sh.helm.release.v1.qlens.vN`: base64 of gzipped
JSON holding the values and the manifest), so a value that leaked into the values would sit there
unseen by a plain scan: those are decoded and searched too. Every other Secret is searched with
its data decoded. The positive control: `qlens-secrets` really does hold every sentinel, so the
search would find them where they do not belong.

Runs on the real control plane (`target`, tests/k8s/harness.py), `qlensctl` in-process.
"""

from __future__ import annotations

import base64
import gzip
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from qlensctl.local import free_port
from services.common.apikeys import hash_key
from tests.k8s.harness import Target, assert_ok, secret_values
from tests.support.cli import Result

pytestmark = pytest.mark.cluster

SECRET_NAME = "qlens-secrets"


@pytest.fixture
def planted(target: Target, sentinels: dict[str, str],
            monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The sentinels in this process's environment (where in-process `qlensctl` reads them), plus
    an API key in QLENS_API_KEY; returns every string no output may contain."""
    api_key = f"qlk-SENTINEL-APIKEY-{secrets.token_hex(8)}"
    for name, value in sentinels.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("QLENS_API_KEY", api_key)
    names = [f"{n}'s value" for n in sentinels if n != "AWS_REGION"] + ["the Redis password"]
    forbidden = dict(zip(names, secret_values(sentinels), strict=True))
    forbidden["the Azure endpoint's host"] = urlsplit(sentinels["AZURE_OPENAI_ENDPOINT"]).hostname or ""
    forbidden["QLENS_API_KEY"] = api_key
    return forbidden


class Checked:
    """Runs `qlensctl` and asserts no forbidden string is in what it printed."""

    def __init__(self, on: Target, forbidden: dict[str, str]) -> None:
        self.target, self.forbidden = on, dict(forbidden)

    def __call__(self, *args: str, code: int | None = 0) -> Result:
        result = self.target.qlensctl(*args)
        if code is not None:
            assert result.code == code, f"qlensctl {' '.join(args)} -> {result.code}:\n{result.text}"
        assert "Traceback" not in result.text or args[0] == "--debug", result.text
        self.clean(result.text, f"the output of `qlensctl {' '.join(args)}`")
        return result

    def clean(self, text: str, where: str) -> None:
        for what, value in self.forbidden.items():
            assert value not in text, f"{what} appeared in {where}"


@pytest.fixture
def run(target: Target, planted: dict[str, str]) -> Checked:
    return Checked(target, planted)


def test_offline_commands_print_no_secret(run: Checked) -> None:
    """Nothing offline reads the credentials, so nothing offline can print them: environments,
    rendered values, the chart's manifests (which include no Secret at all), lint, and errors."""
    for env, version in (("staging", "v1"), ("production", "v1.0.0")):
        run("env", "show", env)
        run("env", "show", env, "--json")
        run("render", env, "--version", version)
        manifests = run("template", env, "--version", version).out
        kinds = [line.split(":", 1)[1].strip() for line in manifests.splitlines() if line.startswith("kind:")]
        assert "Deployment" in kinds and "Secret" not in kinds, kinds  # credentials come from outside
        run("lint", env, "--version", version, code=None)
    run("env", "list")
    # error paths, with tracebacks
    run("--debug", "render", "no-such-environment", code=2)
    run("--debug", "deploy", "production", code=2)  # production needs --version
    run("--debug", "smoke-test", "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "2", code=1)


@dataclass
class Scan:
    """What a namespace scan searched: the data of `qlens-secrets` (decoded, by key), every other
    Secret's decoded data (by name), and the kinds it found objects of."""

    kept: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    kinds: set[str] = field(default_factory=set)


def _decoded_secret_data(secret: dict[str, Any]) -> str:
    """A Secret's data as text: each value base64-decoded, and Helm's release records further
    decoded (base64 of gzip of JSON) so the values and manifest inside them are searched."""
    parts = []
    for key, value in (secret.get("data") or {}).items():
        raw = base64.b64decode(value)
        if secret.get("type") == "helm.sh/release.v1" and key == "release":
            raw = gzip.decompress(base64.b64decode(raw))
            assert b'"config"' in raw and b'"manifest"' in raw  # really decoded: values and manifest
        parts.append(raw.decode(errors="replace"))
    return "\n".join(parts)


def _get(api: Any, path: str) -> Any:
    """GET an API path as JSON, with the client's credentials."""
    response = api.call_api(path, "GET", auth_settings=["BearerToken"], _preload_content=False,
                            _return_http_data_only=True)
    return json.loads(response.data)


def _namespaced_lists(api: Any) -> Iterator[tuple[str, str]]:
    """(kind, list path template) of every namespaced resource the API server serves, found by
    discovery (as `kubectl api-resources --namespaced --verbs=list`), not a fixed list of kinds."""
    def get(path: str) -> Any:
        return _get(api, path)

    groups = get("/apis")["groups"]
    versions = ["/api/v1"] + [f"/apis/{g['preferredVersion']['groupVersion']}" for g in groups]
    for base in versions:
        for r in get(base)["resources"]:
            if r["namespaced"] and "/" not in r["name"] and "list" in r.get("verbs", []):
                yield r["kind"], f"{base}/namespaces/{{ns}}/{r['name']}"


def scan_namespace(on: Target, ns: str, checked: Checked) -> Scan:
    """Search every object in `ns` (Secrets decoded) except `qlens-secrets`."""
    api = on.cluster.api
    scan = Scan()
    for kind, path in _namespaced_lists(api):
        for obj in _get(api, path.format(ns=ns))["items"]:
            name = obj["metadata"]["name"]
            scan.kinds.add(kind)
            if kind == "Secret" and name == SECRET_NAME:
                scan.kept = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
                continue
            text = json.dumps(obj)
            if kind == "Secret":
                scan.secrets[name] = _decoded_secret_data(obj)
                text += scan.secrets[name]
            checked.clean(text, f"{kind}/{name} in {ns}")
    return scan


def test_cluster_commands_and_objects_hold_no_secret(target: Target, run: Checked,
                                                     sentinels: dict[str, str], tmp_path: Path) -> None:
    ns = target.staging_ns
    # refusals before anything changes: missing credentials (the others are set) and a dry run
    # without a release
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("AWS_SECRET_ACCESS_KEY")
        refused = run("--debug", "deploy", "staging", "--version", "v1", code=2)
        assert "AWS_SECRET_ACCESS_KEY" in refused.err
    run("deploy", "staging", "--version", "v1", "--dry-run")
    run("--debug", "deploy", "staging", "--version", "v1", "--timeout", "60")
    run("deploy", "staging", "--version", "v2", "--dry-run")

    # the cluster: only qlens-secrets holds them (and does, every one)
    scan = scan_namespace(target, ns, run)
    assert {"Deployment", "ReplicaSet", "Pod", "Service", "ConfigMap", "Secret", "Event"} <= scan.kinds
    [record] = target.release_secrets(ns)  # Helm's record of revision 1, decoded and searched
    assert '"environment":"staging"' in scan.secrets[record].replace(" ", "")
    assert scan.kept == {"azure-openai-endpoint": sentinels["AZURE_OPENAI_ENDPOINT"],
                    "azure-openai-api-key": sentinels["AZURE_OPENAI_API_KEY"],
                    "aws-region": sentinels["AWS_REGION"],
                    "aws-access-key-id": sentinels["AWS_ACCESS_KEY_ID"],
                    "aws-secret-access-key": sentinels["AWS_SECRET_ACCESS_KEY"]}

    for args in (["status", "staging"], ["status", "staging", "--json"], ["history", "staging"],
                 ["history", "staging", "--json"], ["secrets", "sync", "staging"],
                 ["secrets", "sync", "staging", "--json"]):
        run(*args)
    run("--debug", "status", "production", code=2)  # the context guard refuses: an error path
    run("--debug", "status", "production", "--kube-context", "qlens-production", code=1)  # no release

    # backups: the files, and Redis that cannot be reached with a password in its URL
    made = run("backup", "staging", "--state", "--json")
    assert json.loads(made.out)["state"]["file"] is None  # Redis at 127.0.0.1:1: a warning
    files = list(target.backups.glob("*"))
    assert files, "no backup written"
    for f in files:
        run.clean(f.read_text(), str(f))
    run("--debug", "restore", "staging", str(files[0]), "--state", "--timeout", "60", code=2)  # no state file

    # API keys: the key is printed by `create` and nowhere else, stored only as its hash
    created = run("keys", "create", "staging", "--tenant", "acme", "--user", "alice", "--json")
    key = json.loads(created.out)["key"]
    assert key in created.out
    human = target.qlensctl("keys", "create", "staging", "--tenant", "acme", "--user", "bob")
    assert_ok(human, "keys create")
    second = next(line.strip() for line in human.out.splitlines() if line.strip().startswith("qlk"))
    run.forbidden.update({"a created API key": key, "another created API key": second})
    run("keys", "list", "staging")
    listed = run("keys", "list", "staging", "--json")
    fingerprint = next(k["fingerprint"] for k in json.loads(listed.out) if k["user"] == "bob")
    run("keys", "revoke", "staging", "--fingerprint", fingerprint)
    # the gateway's key, given to commands that use one, on their error paths
    closed = f"http://127.0.0.1:{free_port()}"
    run("--debug", "smoke-test", "--url", closed, "--api-key", key, "--timeout", "2", code=1)
    run("--debug", "maintenance", "end", "staging", "--url", closed, "--api-key", key, code=1)
    stored = scan_namespace(target, ns, run).secrets["qlens-api-keys"]  # searched: hashes only
    assert hash_key(key) in stored
