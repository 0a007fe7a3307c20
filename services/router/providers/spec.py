"""What a provider declares about itself: the one shape every registry entry has.

A provider module ends with `PROVIDER = ProviderSpec(...)`: its environment key, its config model,
its adapter factory, its target resolver and its credentials. The router, the catalog,
`qlensctl secrets sync`, the rendered Helm values (and through them the chart's container env,
staging Secret and ExternalSecret) read these declarations; none of them names a provider.

This module and the provider modules' top level import no SDK (openai, boto3, azure...): qlensctl
reads the declarations too, and its start-up must stay light. Factories import their SDK when
called, in the router.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from services.common.config import Model

if TYPE_CHECKING:
    from services.router.providers.base import Provider

# "auto": on when the provider's credentials are in the process environment (local use)
Enabled = bool | Literal["auto"]


class ProviderConfig(Model):
    """Base of every provider's section under `providers:` in an environment."""

    enabled: Enabled = False


@dataclass(frozen=True)
class Credential:
    """One secret a provider reads, and the three names it goes by."""

    env_var: str  # in the router's environment, and in the operator's shell for `secrets sync`
    secret_key: str  # key in Secret `secrets.name` (qlens-secrets)
    vault_name: str = ""  # secret name in Azure Key Vault; "" = the same as secret_key

    @property
    def vault_secret(self) -> str:
        return self.vault_name or self.secret_key


def same_target(config: Any, target: str) -> str:
    """The default target resolver: a deployment's target is the upstream name itself."""
    return target


@dataclass(frozen=True)
class ProviderSpec:
    """A provider, declared once (see the README's "Adding a provider")."""

    name: str  # key under `providers:`, and the provider half of a deployment label
    config: type[ProviderConfig]
    # the adapter factory: (its validated section, the process environment) -> a Provider;
    # imports its SDK inside, never at module level
    create: Callable[[Any, Mapping[str, str]], Provider]
    credentials: tuple[Credential, ...] = ()
    # `enabled: auto` turns the provider on when any of these variables is set
    detect: tuple[str, ...] = ()
    # without these variables the provider stays off even when enabled (and says why)
    requires: tuple[str, ...] = ()
    # deployment target -> what the adapter is called with, through the provider's section
    resolve_target: Callable[[Any, str], str] = same_target
