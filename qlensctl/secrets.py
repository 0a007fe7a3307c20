"""Provider secrets: read from the operator's shell, written to a Kubernetes Secret or Key Vault.

Every provider declares its credentials in the provider registry (services/router/providers/
registry.py): the environment variable each comes from, its key in Secret `qlens-secrets` and its
name in Azure Key Vault. Which secrets an environment needs follows from its configuration: each
provider that is `enabled: true` -> its credentials (e.g. Azure OpenAI -> endpoint and key); a
Redis cache or budget store -> the Redis URL (not a provider's: declared here).

Values never leave this module except into the Secret or the vault: results carry names only.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qlensctl.errors import ClusterError, ConfigError, OperationError, RefusedError, first_line
from qlensctl.kube import is_transport_error


@dataclass(frozen=True)
class SecretSpec:
    env_var: str
    key: str  # the key in Secret qlens-secrets
    needed_for: str  # a provider's name, or "redis"
    vault_name: str = ""  # the secret's name in Key Vault; "" = the same as key

    def name_in(self, backend: str) -> str:
        """The secret's name in the store `backend` (secrets.backend: kubernetes or keyVault)."""
        return (self.vault_name or self.key) if backend == "keyVault" else self.key


REDIS_URL = SecretSpec("QLENS_REDIS_URL", "redis-url", "redis")
MANAGED_BY = {"app.kubernetes.io/managed-by": "qlensctl", "app.kubernetes.io/part-of": "qlens"}


@dataclass
class SyncResult:
    """What a sync did, by name only: never a value."""

    target: str  # "Secret qlens-staging/qlens-secrets" or the vault URL
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    namespace_created: bool = False


def needed_secrets(environment: Any) -> list[SecretSpec]:
    """The secrets this environment's configuration uses, in registry order, Redis last.

    A provider that is `enabled: true` needs its credentials in a cluster; `auto` (local use)
    means "when present", so it needs none.
    """
    from services.router.providers.registry import sections

    specs = [SecretSpec(c.env_var, c.secret_key, spec.name, c.vault_name)
             for spec, section in sections(environment.providers) if section.enabled is True
             for c in spec.credentials]
    if "redis" in (environment.cache.backend, environment.cost_controls.store):
        specs.append(REDIS_URL)
    return specs


def collect_secrets(environment: Any, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """{name in the environment's secrets backend: value} from the environment variables; all
    missing ones named in one error."""
    environ = os.environ if environ is None else environ
    specs = needed_secrets(environment)
    missing = [s.env_var for s in specs if not environ.get(s.env_var, "").strip()]
    if missing:
        raise RefusedError(
            f"missing environment variables for {environment.name}: {', '.join(missing)}; "
            "nothing was changed",
            f"export {' '.join(m + '=...' for m in missing)} and run the command again",
        )
    backend = environment.secrets.backend
    return {s.name_in(backend): environ[s.env_var].strip() for s in specs}


# -- Kubernetes Secret ---------------------------------------------------------------------------


def _api_error(exc: Any, what: str) -> ClusterError:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None) or type(exc).__name__
    hint = "check your kube context and that you may write Secrets in this namespace"
    if status in (401, 403):
        hint = "your kube credentials may not write Secrets here: ask for the qlens operator role"
    detail = f"HTTP {status} {reason}" if status else reason
    return ClusterError(f"{what} failed: {detail}", hint)


def sync_kubernetes_secret(api_client: Any, namespace: str, values: Mapping[str, str],
                           name: str = "qlens-secrets", *, prune: bool = False) -> SyncResult:
    """Create or update Secret `name` so it holds `values`; creates the namespace if missing.

    Keys that are in the Secret but not in `values` are kept unless `prune` (an operator may have
    added one by hand).
    """
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(api_client)
    result = SyncResult(target=f"Secret {namespace}/{name}")
    try:
        try:
            core.read_namespace(namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
            result.namespace_created = True
        try:
            current = core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            current = None
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
        if current is None:
            body = client.V1Secret(
                metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=dict(MANAGED_BY)),
                type="Opaque", data=encoded)
            core.create_namespaced_secret(namespace, body)
            result.created = sorted(values)
            return result
        existing = dict(current.data or {})
        for key, value in encoded.items():
            if key not in existing:
                result.created.append(key)
            elif existing[key] != value:
                result.updated.append(key)
            else:
                result.unchanged.append(key)
        data = {**existing, **encoded}
        if prune:
            result.removed = sorted(k for k in existing if k not in encoded)
            data = encoded
        if result.created or result.updated or result.removed:
            current.data = data
            current.metadata.labels = {**(current.metadata.labels or {}), **MANAGED_BY}
            core.replace_namespaced_secret(name, namespace, current)
    except ApiException as exc:
        raise _api_error(exc, f"writing Secret {namespace}/{name}") from None
    except Exception as exc:
        if is_transport_error(exc):  # the cluster is unreachable
            raise ClusterError(f"cannot reach the cluster to write Secret {namespace}/{name} "
                               f"({type(exc).__name__})", "check your kubeconfig and kube context") from None
        raise
    return result


# -- Azure Key Vault -----------------------------------------------------------------------------


def vault_url_for(environment: Any, override: str | None = None) -> str:
    url = override or getattr(getattr(environment, "external_secrets", None), "vault_url", None)
    if not url:
        raise ConfigError(
            f"{environment.name} names no Key Vault (externalSecrets.vaultUrl)",
            f"set externalSecrets.vaultUrl in environments/{environment.name}.yaml or pass --vault-url",
        )
    if not url.startswith("https://"):
        raise ConfigError(f"Key Vault URL must start with https:// (got {url!r})",
                          "use the vault's URI, e.g. https://my-vault.vault.azure.net")
    return url.rstrip("/")


def push_key_vault(vault_url: str, values: Mapping[str, str], *, credential: Any = None,
                   progress: Callable[[str], None] | None = None, **client_kwargs: Any) -> SyncResult:
    """Set each secret in the vault unless it already holds that value (no needless versions).

    `credential` defaults to azure-identity's DefaultAzureCredential (environment, workload or
    managed identity, Azure CLI...). `client_kwargs` go to SecretClient (e.g. connection_verify).
    """
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
    )
    from azure.keyvault.secrets import SecretClient

    owned_credential = credential is None
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    result = SyncResult(target=vault_url)
    client = SecretClient(vault_url=vault_url, credential=credential, **client_kwargs)
    try:
        for name, value in values.items():
            if progress:
                progress(name)
            try:
                current = client.get_secret(name).value
            except ResourceNotFoundError:
                current = None
            if current == value:
                result.unchanged.append(name)
                continue
            client.set_secret(name, value, tags=dict(MANAGED_BY))
            (result.created if current is None else result.updated).append(name)
    except ClientAuthenticationError as exc:
        raise OperationError(
            f"Azure authentication for {vault_url} failed ({first_line(exc)})",
            "sign in (`az login`), or set AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET, "
            "or run with a managed identity",
        ) from None
    except ServiceRequestError as exc:
        raise OperationError(f"cannot reach Key Vault {vault_url} ({type(exc).__name__})",
                             "check the vault URL and your network") from None
    except HttpResponseError as exc:
        raise OperationError(f"Key Vault {vault_url} refused the request: HTTP {exc.status_code} "
                             f"{getattr(exc.error, 'code', '') or exc.reason}",
                             "check that your identity may get and set secrets in this vault") from None
    except ValueError as exc:  # e.g. the challenge resource does not match the vault's domain
        raise OperationError(f"Key Vault {vault_url}: {first_line(exc)}",
                             "check the vault URL (--vault-url or externalSecrets.vaultUrl): "
                             "https://NAME.vault.azure.net") from None
    finally:
        client.close()
        if owned_credential:
            credential.close()
    return result
