"""The service configuration: the part of an environment that the three services read.

An environment file (`environments/<name>.yaml`) is one YAML document in camelCase. The services
parse the whole file with `ServiceConfig` and ignore the deployment keys they do not need
(namespace, replicas, ...); `qlensctl` parses the same file with its stricter subclass
(`qlensctl.environments.Environment`). In a cluster the chart's ConfigMap carries the rendered
service sections as `config.yaml`; locally `qlensctl up` points the services at the environment
file itself. Either way the path arrives in `QLENS_CONFIG`.

Secrets never live here: provider keys, the Redis URL in production and API keys come from the
process environment (a mounted Secret), see `secret_env`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

CONFIG_ENV_VAR = "QLENS_CONFIG"


class Model(BaseModel):
    """Base for every config section: camelCase keys in YAML, snake_case in Python."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


# --- providers ---------------------------------------------------------------------------------


class Timeouts(Model):
    connect: float = Field(5.0, gt=0, description="seconds to open a connection")
    read: float = Field(60.0, gt=0, description="seconds between bytes of the answer")
    total: float = Field(120.0, gt=0, description="seconds for one provider call")


class Pool(Model):
    max_connections: int = Field(100, ge=1)
    max_keepalive: int = Field(20, ge=0)


# Each provider's section (its config model) is declared by its module in the router's provider
# registry (services/router/providers/registry.py). The gateway and cache never read it, so here it
# stays plain data; the router and qlensctl validate it against the registry.
ProviderSections = dict[str, dict[str, Any]]


# --- model catalog -----------------------------------------------------------------------------


class Deployment(Model):
    """One place a public model can be served from."""

    provider: str = Field(
        pattern=r"^[A-Za-z][A-Za-z0-9]*$", description="a provider of the registry, e.g. azureOpenAI")
    target: str = Field(description="what the provider calls it (Azure deployment, Bedrock model id...)")
    weight: float = Field(1.0, gt=0)

    @property
    def label(self) -> str:
        return f"{self.provider}/{self.target}"


class Pricing(Model):
    """USD per 1K tokens."""

    input: float = Field(0.0, ge=0)
    output: float = Field(0.0, ge=0)


class CatalogModel(Model):
    deployments: list[Deployment] = Field(min_length=1)
    strategy: Literal["round-robin", "weighted", "least-in-flight", "latency"] = "round-robin"
    fallbacks: list[str] = Field(default_factory=list)
    # fallbacks taken only for one kind of refusal (off unless listed): a prompt too long for this
    # model's context window, or the provider's content policy
    context_window_fallbacks: list[str] = Field(default_factory=list)
    content_policy_fallbacks: list[str] = Field(default_factory=list)
    pricing: Pricing = Pricing()
    display_name: str = ""
    kind: Literal["chat", "embedding"] = Field("chat", description="which API serves the model")
    # the output cap sent when the client sets none (and the ceiling of a client's own), and its
    # parameter name: reasoning models (o-series) reject `max_tokens`
    max_output_tokens: int | None = Field(None, ge=1)
    token_parameter: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"


class Retries(Model):
    max_attempts: int = Field(3, ge=1, le=10)
    backoff_base_ms: float = Field(50, ge=0)
    backoff_max_ms: float = Field(2000, ge=0)


class CircuitBreaker(Model):
    failure_threshold: int = Field(5, ge=1)
    cooldown_seconds: float = Field(30.0, gt=0)


class Routing(Model):
    deadline_seconds: float = Field(120.0, gt=0, description="whole request, retries and fallback included")
    stream_idle_seconds: float | None = Field(
        None, gt=0, description="a stream with no event for this long ends with an error")
    retries: Retries = Retries()
    circuit_breaker: CircuitBreaker = CircuitBreaker()


# --- cache, cost controls, auth, gateway ---------------------------------------------------------


class Cache(Model):
    enabled: bool = True
    backend: Literal["memory", "redis"] = "memory"
    ttl_seconds: int = Field(3600, ge=1)
    max_entries: int = Field(10000, ge=1)
    max_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    cache_streaming: bool = Field(True, description="cache completed streams and replay them as a stream")
    # how long a stored Responses API response (`store`, `previous_response_id`) is kept
    responses_ttl_seconds: int = Field(30 * 86400, ge=1, le=30 * 86400)


class DailyLimits(Model):
    total: float | None = Field(None, ge=0)
    per_tenant: float | None = Field(None, ge=0)
    per_user: float | None = Field(None, ge=0)


class ScopeLimits(Model):
    """One scope's limits; None = no limit. Budgets in USD per UTC day / month, rates per minute."""

    daily: float | None = Field(None, ge=0, description="USD per UTC day")
    monthly: float | None = Field(None, ge=0, description="USD per UTC month")
    rpm: int | None = Field(None, ge=0, description="requests per minute")
    tpm: int | None = Field(None, ge=0, description="tokens per minute (worst case reserved, then actual)")


class Limits(Model):
    """The environment's default limits per scope; runtime overrides come from the admin API."""

    total: ScopeLimits = ScopeLimits()
    per_tenant: ScopeLimits = ScopeLimits()
    per_user: ScopeLimits = ScopeLimits()
    per_key: ScopeLimits = ScopeLimits()


class CostControls(Model):
    enabled: bool = Field(True, description="budgets and rate limits; off = counted, never refused")
    # USD per day, reset at 00:00 UTC; None = no limit for that scope (the same as limits.X.daily)
    daily_limits: DailyLimits = DailyLimits()
    limits: Limits = Limits()
    store: Literal["memory", "redis"] = Field(
        "memory", description="where counters live; redis = shared by replicas")
    on_store_failure: Literal["failClosed", "failOpen"] = "failClosed"

    @model_validator(mode="after")
    def _one_daily_per_scope(self) -> CostControls:
        for scope in ("total", "per_tenant", "per_user"):
            old, new = getattr(self.daily_limits, scope), getattr(self.limits, scope).daily
            if old is not None and new is not None:
                raise ValueError(f"set the daily {to_camel(scope)} limit once: dailyLimits."
                                 f"{to_camel(scope)} or limits.{to_camel(scope)}.daily")
        return self


class Usage(Model):
    """The usage ledger: rollups per UTC day x tenant x user x model, for chargeback."""

    enabled: bool = True
    retention_days: int = Field(400, ge=1, le=3660)


class Admin(Model):
    """The admin API (/admin/v1) on the gateway: admin keys only (Secret qlens-admin-keys)."""

    enabled: bool = False
    keys_file: str | None = Field(None, description="JSON file of sha256(admin key) -> {name}")


class Auth(Model):
    required: bool = False
    keys_file: str | None = Field(None, description="JSON file of sha256(key) -> {tenant, user}")


class Gateway(Model):
    max_body_bytes: int = Field(1024 * 1024, ge=1024)


# --- observability ------------------------------------------------------------------------------


class Tracing(Model):
    """OpenTelemetry traces, exported over OTLP/HTTP from a background thread.

    The standard OTEL_* variables configure the exporter, sampler and resource as the SDK defines
    them (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_SAMPLER/_ARG, OTEL_SERVICE_NAME,
    OTEL_RESOURCE_ATTRIBUTES); setting OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT also turns tracing on,
    OTEL_SDK_DISABLED=true turns it off.
    """

    enabled: bool = False
    endpoint: str | None = Field(
        None, description="OTLP/HTTP collector base URL (http://collector:4318); "
                          "null = OTEL_EXPORTER_OTLP_ENDPOINT")
    sample_ratio: float = Field(1.0, ge=0, le=1, description="share of new traces kept (parent-based)")


class Observability(Model):
    # the environment file's observability section also holds the alert thresholds (qlensctl's
    # part, see qlensctl/environments.py): the services ignore what is not theirs
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    tracing: Tracing = Tracing()
    tenant_labels: list[str] = Field(
        default_factory=list, max_length=50,
        description="tenants that get their own label on the per-tenant token and cost metrics; "
                    "others are 'other'")


class ServicePorts(Model):
    gateway: int = Field(8080, ge=1, le=65535)
    router: int = Field(8081, ge=1, le=65535)
    cache: int = Field(8082, ge=1, le=65535)


class ServiceConfig(Model):
    """What the gateway, router and cache need to know about their environment."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    name: str
    providers: ProviderSections = Field(default_factory=dict)
    models: dict[str, CatalogModel] = Field(default_factory=dict)
    routing: Routing = Routing()
    cache: Cache = Cache()
    cost_controls: CostControls = CostControls()
    auth: Auth = Auth()
    usage: Usage = Usage()
    admin: Admin = Admin()
    gateway: Gateway = Gateway()
    ports: ServicePorts = ServicePorts()
    observability: Observability = Observability()

    @model_validator(mode="after")
    def _fallbacks_exist(self) -> ServiceConfig:
        for name, model in self.models.items():
            for field in ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks"):
                for fb in getattr(model, field):
                    if fb not in self.models:
                        raise ValueError(f"models.{name}.{to_camel(field)}: unknown model {fb!r}")
                    if self.models[fb].kind != model.kind:
                        raise ValueError(f"models.{name}.{to_camel(field)}: {fb!r} is an "
                                         f"{self.models[fb].kind} model, {name!r} a {model.kind} model")
        return self


def load_service_config(path: str | os.PathLike[str] | None = None) -> ServiceConfig:
    """Read the config named by `path` or `$QLENS_CONFIG`; a clear error if neither exists."""
    path = path or os.environ.get(CONFIG_ENV_VAR)
    if not path:
        raise RuntimeError(f"{CONFIG_ENV_VAR} is not set: point it at an environment file")
    data = yaml.safe_load(Path(path).read_text()) or {}
    return ServiceConfig.model_validate(data)


def secret_env(name: str, default: str | None = None) -> str | None:
    """A secret from the process environment (a mounted Secret in a cluster). Never logged."""
    value = os.environ.get(name)
    return value if value else default
