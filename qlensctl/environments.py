"""Environments as data: `environments/<name>.yaml` loaded into typed, validated models.

`Environment` extends the services' `ServiceConfig` (the sections the gateway, router and cache
read) with what only deployment needs: namespace, domain, kube context, replicas, image, TLS,
secrets, autoscaling. Unknown keys are errors here, so a typo fails before anything deploys.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from qlensctl.errors import ConfigError
from services.common.config import Model, Observability, ServiceConfig
from services.router.providers.registry import Providers, unknown_provider

ENV_DIR_VAR = "QLENS_ENVIRONMENTS"


class Image(Model):
    repository: str = Field("ghcr.io/quantumlayer", min_length=1)
    tag: str | None = "latest"
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"


class Replicas(Model):
    gateway: int = Field(1, ge=0, le=100)
    router: int = Field(1, ge=0, le=100)
    cache: int = Field(1, ge=0, le=100)


class Autoscaling(Model):
    enabled: bool = False
    min_replicas: int = Field(2, ge=1)
    max_replicas: int = Field(10, ge=1)
    target_cpu_utilization_percentage: int = Field(70, ge=1, le=100, alias="targetCPUUtilizationPercentage")


class ResourceAmounts(Model):
    cpu: str = "1000m"
    memory: str = "1Gi"


class Resources(Model):
    requests: ResourceAmounts = ResourceAmounts(cpu="1000m", memory="1Gi")
    limits: ResourceAmounts = ResourceAmounts(cpu="2000m", memory="2Gi")


class PreviousVersion(Model):
    """Keep the replaced version as qlens-<service>-previous at 0 replicas (emergency rollback)."""

    enabled: bool = False


class SmokeTest(Model):
    """What `qlensctl smoke-test ENV` asks (`--model` overrides it)."""

    # the model of the chat completion and cache checks; None: `echo` when served, else the first
    model: str | None = None


class Tls(Model):
    enabled: bool = False
    secret_name: str = Field("qlens-tls", min_length=1)


class Secrets(Model):
    name: str = Field("qlens-secrets", min_length=1)
    backend: Literal["kubernetes", "keyVault"] = "kubernetes"


class ExternalSecrets(Model):
    enabled: bool = False
    backend: Literal["azurekv"] = "azurekv"
    refresh_interval: int = Field(3600, ge=60)
    vault_url: str | None = None


AlertName = Literal[
    "QLensServiceDown", "QLensInstanceDown", "QLensHighErrorRate", "QLensDailySpendNearLimit",
    "QLensDailyLimitReached", "QLensSpendRateHigh", "QLensCircuitOpen", "QLensProviderErrorRatio",
    "QLensGatewayLatencyHigh", "QLensGatewayOverheadHigh", "QLensTimeToFirstTokenHigh",
]
PROM_DURATION = r"^[0-9]+(ms|s|m|h)$"


class Alerts(Model):
    """The PrometheusRule's thresholds and windows (chart values monitoring.alerts)."""

    error_rate: float = Field(0.05, gt=0, le=1, description="share of gateway requests answered 5xx")
    cost_warning_ratio: float = Field(0.8, gt=0, le=1, description="share of the total daily limit spent")
    provider_error_ratio: float = Field(0.1, gt=0, le=1, description="share of a deployment's calls failing")
    latency_p95_seconds: float = Field(10, gt=0)
    overhead_p95_seconds: float = Field(0.05, gt=0)
    ttft_p95_seconds: float = Field(10, gt=0)
    rate_window: str = Field("5m", pattern=PROM_DURATION)
    # per alert, how long its condition must hold; unnamed alerts keep the chart's default
    for_: dict[AlertName, str] = Field(default_factory=dict, alias="for")

    @field_validator("for_")
    @classmethod
    def _durations(cls, value: dict[str, str]) -> dict[str, str]:
        for name, duration in value.items():
            if not re.match(PROM_DURATION, duration):
                raise ValueError(f"for.{name}: {duration!r} is not a Prometheus duration like 30s or 5m")
        return value


class EnvObservability(Observability):
    """The services' observability section plus the alerts (deployment only: the services ignore it)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    alerts: Alerts = Alerts()


class Environment(ServiceConfig):
    """One deployment target. The file's name and its `name:` must agree."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    namespace: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    domain: str
    kube_context: str | None = None
    monitoring: Literal["basic", "full"] = "basic"
    observability: EnvObservability = EnvObservability()
    image: Image = Image()
    replicas: Replicas = Replicas()
    autoscaling: Autoscaling = Autoscaling()
    resources: Resources = Resources()
    service_resources: dict[Literal["gateway", "router", "cache"], Resources] = Field(default_factory=dict)
    previous_version: PreviousVersion = PreviousVersion()
    smoke_test: SmokeTest = SmokeTest()
    tls: Tls = Tls()
    secrets: Secrets = Secrets()
    external_secrets: ExternalSecrets = ExternalSecrets()
    # the services keep providers as plain data; here each section is validated by its provider's
    # own config model, from the provider registry
    providers: Providers = Providers()  # type: ignore[assignment]

    @model_validator(mode="after")
    def _providers_exist(self) -> Environment:
        for name, model in self.models.items():
            for i, d in enumerate(model.deployments):
                if error := unknown_provider(d.provider):
                    raise ValueError(f"models.{name}.deployments[{i}].provider: {error}")
        return self

    @property
    def is_production(self) -> bool:
        return self.name == "production"

    def public_dict(self) -> dict[str, Any]:
        """The environment as its file spells it (camelCase), for `env show` and rendering."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=False)


def environments_dir() -> Path:
    """`$QLENS_ENVIRONMENTS`, else ./environments, else the one next to this package (a checkout)."""
    if os.environ.get(ENV_DIR_VAR):
        return Path(os.environ[ENV_DIR_VAR])
    cwd = Path.cwd() / "environments"
    if cwd.is_dir():
        return cwd
    return Path(__file__).resolve().parent.parent / "environments"


def environment_names(directory: Path | None = None) -> list[str]:
    directory = directory or environments_dir()
    return sorted(p.stem for p in directory.glob("*.yaml"))


def environment_path(name: str, directory: Path | None = None) -> Path:
    directory = directory or environments_dir()
    path = directory / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(environment_names(directory)) or "none"
        raise ConfigError(
            f"unknown environment {name!r}: no {path}",
            f"use one of: {known} (or set {ENV_DIR_VAR} to the folder holding your environment files)",
        )
    return path


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _describe(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    if kind in ("float_type", "float_parsing", "int_type", "int_parsing"):
        return "must be a number"
    if kind in ("bool_type", "bool_parsing"):
        return "must be true or false"
    if kind == "string_type":
        return "must be a string"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "must be a mapping"
    if kind == "list_type":
        return "must be a list"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known setting (check the spelling)"
    if kind == "literal_error":
        return err["msg"].replace("Input should be", "must be")
    return err["msg"].replace("Input should", "must").replace("Value error, ", "")


def parse_environment(data: Any, source: str) -> Environment:
    """Validate already-loaded YAML; errors name `source` and the key path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a YAML mapping of settings", "see environments/staging.yaml")
    try:
        return Environment.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            where = _key_path(loc)
            lines.append(f"{source}: {where + ': ' if where else ''}{_describe(err)}")
        raise ConfigError("\n".join(lines), f"fix {source} and run the command again") from None


def load_environment(name_or_path: str, directory: Path | None = None) -> Environment:
    """Load by name (`staging`) or by path (`./my-env.yaml`)."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ConfigError(f"{name_or_path}: no such environment file",
                              "check the path, or pass an environment name (`qlensctl env list`)")
        path = candidate
    else:
        path = environment_path(name_or_path, directory)
    source = _display(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{source}: {problem}{where}", f"fix the YAML syntax in {source}") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}",
                          "check the file exists and is readable") from None
    env = parse_environment(data, source)
    if candidate.suffix not in (".yaml", ".yml") and env.name != path.stem:
        raise ConfigError(
            f"{source}: name: is {env.name!r} but the file is {path.name}",
            f"set name: {path.stem} in {source}",
        )
    return env


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
