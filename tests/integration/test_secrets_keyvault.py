"""`secrets sync production`: the real azure-identity + azure-keyvault-secrets SDKs, in a real
`qlensctl` process, against the local HTTPS Key Vault (tests/fakes/keyvault.py). The credential is
DefaultAzureCredential finding a managed identity (IDENTITY_ENDPOINT), as on Azure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.keyvault import FakeKeyVault
from tests.k8s.harness import Cli, assert_no_secrets

NAMES = ["azure-openai-endpoint", "azure-openai-api-key", "aws-region", "aws-access-key-id",
         "aws-secret-access-key", "redis-url"]


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[FakeKeyVault]:
    with FakeKeyVault(tmp_path / "kv") as kv:
        yield kv


def test_sync_production_pushes_every_secret_and_shows_only_names(cli: Cli, vault: FakeKeyVault,
                                                                    sentinels: dict[str, str]) -> None:
    cli.setenv({**vault.client_env(), **sentinels})
    run = cli("secrets", "sync", "production", "--vault-url", vault.url, "--yes")
    assert run.code == 0, run
    variables = ["AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "AWS_REGION", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "QLENS_REDIS_URL"]
    mapping = dict(zip(NAMES, variables, strict=True))
    for name, var in mapping.items():
        assert vault.value(name) == sentinels[var], name
        assert name in run.out
    assert "created" in run.out
    # the SDK really went through Key Vault's challenge and a managed-identity token
    assert vault.requests[0].status == 401 and vault.tokens_issued >= 1
    assert all(r.authorized for r in vault.requests if r.path.startswith("/secrets") and r.status != 401)

    again = cli("secrets", "sync", "production", "--vault-url", vault.url, "--yes", "--json")
    assert again.code == 0, again
    assert '"unchanged"' in again.out and '"created"' not in again.out
    assert all(vault.versions(n) == 1 for n in NAMES)  # no needless new versions

    cli.setenv({"AZURE_OPENAI_API_KEY": sentinels["AZURE_OPENAI_API_KEY"] + "-rotated"})
    rotated = cli("secrets", "sync", "production", "--vault-url", vault.url, "--yes", "--json")
    assert rotated.code == 0, rotated
    assert vault.versions("azure-openai-api-key") == 2
    assert vault.value("azure-openai-api-key").endswith("-rotated")
    assert_no_secrets(cli.all_output(), sentinels)
    assert "-rotated" not in cli.all_output()


def test_missing_variables_are_all_named_and_nothing_is_written(cli: Cli, vault: FakeKeyVault,
                                                                 sentinels: dict[str, str]) -> None:
    partial = {k: v for k, v in sentinels.items() if k not in ("AZURE_OPENAI_API_KEY", "QLENS_REDIS_URL")}
    cli.setenv({**vault.client_env(), **partial})
    run = cli("secrets", "sync", "production", "--vault-url", vault.url, "--yes")
    assert run.code == 2, run
    assert "AZURE_OPENAI_API_KEY" in run.err and "QLENS_REDIS_URL" in run.err
    assert "Traceback" not in run.text
    assert vault.requests == [] and vault.secrets == {}
    assert_no_secrets(run.text, sentinels)


def test_production_needs_confirmation_without_a_terminal(cli: Cli, vault: FakeKeyVault,
                                                          sentinels: dict[str, str]) -> None:
    cli.setenv({**vault.client_env(), **sentinels})
    run = cli("secrets", "sync", "production", "--vault-url", vault.url)
    assert run.code == 2, run
    assert "--yes" in run.err
    assert vault.requests == []


def test_vault_failure_is_one_clear_error_even_with_debug(cli: Cli, vault: FakeKeyVault,
                                                          sentinels: dict[str, str]) -> None:
    cli.setenv({**vault.client_env(), **sentinels})
    vault.fail_next(403, count=10)
    run = cli("--debug", "secrets", "sync", "production", "--vault-url", vault.url, "--yes")
    assert run.code == 1, run
    assert "HTTP 403" in run.err and "hint:" in run.err
    assert_no_secrets(run.text, sentinels)


def test_unreachable_vault_and_bad_identity_fail_cleanly(cli: Cli, vault: FakeKeyVault,
                                                         sentinels: dict[str, str]) -> None:
    cli.setenv({**vault.client_env(), **sentinels})
    run = cli("secrets", "sync", "production", "--vault-url", "https://127.0.0.1:1", "--yes")
    assert run.code == 1, run
    assert "cannot reach Key Vault" in run.err and "Traceback" not in run.text
    bad = cli("secrets", "sync", "production", "--vault-url", vault.url, "--yes",
              env={"IDENTITY_HEADER": "wrong"})
    assert bad.code == 1, bad
    assert "authentication" in bad.err.lower() and "Traceback" not in bad.text
    assert vault.secrets == {}
    assert_no_secrets(cli.all_output(), sentinels)
