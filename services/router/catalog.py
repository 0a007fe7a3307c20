"""The model catalog: public model names -> deployments, with their live routing state.

Built once from `ServiceConfig.models` and the providers that are on. A deployment is identified
by its label `<provider>/<target>` (e.g. `azureOpenAI/gpt-4`); when two models list the same
deployment they share its circuit breaker and load figures, because it is one upstream.

A deployment's target may name an entry of its provider's section instead of the raw upstream
name; each provider's own resolver (its registry entry) says how: e.g. an Azure key of
`providers.azureOpenAI.deployments`, or a Bedrock `providers.awsBedrock.models[].id` (so
`claude-3-sonnet` calls `anthropic.claude-3-sonnet-20240229-v1:0`). A deployment naming a provider
that is not in the registry is a configuration error, raised here.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.common.config import CatalogModel, Deployment, ServiceConfig
from services.common.metrics import CIRCUIT_STATE, PROVIDER_UP
from services.router.circuit import CircuitBreaker, State
from services.router.providers import ProviderSet
from services.router.providers.base import Provider
from services.router.providers.registry import unknown_provider
from services.router.strategies import Strategy, make_strategy, update_ewma


@dataclass(eq=False)
class DeploymentState:
    """One upstream deployment: how to call it and how it has been doing."""

    label: str
    provider_name: str
    target: str  # what the provider is called with (resolved through the provider section)
    provider: Provider | None  # None when the provider is off
    off_reason: str | None
    breaker: CircuitBreaker
    in_flight: int = 0
    ewma: float | None = None  # seconds, of successful calls (time to first chunk for streams)
    cooldown_until: float = 0.0  # clock time before which it is not called (the provider's Retry-After)
    last_ok: bool | None = None  # the last call's outcome (None: no call yet), for qlens_provider_up

    @property
    def up(self) -> bool:
        """Servable as far as the router knows: provider on, circuit closed, last call not failed."""
        return self.provider is not None and self.breaker.state is State.CLOSED and self.last_ok is not False

    def observe_latency(self, seconds: float) -> None:
        self.ewma = update_ewma(self.ewma, seconds)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.breaker.state.label, "enabled": self.provider is not None}
        if self.off_reason:
            out["reason"] = self.off_reason
        if self.breaker.consecutive_failures:
            out["consecutiveFailures"] = self.breaker.consecutive_failures
        if self.in_flight:
            out["inFlight"] = self.in_flight
        return out


@dataclass(eq=False)
class Member:
    """A deployment as one model sees it: its position and weight there (what strategies read)."""

    index: int
    weight: float
    deployment: DeploymentState

    @property
    def in_flight(self) -> int:
        return self.deployment.in_flight

    @property
    def ewma(self) -> float | None:
        return self.deployment.ewma


@dataclass(eq=False)
class ModelRoute:
    name: str
    config: CatalogModel
    members: list[Member]
    strategy: Strategy
    fallbacks: list[str] = field(default_factory=list)

    @property
    def usable(self) -> list[Member]:
        """Members whose provider is on (their circuits may still be open)."""
        return [m for m in self.members if m.deployment.provider is not None]


@dataclass
class Catalog:
    models: dict[str, ModelRoute]
    deployments: dict[str, DeploymentState]

    def chain(self, model: str) -> list[ModelRoute]:
        """The model, then its fallbacks in the configured order."""
        route = self.models[model]
        return [route] + [self.models[f] for f in route.fallbacks if f in self.models and f != model]

    def deterministic(self, model: str) -> bool:
        """Every deployment that could answer for `model` gives the same answer to the same request."""
        usable = [m.deployment.provider for r in self.chain(model) for m in r.usable]
        return bool(usable) and all(p is not None and p.deterministic for p in usable)

    def health(self) -> dict[str, Any]:
        return {label: d.describe() for label, d in sorted(self.deployments.items())}

    def refresh_gauges(self) -> None:
        """Export each circuit's current state (an open circuit turns half-open by time alone)."""
        for label, d in self.deployments.items():
            CIRCUIT_STATE.labels(label).set(int(d.breaker.state))
            PROVIDER_UP.labels(d.provider_name, label).set(1 if d.up else 0)


def build_catalog(
    config: ServiceConfig,
    providers: ProviderSet,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> Catalog:
    cb = config.routing.circuit_breaker
    rng = rng or random.Random()
    deployments: dict[str, DeploymentState] = {}
    models: dict[str, ModelRoute] = {}

    def state_for(d: Deployment) -> DeploymentState:
        label = d.label
        if label not in deployments:
            gauge = CIRCUIT_STATE.labels(label)
            gauge.set(int(State.CLOSED))
            deployments[label] = DeploymentState(
                label=label,
                provider_name=d.provider,
                target=providers.resolve_target(d.provider, d.target),
                provider=providers.on.get(d.provider),
                off_reason=providers.off.get(d.provider),
                breaker=CircuitBreaker(
                    cb.failure_threshold,
                    cb.cooldown_seconds,
                    clock=clock,
                    on_change=gauge.set,  # State is an IntEnum: its value is the metric's
                ),
            )
        return deployments[label]

    for name, model in config.models.items():
        for i, d in enumerate(model.deployments):
            if error := unknown_provider(d.provider):
                raise ValueError(f"models.{name}.deployments[{i}].provider: {error}")
        members = [Member(i, d.weight, state_for(d)) for i, d in enumerate(model.deployments)]
        strategy = make_strategy(model.strategy, len(members), random.Random(rng.random()))
        models[name] = ModelRoute(name, model, members, strategy, list(model.fallbacks))
    return Catalog(models, deployments)
