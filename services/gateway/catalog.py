"""What the gateway needs from the model catalog: which models exist and what they may cost.

The router owns routing; the gateway reads the same environment only to answer 404 before
reserving budget, and to price requests. A request may be served by a fallback model, so the
reservation uses the highest price anywhere on the model's fallback chain: the reservation is a
ceiling, and settling charges the price of the model that actually served (`x-qlens-model`).
"""

from __future__ import annotations

from services.common.config import CatalogModel, Pricing, ServiceConfig


class Catalog:
    def __init__(self, config: ServiceConfig) -> None:
        self._models = config.models
        self._pricing = {name: m.pricing for name, m in config.models.items()}
        self._ceiling = {name: self._chain_ceiling(config, name) for name in config.models}

    def __contains__(self, model: str) -> bool:
        return model in self._pricing

    def names(self) -> list[str]:
        return list(self._pricing)

    def model(self, model: str) -> CatalogModel:
        return self._models[model]

    def pricing(self, model: str) -> Pricing:
        return self._pricing.get(model) or Pricing()

    def reservation_pricing(self, model: str) -> Pricing:
        return self._ceiling.get(model) or Pricing()

    @staticmethod
    def _chain_ceiling(config: ServiceConfig, model: str) -> Pricing:
        seen: set[str] = set()
        todo = [model]
        top_in = top_out = 0.0
        while todo:
            name = todo.pop()
            if name in seen or name not in config.models:
                continue
            seen.add(name)
            entry = config.models[name]
            top_in = max(top_in, entry.pricing.input)
            top_out = max(top_out, entry.pricing.output)
            todo.extend(entry.fallbacks + entry.context_window_fallbacks + entry.content_policy_fallbacks)
        return Pricing(input=top_in, output=top_out)
