"""The provider registry: each provider declared once, everything else iterating the declarations.

The router (which adapters are on, target resolution), `qlensctl secrets sync` (which secrets an
environment needs, under which names), the rendered values and through them the chart (router
env, ExternalSecret) all follow what the registry declares, including a change to a declaration.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from qlensctl.environments import load_environment, parse_environment
from qlensctl.helm import EmbeddedHelm, manifests
from qlensctl.render import chart_dir, render_values
from qlensctl.secrets import collect_secrets, needed_secrets
from services.common.config import ServiceConfig
from services.router.catalog import build_catalog
from services.router.providers import build_providers, registry
from services.router.providers.spec import Credential, ProviderConfig

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("kubernetes", "openai", "boto3", "botocore", "azure", "fastapi", "helm_python", "pyhelm3",
         "redis", "httpx", "httpx2", "aiohttp")
STAGING_CREDENTIALS = [
    {"env": "AZURE_OPENAI_ENDPOINT", "key": "azure-openai-endpoint", "vaultName": "azure-openai-endpoint"},
    {"env": "AZURE_OPENAI_API_KEY", "key": "azure-openai-api-key", "vaultName": "azure-openai-api-key"},
    {"env": "AWS_REGION", "key": "aws-region", "vaultName": "aws-region"},
    {"env": "AWS_ACCESS_KEY_ID", "key": "aws-access-key-id", "vaultName": "aws-access-key-id"},
    {"env": "AWS_SECRET_ACCESS_KEY", "key": "aws-secret-access-key", "vaultName": "aws-secret-access-key"},
]


def environment(name: str, **providers: Any) -> Any:
    """A checkout environment with some provider sections replaced."""
    data = yaml.safe_load((ROOT / "environments" / f"{name}.yaml").read_text())
    data["providers"] = {**data["providers"], **providers}
    return parse_environment(data, f"environments/{name}.yaml")


def chart_objects(env: Any) -> dict[tuple[str, str], dict[str, Any]]:
    text = EmbeddedHelm().template(chart_dir(), render_values(env, version="v1.0.0"), env.namespace)
    return {(o["kind"], o["metadata"]["name"]): o for o in manifests(text)}


def router_env(objs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """The router's env vars that come from a Secret: name -> secretKeyRef."""
    spec = objs[("Deployment", "qlens-router")]["spec"]["template"]["spec"]
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in spec["containers"][0]["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}


def test_the_registry_lists_the_three_providers_in_order() -> None:
    assert list(registry.PROVIDERS) == ["azureOpenAI", "awsBedrock", "echo"]


def test_every_declaration_is_complete_and_names_are_unique_and_valid() -> None:
    env_vars: list[str] = []
    keys: list[str] = []
    for name, spec in registry.PROVIDERS.items():
        assert spec.name == name
        assert issubclass(spec.config, ProviderConfig) and "enabled" in spec.config.model_fields
        assert spec.config().enabled is False  # a provider is off unless an environment turns it on
        assert callable(spec.create) and callable(spec.resolve_target)
        for c in spec.credentials:
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*", c.env_var), c
            assert re.fullmatch(r"[-._a-zA-Z0-9]+", c.secret_key), c  # a Secret data key
            assert re.fullmatch(r"[0-9a-zA-Z-]{1,127}", c.vault_secret), c  # a Key Vault secret name
            env_vars.append(c.env_var)
            keys.append(c.secret_key)
    assert len(env_vars) == len(set(env_vars)) and len(keys) == len(set(keys))
    assert "redis-url" not in keys  # qlensctl.secrets' own, not a provider's


def test_the_declarations_load_no_sdk() -> None:
    """qlensctl reads the declarations: importing them must not pull in any provider's SDK."""
    code = "import services.router.providers.registry, qlensctl.environments, qlensctl.render"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines()
              if line.startswith("import time:") and "|" in line}
    assert "services" in loaded  # the measurement saw the import
    assert not loaded & set(HEAVY)


def test_an_unknown_provider_section_or_deployment_is_refused() -> None:
    with pytest.raises(ValueError, match="acme"):
        build_providers({"acme": {"enabled": True}}, {})
    config = ServiceConfig.model_validate(
        {"name": "t", "models": {"m": {"deployments": [{"provider": "acme", "target": "x"}]}}})
    with pytest.raises(ValueError) as err:
        build_catalog(config, build_providers({}, {}))
    assert str(err.value) == "models.m.deployments[0].provider: must be 'azureOpenAI', 'awsBedrock' or 'echo'"


def test_rendered_values_carry_the_enabled_providers_credentials() -> None:
    assert render_values(load_environment("staging"))["secrets"]["credentials"] == STAGING_CREDENTIALS
    off = environment("staging", azureOpenAI={"enabled": False})
    assert render_values(off)["secrets"]["credentials"] == STAGING_CREDENTIALS[2:]
    none = environment("staging", azureOpenAI={"enabled": False}, awsBedrock={"enabled": False})
    assert render_values(none)["secrets"]["credentials"] == []


def test_the_router_env_and_external_secret_follow_the_rendered_list() -> None:
    off = environment("production", awsBedrock={"enabled": False})
    objs = chart_objects(off)
    assert router_env(objs) == {
        "AZURE_OPENAI_ENDPOINT": {"name": "qlens-secrets", "key": "azure-openai-endpoint", "optional": True},
        "AZURE_OPENAI_API_KEY": {"name": "qlens-secrets", "key": "azure-openai-api-key", "optional": True},
    }
    data = objs[("ExternalSecret", "qlens-secrets")]["spec"]["data"]
    assert [(d["secretKey"], d["remoteRef"]["key"]) for d in data] == [
        ("azure-openai-endpoint", "azure-openai-endpoint"),
        ("azure-openai-api-key", "azure-openai-api-key"),
        ("redis-url", "redis-url"),
    ]


def test_a_changed_declaration_reaches_secrets_values_and_chart(monkeypatch: pytest.MonkeyPatch) -> None:
    """Change one declaration (a Key Vault name, a new variable): nothing else is edited, and
    `secrets sync`, the rendered values, the router env and the ExternalSecret all follow."""
    azure = registry.PROVIDERS["azureOpenAI"]
    creds = (azure.credentials[0], Credential("AZURE_OPENAI_TOKEN", "azure-openai-token", "AzureOpenAIToken"))
    monkeypatch.setitem(registry.PROVIDERS, "azureOpenAI", dataclasses.replace(azure, credentials=creds))
    prod = environment("production", awsBedrock={"enabled": False})
    assert [(s.env_var, s.key, s.name_in("keyVault")) for s in needed_secrets(prod)] == [
        ("AZURE_OPENAI_ENDPOINT", "azure-openai-endpoint", "azure-openai-endpoint"),
        ("AZURE_OPENAI_TOKEN", "azure-openai-token", "AzureOpenAIToken"),
        ("QLENS_REDIS_URL", "redis-url", "redis-url"),
    ]
    shell = {"AZURE_OPENAI_ENDPOINT": "https://x", "AZURE_OPENAI_TOKEN": "t", "QLENS_REDIS_URL": "redis://r"}
    assert collect_secrets(prod, shell) == {  # production's store is Key Vault: its names
        "azure-openai-endpoint": "https://x", "AzureOpenAIToken": "t", "redis-url": "redis://r"}
    staging = environment("staging", awsBedrock={"enabled": False})
    assert collect_secrets(staging, shell) == {  # staging's is the Secret: its keys
        "azure-openai-endpoint": "https://x", "azure-openai-token": "t"}
    objs = chart_objects(prod)
    assert router_env(objs)["AZURE_OPENAI_TOKEN"] == {
        "name": "qlens-secrets", "key": "azure-openai-token", "optional": True}
    assert "AZURE_OPENAI_API_KEY" not in router_env(objs)
    data = objs[("ExternalSecret", "qlens-secrets")]["spec"]["data"]
    pairs = [(d["secretKey"], d["remoteRef"]["key"]) for d in data]
    assert ("azure-openai-token", "AzureOpenAIToken") in pairs and ("azure-openai-api-key",) * 2 not in pairs


async def test_targets_resolve_through_each_providers_own_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    echo = registry.PROVIDERS["echo"]
    resolver = lambda config, target: f"{target}@{config.delay_ms}"  # noqa: E731
    monkeypatch.setitem(registry.PROVIDERS, "echo", dataclasses.replace(echo, resolve_target=resolver))
    config = ServiceConfig.model_validate({
        "name": "t", "providers": {"echo": {"enabled": True, "delayMs": 5}},
        "models": {"m": {"deployments": [{"provider": "echo", "target": "e"}]}}})
    providers = build_providers(config.providers, {})
    try:
        assert build_catalog(config, providers).deployments["echo/e"].target == "e@5.0"
    finally:
        await providers.aclose()
