"""Backup files: naming that never overwrites, the header restore relies on, the secret defence,
and the refusals for files that are not this environment's backup. No cluster needed: the
cluster round trip (backup -> restore -> identical values) is in tests/integration/ops."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from qlensctl.backup import (
    FORMAT,
    _create_exclusive,
    check_backup_for,
    is_secret_key,
    mask_url_credentials,
    read_backup,
    redact,
    render_backup,
    state_file_for,
)
from qlensctl.environments import load_environment
from qlensctl.errors import ConfigError

NOW = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)
VALUES = {
    "environment": "staging",
    "namespace": "qlens-staging",
    "image": {"repository": "ghcr.io/quantumlayer", "tag": "v1.2.3"},
    "replicas": {"gateway": 1, "router": 1, "cache": 1},
    "secrets": {"name": "qlens-secrets", "backend": "kubernetes"},
    "tls": {"enabled": False, "secretName": "qlens-tls"},
    "externalSecrets": {"enabled": False, "vaultUrl": "https://v.vault.azure.net", "refreshInterval": 3600},
}


def _write(tmp_path: Path, values: dict, env: str = "staging", ns: str = "qlens-staging") -> Path:
    text = render_backup(values, namespace=ns, environment=env, revision=4, chart="qlens-0.1.0",
                         taken=NOW, redacted=[])
    return _create_exclusive(tmp_path, "values", ".yaml", NOW, text)


def test_round_trip_keeps_values_and_header(tmp_path: Path) -> None:
    path = _write(tmp_path, VALUES)
    assert path.name == "values-20260314.yaml"
    backup = read_backup(path)
    assert backup.values == VALUES
    assert (backup.environment, backup.namespace, backup.release) == ("staging", "qlens-staging", "qlens")
    assert (backup.revision, backup.chart, backup.taken) == (4, "qlens-0.1.0", "2026-03-14T09:26:53Z")
    # the body alone is what `helm get values` gives: plain YAML Helm can take with --values
    assert yaml.safe_load(path.read_text()) == VALUES
    assert path.stat().st_mode & 0o777 == 0o600


def test_second_backup_same_day_gets_time_suffix_and_never_overwrites(tmp_path: Path) -> None:
    first = _write(tmp_path, VALUES)
    original = first.read_text()
    second = _write(tmp_path, {**VALUES, "replicas": {"gateway": 2, "router": 1, "cache": 1}})
    third = _write(tmp_path, VALUES)
    assert second.name == "values-20260314-092653.yaml"
    assert third.name == "values-20260314-092653-2.yaml"
    assert first.read_text() == original
    assert read_backup(second).values["replicas"]["gateway"] == 2


def test_secret_looking_keys_are_dropped_and_named() -> None:
    values = {
        "providers": {"azureOpenAI": {"apiKey": "SENTINEL-AZ", "enabled": True}},
        "aws": {"secretAccessKey": "SENTINEL-AWS", "accessKeyId": "SENTINEL-ID"},
        "redis": {"url": "redis://:SENTINEL-PW@redis:6379/0", "password": "SENTINEL-PW2"},
        "auth": {"token": "SENTINEL-TOK", "keysSecretName": "qlens-api-keys", "keysFile": "/etc/k"},
        "list": [{"clientSecret": "SENTINEL-CS"}],
        **{k: VALUES[k] for k in ("secrets", "tls", "externalSecrets")},
    }
    clean, dropped = redact(values)
    text = yaml.safe_dump(clean)
    assert "SENTINEL" not in text
    assert set(dropped) == {"providers.azureOpenAI.apiKey", "aws.secretAccessKey", "aws.accessKeyId",
                            "redis.url", "redis.password", "auth.token", "list[0].clientSecret"}
    # names and pointers to secrets stay: restoring them must give the same deployment
    assert clean["auth"] == {"keysSecretName": "qlens-api-keys", "keysFile": "/etc/k"}
    assert clean["secrets"] == VALUES["secrets"] and clean["tls"] == VALUES["tls"]
    assert clean["externalSecrets"] == VALUES["externalSecrets"]
    assert clean["redis"]["url"] == "redis://:***@redis:6379/0"
    assert clean["providers"]["azureOpenAI"] == {"enabled": True}


@pytest.mark.parametrize("key,secret", [("apiKey", True), ("AZURE_OPENAI_API_KEY", True), ("password", True),
                                         ("secretName", False), ("vaultUrl", False), ("maxEntries", False),
                                         ("keysFile", False), ("bearer-token", True), ("secrets", True)])
def test_is_secret_key(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_mask_url_credentials_keeps_urls_without_them() -> None:
    assert mask_url_credentials("redis://u:p@h:1/0") == "redis://u:***@h:1/0"
    assert mask_url_credentials("https://qlens.quantumlayer.ai/v1") == "https://qlens.quantumlayer.ai/v1"


def test_not_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "values-20260314.yaml"
    path.write_text(f"# format: {FORMAT}\nkey: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_backup(path)


def test_the_header_carries_the_bodys_checksum(tmp_path: Path) -> None:
    text = _write(tmp_path, VALUES).read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    body = text.split(header[-1] + "\n", 1)[1]
    # computed here, not by qlensctl's own helper: a wrong digest there must fail this test
    assert header[-1] == f"# sha256: {hashlib.sha256(body.encode('utf-8')).hexdigest()}"
    assert body == yaml.safe_dump(VALUES, sort_keys=True, default_flow_style=False)


def test_a_backup_cut_at_a_line_boundary_is_refused(tmp_path: Path) -> None:
    """What is left is valid YAML with a good header: only the checksum tells it is not whole."""
    path = _write(tmp_path, VALUES)
    lines = path.read_text().splitlines(True)
    for keep in (len(lines) - 1, len(lines) - 3, sum(1 for line in lines if line.startswith("#"))):
        cut = tmp_path / f"values-cut-{keep}.yaml"
        cut.write_text("".join(lines[:keep]))
        assert isinstance(yaml.safe_load(cut.read_text()), dict | None)
        with pytest.raises(ConfigError, match="backup is truncated or was edited: checksum mismatch") as err:
            read_backup(cut)
        assert str(cut) in err.value.message and "intact copy" in (err.value.hint or "")


def test_a_backup_cut_mid_line_says_it_is_truncated(tmp_path: Path) -> None:
    text = _write(tmp_path, {**VALUES, "note": "[a, b]"}).read_text()
    cut = tmp_path / "values-cut.yaml"
    cut.write_text(text[: text.index("note: '[a,") + len("note: '[a,")])  # an unclosed quote
    with pytest.raises(ConfigError, match="not valid YAML.*truncated or was edited"):
        read_backup(cut)


def test_an_edited_body_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, VALUES)
    path.write_text(path.read_text().replace("gateway: 1", "gateway: 5"))
    with pytest.raises(ConfigError, match="checksum mismatch"):
        read_backup(path)


def test_a_backup_without_a_checksum_is_refused(tmp_path: Path) -> None:
    """An older backup, or one cut inside its header: refused, never restored unchecked."""
    path = _write(tmp_path, VALUES)
    path.write_text("".join(line for line in path.read_text().splitlines(True)
                            if not line.startswith("# sha256:")))
    with pytest.raises(ConfigError, match="truncated or was edited: it has no '# sha256:' checksum line"):
        read_backup(path)


def test_plain_values_file_is_not_a_backup(tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(VALUES))
    with pytest.raises(ConfigError, match="not a QLens values backup"):
        read_backup(path)


def test_binary_and_missing_files_are_refused(tmp_path: Path) -> None:
    blob = tmp_path / "blob.yaml"
    blob.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError):
        read_backup(blob)
    with pytest.raises(ConfigError, match="no such file"):
        read_backup(tmp_path / "nope.yaml")


def test_another_environments_backup_is_refused(tmp_path: Path) -> None:
    staging, production = load_environment("staging"), load_environment("production")
    backup = read_backup(_write(tmp_path, VALUES))
    check_backup_for(backup, staging)
    with pytest.raises(ConfigError, match="backup of environment 'staging'"):
        check_backup_for(backup, production)


def test_header_lying_about_the_environment_is_caught_by_the_values(tmp_path: Path) -> None:
    production = load_environment("production")
    path = _write(tmp_path, VALUES, env="production", ns="qlens-production")  # values still say staging
    with pytest.raises(ConfigError, match="values for environment 'staging'"):
        check_backup_for(read_backup(path), production)


def test_state_file_sits_beside_its_values_file() -> None:
    assert state_file_for(Path("b/values-20260314-092653.yaml")) == Path("b/state-20260314-092653.json")


@pytest.mark.parametrize("env", ["local", "staging", "production"])
def test_rendered_values_lose_nothing_to_redaction(env: str) -> None:
    """The rendered values hold Secret names, never secrets: a backup of them must be complete,
    so no key of theirs may look secret (a model's `tokenParameter` once did, and a restore
    silently lost it)."""
    from qlensctl.render import render_values

    values = render_values(load_environment(env), version="v1.0.0")
    assert redact(values) == (values, [])


def test_only_the_credential_key_names_are_exempt() -> None:
    values = {"secrets": {"credentials": [{"env": "X_API_KEY", "key": "x-api-key", "password": "hunter2"}]},
              "other": {"key": "sk-live-123"}}
    assert redact(values) == ({"secrets": {"credentials": [{"env": "X_API_KEY", "key": "x-api-key"}]},
                               "other": {}}, ["secrets.credentials[0].password", "other.key"])
