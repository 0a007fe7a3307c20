"""The chart's values as pydantic models; charts/qlens/values.schema.json is generated from them.

    python -m qlensctl.values_schema            # (re)write charts/qlens/values.schema.json
    python -m qlensctl.values_schema --check    # exit 1 when the committed file is out of date
    nox -s schema                               # the same as the first

Why generated: the environment models (services/common/config.py, qlensctl/environments.py and
each provider's config model in the provider registry) already say what every setting may be.
A hand-written schema drifted from them (a new setting refused by Helm, or accepted without a
type); now a setting is declared once, and `tests/unit/test_values_schema.py` fails when the
committed file was not regenerated.

`ChartValues` is what the chart reads: the sections `qlensctl render` writes (shaped like the
environment's, reusing its models) plus the chart's own settings (network policy, RBAC, security
contexts, ...) whose defaults live in charts/qlens/values.yaml. The JSON Schema is draft-07 (what
Helm validates against), self-contained (no `$ref`), without pydantic's titles.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, create_model

from qlensctl.environments import Alerts, Environment, ExternalSecrets, Secrets
from services.common.config import Model, Observability
from services.router.providers.registry import PROVIDERS

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "charts" / "qlens" / "values.schema.json"

Port = Annotated[int, Field(ge=1, le=65535)]
Labels = dict[str, str]


# --- what `qlensctl render` writes, beyond the environment's own models --------------------------


class Credential(Model):
    """One provider credential, as the provider registry declares it (names, never values)."""

    env: str = Field(pattern=r"^[A-Z_][A-Z0-9_]*$", description="the router's environment variable")
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$", description="its key in Secret secrets.name")
    vault_name: str = Field(pattern=r"^[-a-zA-Z0-9]+$", description="its secret name in Azure Key Vault")


class ChartSecrets(Secrets):
    credentials: list[Credential] = Field(
        default_factory=list, description="the enabled providers' credentials (from the provider registry)")


class ChartExternalSecrets(ExternalSecrets):
    auth_type: Literal["WorkloadIdentity", "ManagedIdentity", "ServicePrincipal"]
    identity_id: str
    tenant_id: str
    service_principal_secret: str


MonitoringMode = Environment.model_fields["monitoring"].annotation


class Monitoring(Model):
    mode: MonitoringMode  # type: ignore[valid-type]
    interval: str = Field(pattern=r"^[0-9]+(ms|s|m|h)$")
    labels: Labels
    alerts: Alerts


# --- the chart's own settings: no defaults here, charts/qlens/values.yaml is where they live ------


class Rollout(Model):
    pre_stop_seconds: int = Field(ge=0)
    drain_seconds: int = Field(ge=0)
    termination_grace_period_seconds: int = Field(ge=1)


class PodDisruptionBudget(Model):
    enabled: bool
    min_available: int | str


class ApiKeys(Model):
    secret_name: str = Field(min_length=1)


class Redis(Model):
    ports: list[Port]
    to: list[dict[str, Any]] = Field(description="NetworkPolicy peers")


class Ingress(Model):
    enabled: bool
    class_name: str | None
    annotations: Labels


class LabelSelector(Model):
    """A Kubernetes label selector."""

    match_labels: Labels = Field(default_factory=dict)
    match_expressions: list[dict[str, Any]] = Field(default_factory=list)


class IngressControllerPeers(Model):
    namespace_selector: LabelSelector
    pod_selector: LabelSelector


class MonitoringPeers(Model):
    namespace_selector: LabelSelector


class AdminPeers(Model):
    from_: list[dict[str, Any]] = Field(alias="from", description="NetworkPolicy peers of the admin API")


class NetworkPolicy(Model):
    enabled: bool
    ingress_controller: IngressControllerPeers
    monitoring: MonitoringPeers
    admin: AdminPeers
    provider_ports: list[Port]
    dns_ports: list[Port]
    otlp_ports: list[Port]


class ServiceAccount(Model):
    annotations: Labels


class Rbac(Model):
    create: bool


class _ChartOwn(Model):
    """The values that are the chart's, or shaped for it, not copied from the environment."""

    global_: dict[str, Any] = Field(default_factory=dict, alias="global", description="set by a parent chart")
    environment: str = Field(min_length=1, description="the environment's name")
    namespace: str = Field("", pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", max_length=63)
    domain: str = Field(min_length=1)
    image_pull_secrets: list[str]
    rollout: Rollout
    pod_disruption_budget: PodDisruptionBudget
    secrets: ChartSecrets = ChartSecrets()
    api_keys: ApiKeys
    admin_keys: ApiKeys
    external_secrets: ChartExternalSecrets
    redis: Redis
    ingress: Ingress
    network_policy: NetworkPolicy
    service_account: ServiceAccount
    rbac: Rbac
    pod_security_context: dict[str, Any] = Field(description="a PodSecurityContext")
    security_context: dict[str, Any] = Field(description="a container SecurityContext")
    monitoring: Monitoring
    # the service configuration's observability section (the environment's alerts go to monitoring)
    observability: Observability = Observability()


# What `qlensctl render` writes as the environment has it: declared by the environment's models
# (the service configuration among them: ConfigMap qlens-config), taken from there, not repeated.
FROM_ENVIRONMENT = ("image", "previous_version", "replicas", "resources", "service_resources",
                    "autoscaling", "tls", "providers", "models", "routing", "cache", "cost_controls", "auth",
                    "usage", "admin", "gateway", "ports")
_FIELDS = Environment.model_fields

ChartValues: type[Model] = create_model(  # type: ignore[call-overload]
    "ChartValues",
    __base__=_ChartOwn,
    __doc__="Every value the chart reads (charts/qlens/values.yaml documents each one).",
    **{name: (_FIELDS[name].annotation, _FIELDS[name]) for name in FROM_ENVIRONMENT},
)


# --- the JSON Schema ----------------------------------------------------------------------------


def values_schema() -> dict[str, Any]:
    """ChartValues as a self-contained draft-07 JSON Schema."""
    raw = ChartValues.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    # services/common cannot know the providers: the registry names the allowed ones
    defs["Deployment"]["properties"]["provider"] = {
        "type": "string", "enum": list(PROVIDERS), "description": "a provider of the registry"}
    body = _inline(raw, defs)
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "qlens chart values",
        "description": "Generated by `nox -s schema` (qlensctl/values_schema.py) from the pydantic "
        "models: do not edit. values.yaml documents what each value does.",
        **body,
    }


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Replace every `$ref` by its definition and drop pydantic's titles (no model recurses)."""
    if isinstance(node, list):
        return [_inline(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[1]]
        return _inline({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title":
            continue
        if key == "properties":  # property names are data, not keywords: keep every one
            out[key] = {name: _inline(v, defs) for name, v in value.items()}
        elif key == "default":
            if not isinstance(value, dict | list):  # scalars only: values.yaml shows the rest
                out[key] = value
        else:
            out[key] = _inline(value, defs)
    return out


def schema_text() -> str:
    return json.dumps(values_schema(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = schema_text()
    if args == ["--check"]:
        if SCHEMA_PATH.read_text() != text:
            print(f"{SCHEMA_PATH} is out of date: run `nox -s schema`", file=sys.stderr)
            return 1
        return 0
    if args:
        print("usage: python -m qlensctl.values_schema [--check]", file=sys.stderr)
        return 2
    SCHEMA_PATH.write_text(text)
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
