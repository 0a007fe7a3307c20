"""Where `qlensctl keys` keeps API keys: Secret `qlens-api-keys` (a cluster) or a keys file (local).

The format is services/common/apikeys.py's: only SHA-256 digests of keys, each mapped to a tenant,
a user and a creation time. The gateway mounts the Secret's `keys.json` (or reads
QLENS_API_KEYS_FILE locally) and re-reads it when it changes, so create and revoke take effect
without a redeploy.

Both stores update with optimistic concurrency (the Secret's resourceVersion; for the file an
atomic rename under a lock file), so two operators adding keys at once lose neither.
"""

from __future__ import annotations

import base64
import fcntl
import os
import re
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from qlensctl.errors import ClusterError, ConfigError, OperationError
from qlensctl.kube import is_transport_error
from qlensctl.secrets import MANAGED_BY
from services.common.apikeys import (
    NAME_RE,
    KeyEntry,
    dump_keys,
    fingerprint,
    generate_key,
    hash_key,
    parse_keys,
)

SECRET_NAME = "qlens-api-keys"
SECRET_KEY = "keys.json"
MIN_FINGERPRINT = 8
_CONFLICT_RETRIES = 5

Keys = dict[str, KeyEntry]


class KeyStore(Protocol):
    """Read-modify-write of the whole key table, atomically."""

    where: str

    def read(self) -> Keys: ...

    def update(self, change: Callable[[Keys], Keys]) -> Keys: ...


@dataclass(frozen=True)
class KeyInfo:
    """A key as listings show it: never the key, only a short fingerprint of its hash."""

    fingerprint: str
    tenant: str
    user: str
    created: str

    def as_dict(self) -> dict[str, str]:
        return {"fingerprint": self.fingerprint, "tenant": self.tenant, "user": self.user,
                "created": self.created}


def _info(digest: str, entry: KeyEntry) -> KeyInfo:
    return KeyInfo(fingerprint(digest), entry.tenant, entry.user, entry.created)


def _parse(text: str, where: str) -> Keys:
    try:
        return parse_keys(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{where}: not a QLens API keys table ({exc})",
                          "fix or remove it; the format is in services/common/apikeys.py") from None


# -- local file ----------------------------------------------------------------------------------


class FileKeyStore:
    """The keys file a local gateway reads (QLENS_API_KEYS_FILE)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.where = str(self.path)

    def read(self) -> Keys:
        try:
            return _parse(self.path.read_text(), self.where)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"{self.where}: cannot read: {exc.strerror}",
                              "check the path and permissions") from None

    @contextmanager
    def _locked(self) -> Any:
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"{self.where}: cannot write here: {exc.strerror}",
                              "pick another --file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def update(self, change: Callable[[Keys], Keys]) -> Keys:
        with self._locked():
            keys = change(self.read())
            # write a sibling then rename: the gateway never reads half a file
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write(dump_keys(keys))
                os.chmod(tmp, 0o600)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return keys


# -- Kubernetes Secret ---------------------------------------------------------------------------


class SecretKeyStore:
    """Secret `qlens-api-keys`, key `keys.json`, in the environment's namespace."""

    def __init__(self, api_client: Any, namespace: str, name: str = SECRET_NAME) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.name = name
        self.where = f"Secret {namespace}/{name}"

    def _core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api_client)

    def _fetch(self) -> tuple[Any, Keys]:
        from kubernetes.client.rest import ApiException

        try:
            secret = self._core().read_namespaced_secret(self.name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None, {}
            raise _cluster_error(exc, f"reading {self.where}") from None
        except Exception as exc:
            raise _unreachable(exc, self.where) from None
        raw = (secret.data or {}).get(SECRET_KEY)
        text = base64.b64decode(raw).decode() if raw else ""
        return secret, _parse(text, f"{self.where} ({SECRET_KEY})")

    def read(self) -> Keys:
        return self._fetch()[1]

    def update(self, change: Callable[[Keys], Keys]) -> Keys:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        for _ in range(_CONFLICT_RETRIES):
            secret, keys = self._fetch()
            keys = change(keys)
            data = {SECRET_KEY: base64.b64encode(dump_keys(keys).encode()).decode()}
            try:
                if secret is None:
                    body = client.V1Secret(
                        metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace,
                                                     labels=dict(MANAGED_BY)),
                        type="Opaque", data=data)
                    self._core().create_namespaced_secret(self.namespace, body)
                else:
                    secret.data = {**(secret.data or {}), **data}  # resourceVersion kept: a race is a 409
                    self._core().replace_namespaced_secret(self.name, self.namespace, secret)
                return keys
            except ApiException as exc:
                if exc.status in (409,):  # someone else changed it first: read again, apply again
                    continue
                if exc.status == 404:
                    raise ClusterError(f"namespace {self.namespace} does not exist",
                                       "deploy the environment first (`qlensctl deploy ENV`)") from None
                raise _cluster_error(exc, f"writing {self.where}") from None
            except Exception as exc:
                raise _unreachable(exc, self.where) from None
        raise OperationError(f"{self.where} kept changing under us ({_CONFLICT_RETRIES} tries)", "try again")


def _cluster_error(exc: Any, what: str) -> ClusterError:
    hint = "check your kube context and permissions on Secrets in this namespace"
    return ClusterError(f"{what} failed: HTTP {exc.status} {exc.reason}", hint)


def _unreachable(exc: Exception, where: str) -> Exception:
    """A connection problem as a ClusterError; anything else (a bug) as it is."""
    if is_transport_error(exc):
        return ClusterError(f"cannot reach the cluster for {where} ({type(exc).__name__})",
                            "check your kubeconfig and kube context")
    return exc


# -- operations ----------------------------------------------------------------------------------


def check_name(kind: str, value: str) -> str:
    if not NAME_RE.match(value or ""):
        raise ConfigError(f"--{kind} {value!r} is not a valid {kind} name",
                          "use 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
    return value


def create_key(store: KeyStore, tenant: str, user: str, *,
               now: datetime | None = None) -> tuple[str, KeyInfo]:
    """Make a key for tenant/user; store only its hash. Returns (the key, to show once; its info)."""
    check_name("tenant", tenant)
    check_name("user", user)
    key = generate_key()
    digest = hash_key(key)
    created = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    entry = KeyEntry(tenant=tenant, user=user, created=created)

    def add(keys: Keys) -> Keys:
        return {**keys, digest: entry}

    store.update(add)
    return key, _info(digest, entry)


def list_keys(store: KeyStore, tenant: str | None = None, user: str | None = None) -> list[KeyInfo]:
    rows = [_info(d, e) for d, e in store.read().items()
            if (tenant is None or e.tenant == tenant) and (user is None or e.user == user)]
    return sorted(rows, key=lambda r: (r.tenant, r.user, r.created, r.fingerprint))


def revoke_keys(store: KeyStore, *, fingerprint_prefix: str | None = None, tenant: str | None = None,
                user: str | None = None) -> list[KeyInfo]:
    """Remove keys by fingerprint (a unique prefix of the hash) or by tenant (and user)."""
    if fingerprint_prefix:
        fp = fingerprint_prefix.strip().lower()
        if not re.fullmatch(rf"[0-9a-f]{{{MIN_FINGERPRINT},64}}", fp):
            raise ConfigError(f"--fingerprint {fingerprint_prefix!r} is not a key fingerprint",
                              f"pass at least {MIN_FINGERPRINT} hex digits, as `keys list` shows them")
    elif tenant:
        check_name("tenant", tenant)
        if user:
            check_name("user", user)
    else:
        raise ConfigError("say which keys to revoke", "pass --fingerprint FP, or --tenant T [--user U]")

    removed: list[KeyInfo] = []

    def drop(keys: Keys) -> Keys:
        removed.clear()
        if fingerprint_prefix:
            matches = [d for d in keys if d.startswith(fp)]
            if len(matches) > 1:
                raise ConfigError(f"fingerprint {fp} matches {len(matches)} keys", "pass more hex digits")
        else:
            matches = [d for d, e in keys.items() if e.tenant == tenant and (not user or e.user == user)]
        if not matches:
            who = f"fingerprint {fp}" if fingerprint_prefix else f"tenant {tenant}"
            if user and not fingerprint_prefix:
                who += f" user {user}"
            raise ConfigError(f"no API key matches {who}; nothing was revoked",
                              "see `qlensctl keys list ENV`")
        removed.extend(_info(d, keys[d]) for d in matches)
        return {d: e for d, e in keys.items() if d not in matches}

    store.update(drop)
    return removed
