"""Provider adapters, and which of them are on for this process.

Every provider comes from the registry (`registry.PROVIDERS`, declared by each provider module).
`enabled: true` / `false` say it outright; `enabled: auto` (the local environment) turns a
provider on when one of its `detect` variables is in the process environment (for Azure OpenAI
`AZURE_OPENAI_ENDPOINT`, for Bedrock `AWS_ACCESS_KEY_ID` or `AWS_PROFILE`). A provider that
`requires` a variable (Azure: its endpoint) stays off without it even when enabled outright, and
says why (in /health/ready), instead of failing every call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.router.providers.base import Provider
from services.router.providers.spec import ProviderConfig, ProviderSpec


@dataclass
class ProviderSet:
    on: dict[str, Provider] = field(default_factory=dict)
    off: dict[str, str] = field(default_factory=dict)  # provider -> why it is off
    sections: dict[str, ProviderConfig] = field(default_factory=dict)  # provider -> its config

    def resolve_target(self, provider: str, target: str) -> str:
        """What the provider is called with for a deployment's `target` (its own resolver)."""
        from services.router.providers.registry import PROVIDERS

        section = self.sections.get(provider)
        return target if section is None else PROVIDERS[provider].resolve_target(section, target)

    async def aclose(self) -> None:
        for provider in self.on.values():
            await provider.aclose()


def _off_reason(spec: ProviderSpec, section: ProviderConfig, env: Mapping[str, str]) -> str | None:
    """Why the provider stays off in this environment, or None when it is on."""
    if section.enabled is False:
        return "disabled"
    if section.enabled == "auto" and not any(env.get(v) for v in spec.detect):
        return f"auto: {' / '.join(spec.detect)} {'is' if len(spec.detect) == 1 else 'are'} not set"
    missing = [v for v in spec.requires if not env.get(v)]
    if missing:
        return f"{' / '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set"
    return None


def build_providers(config: Mapping[str, Any] | Any, environ: Mapping[str, str] | None = None) -> ProviderSet:
    """The adapters of the `providers:` section (validated against the registry here)."""
    from services.router.providers.registry import sections

    env = os.environ if environ is None else environ
    out = ProviderSet()
    for spec, section in sections(config):
        out.sections[spec.name] = section
        reason = _off_reason(spec, section, env)
        if reason is None:
            out.on[spec.name] = spec.create(section, env)
        else:
            out.off[spec.name] = reason
    return out
