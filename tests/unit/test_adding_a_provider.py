"""The maintainer's walk, done for real: add a provider to a copy of the tree, touching only the
files README's "Adding a provider" lists, and see every consumer pick it up.

In a temporary copy of services/, qlensctl/, templates/, charts/ and environments/: write
`services/router/providers/acme.py` (adapter, config model, declaration), add its line to
`registry.py`, regenerate `values.schema.json` with `python -m qlensctl.values_schema`. Then, in
a fresh interpreter on that copy: an environment turning acme on validates and renders; the chart
(through the real Helm engine, with its schema) gives the router the credential and the
ExternalSecret asks Key Vault for it; `secrets sync` needs it; the router turns acme on from its
variable and resolves targets through acme's own resolver. Nothing else was edited.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COPIED = ("services", "qlensctl", "templates", "charts", "environments")

ACME = '''
"""Acme: a provider added by tests/unit/test_adding_a_provider.py."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from services.router.providers.echo import EchoProvider
from services.router.providers.spec import Credential, ProviderConfig, ProviderSpec


class AcmeConfig(ProviderConfig):
    region: str = "eu-1"
    models: dict[str, str] = Field(default_factory=dict, description="public name -> Acme model")


class AcmeProvider(EchoProvider):
    name = "acme"


def create(config: AcmeConfig, env: Mapping[str, str]) -> AcmeProvider:
    return AcmeProvider()


PROVIDER = ProviderSpec(
    name="acme",
    config=AcmeConfig,
    create=create,
    credentials=(Credential("ACME_API_KEY", "acme-api-key", "AcmeApiKey"),),
    detect=("ACME_API_KEY",),
    requires=("ACME_API_KEY",),
    resolve_target=lambda config, target: config.models.get(target, target),
)
'''

CHECKS = '''
import asyncio, json, sys
import yaml
from qlensctl.environments import parse_environment
from qlensctl.helm import EmbeddedHelm, manifests
from qlensctl.render import chart_dir, render_values
from qlensctl.secrets import needed_secrets
from services.common.config import ServiceConfig
from services.router.catalog import build_catalog
from services.router.providers import build_providers

data = yaml.safe_load(open("environments/production.yaml"))
data["providers"]["acme"] = {"enabled": True, "models": {"big": "acme-big-2"}}
data["models"]["big"] = {"deployments": [{"provider": "acme", "target": "big"}]}
env = parse_environment(data, "production.yaml")
values = render_values(env, version="v1.0.0")
objs = {(o["kind"], o["metadata"]["name"]): o
        for o in manifests(EmbeddedHelm().template(chart_dir(), values, env.namespace))}
router = objs[("Deployment", "qlens-router")]["spec"]["template"]["spec"]["containers"][0]["env"]
external = objs[("ExternalSecret", "qlens-secrets")]["spec"]["data"]
config_yaml = objs[("ConfigMap", "qlens-config")]["data"]["config.yaml"]
config = ServiceConfig.model_validate(yaml.safe_load(config_yaml))

async def route():
    providers = build_providers(config.providers, {"ACME_API_KEY": "k"})
    try:
        catalog = build_catalog(config, providers)
        answer = await providers.on["acme"].complete(catalog.deployments["acme/big"].target,
                                                     {"messages": [{"role": "user", "content": "hi"}]})
        return sorted(providers.on), catalog.deployments["acme/big"].target, json.loads(answer.body)
    finally:
        await providers.aclose()

on, target, answer = asyncio.run(route())
json.dump({
    "credentials": values["secrets"]["credentials"][-1],
    "router_env": [e for e in router if e["name"] == "ACME_API_KEY"],
    "external": [d for d in external if d["secretKey"] == "acme-api-key"],
    "needed": [(s.env_var, s.key, s.name_in("keyVault")) for s in needed_secrets(env)],
    "on": on, "target": target, "answer": answer["choices"][0]["message"]["content"],
}, sys.stdout)
'''


def test_a_provider_is_its_module_its_registry_line_and_the_regenerated_schema(tmp_path: Path) -> None:
    tree = tmp_path / "qlens"
    for name in COPIED:
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    # 1. the module
    (tree / "services/router/providers/acme.py").write_text(ACME.lstrip())
    # 2. its registry line
    registry = tree / "services/router/providers/registry.py"
    source = registry.read_text()
    edits = [("import azure_openai, bedrock, echo\n", "import acme, azure_openai, bedrock, echo\n"),
             ("_MODULES = (azure_openai, bedrock, echo)", "_MODULES = (azure_openai, bedrock, echo, acme)")]
    for old, new in edits:
        assert source.count(old) == 1, f"registry.py no longer has {old!r}: update this test and the README"
        source = source.replace(old, new)
    registry.write_text(source)
    env = {**os.environ, "PYTHONPATH": str(tree), "QLENS_ENVIRONMENTS": str(tree / "environments"),
           "QLENS_TEMPLATES": str(tree / "templates"), "QLENS_CHART": str(tree / "charts/qlens")}

    def python(*args: str) -> str:
        proc = subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    # 3. the schema, regenerated (the stale one refuses the new section)
    assert "acme" not in (tree / "charts/qlens/values.schema.json").read_text()
    python("-m", "qlensctl.values_schema")
    schema = json.loads((tree / "charts/qlens/values.schema.json").read_text())
    assert "acme" in schema["properties"]["providers"]["properties"]

    result = json.loads(python("-c", textwrap.dedent(CHECKS)))
    assert result["credentials"] == {"env": "ACME_API_KEY", "key": "acme-api-key", "vaultName": "AcmeApiKey"}
    assert result["router_env"] == [{"name": "ACME_API_KEY", "valueFrom": {"secretKeyRef": {
        "name": "qlens-secrets", "key": "acme-api-key", "optional": True}}}]
    assert result["external"] == [{"secretKey": "acme-api-key", "remoteRef": {"key": "AcmeApiKey"}}]
    assert ("ACME_API_KEY", "acme-api-key", "AcmeApiKey") in [tuple(n) for n in result["needed"]]
    assert "acme" in result["on"]
    assert result["target"] == "acme-big-2"
    assert result["answer"] == "Echo: hi"

    # nothing but those three files differs from the checkout
    changed = set()
    for name in COPIED:
        changed |= _differences(filecmp.dircmp(ROOT / name, tree / name), name)
    assert changed == {"services/router/providers/acme.py", "services/router/providers/registry.py",
                       "charts/qlens/values.schema.json"}


def _differences(cmp: filecmp.dircmp[str], prefix: str) -> set[str]:
    out = {f"{prefix}/{n}" for n in cmp.diff_files + cmp.right_only if n != "__pycache__"}
    for name, sub in cmp.subdirs.items():
        if name != "__pycache__":
            out |= _differences(sub, f"{prefix}/{name}")
    return out
