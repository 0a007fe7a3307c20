"""The provider registry: every provider QLens can route to, one line each.

Adding a provider is its module (adapter, config model and `PROVIDER` declaration, see
`spec.ProviderSpec`) plus its line in `_MODULES`; everything else iterates `PROVIDERS`.

`Providers` is the `providers:` section of an environment, assembled from the declared config
models: qlensctl validates environments with it (and values.schema.json is generated from it),
the router validates its config with it. The gateway and cache never look at providers, so
`services/common` keeps that section as plain data and stays free of this package.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field, create_model
from pydantic.alias_generators import to_snake

from services.common.config import Model
from services.router.providers import azure_openai, bedrock, echo
from services.router.providers.spec import Credential, ProviderConfig, ProviderSpec

_MODULES = (azure_openai, bedrock, echo)

PROVIDERS: dict[str, ProviderSpec] = {m.PROVIDER.name: m.PROVIDER for m in _MODULES}


def _field(name: str) -> str:
    return to_snake(name)


if TYPE_CHECKING:  # for mypy: a model class (its fields are known only at run time)

    class Providers(Model):
        pass

else:
    Providers = create_model(
        "Providers",
        __base__=Model,
        __doc__="One section per provider in the registry (services/router/providers/registry.py).",
        **{_field(n): (s.config, Field(s.config(), alias=n)) for n, s in PROVIDERS.items()},
    )


def parse(providers: Mapping[str, Any] | Model) -> Model:
    """The `providers:` section validated against the registry (an unknown provider is an error)."""
    return providers if isinstance(providers, Providers) else Providers.model_validate(providers)


def sections(providers: Mapping[str, Any] | Model) -> Iterator[tuple[ProviderSpec, ProviderConfig]]:
    """Each registered provider with its (validated) section, in registry order."""
    parsed = parse(providers)
    for name, spec in PROVIDERS.items():
        yield spec, getattr(parsed, _field(name))


def credentials(providers: Mapping[str, Any] | Model, *, auto: bool) -> list[Credential]:
    """The credentials of the providers that are on: `enabled: true`, and also `auto` if `auto`."""
    wanted = (True, "auto") if auto else (True,)
    return [c for spec, section in sections(providers) if section.enabled in wanted for c in spec.credentials]


def unknown_provider(name: str) -> str | None:
    """An error message when `name` is not a registered provider, else None."""
    if name in PROVIDERS:
        return None
    *others, last = (repr(n) for n in PROVIDERS)
    return f"must be {', '.join(others)} or {last}" if others else f"must be {last}"
