"""Provider adapters, and which of them are on for this process.

`enabled: true` / `false` say it outright; `enabled: auto` (the local environment) turns a
provider on when its credentials are in the process environment: `AZURE_OPENAI_ENDPOINT` for
Azure OpenAI, `AWS_ACCESS_KEY_ID` or `AWS_PROFILE` for Bedrock. Azure needs an endpoint even when
enabled outright; without one it stays off and says why (in /health/ready), instead of failing
every call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.common.config import Providers
from services.router.providers.base import Provider


@dataclass
class ProviderSet:
    on: dict[str, Provider] = field(default_factory=dict)
    off: dict[str, str] = field(default_factory=dict)  # provider -> why it is off

    async def aclose(self) -> None:
        for provider in self.on.values():
            await provider.aclose()


def _auto(enabled: bool | str, present: bool) -> bool:
    return present if enabled == "auto" else bool(enabled)


def build_providers(config: Providers, environ: Mapping[str, str] | None = None) -> ProviderSet:
    env = os.environ if environ is None else environ
    out = ProviderSet()

    az = config.azure_open_ai
    endpoint = env.get("AZURE_OPENAI_ENDPOINT") or None
    if not _auto(az.enabled, endpoint is not None):
        out.off["azureOpenAI"] = (
            "disabled" if az.enabled is False else "auto: AZURE_OPENAI_ENDPOINT is not set"
        )
    elif endpoint is None:
        out.off["azureOpenAI"] = "AZURE_OPENAI_ENDPOINT is not set"
    else:
        from services.router.providers.azure_openai import AzureOpenAIProvider

        out.on["azureOpenAI"] = AzureOpenAIProvider(az, endpoint, env.get("AZURE_OPENAI_API_KEY") or None)

    bedrock = config.aws_bedrock
    if _auto(bedrock.enabled, bool(env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_PROFILE"))):
        from services.router.providers.bedrock import BedrockProvider

        out.on["awsBedrock"] = BedrockProvider(bedrock)
    else:
        out.off["awsBedrock"] = (
            "disabled" if bedrock.enabled is False else "auto: AWS_ACCESS_KEY_ID / AWS_PROFILE are not set"
        )

    if config.echo.enabled:
        from services.router.providers.echo import EchoProvider

        out.on["echo"] = EchoProvider(config.echo)
    else:
        out.off["echo"] = "disabled"
    return out
