"""Who is calling: `Authorization: Bearer <key>` -> (tenant, user, the key's own limits and models).

Keys are looked up by their SHA-256 digest, first in the runtime key records the admin API keeps
in the budget store (services/gateway/tenancy.py; a record there wins, so a file key can be
revoked or limited at runtime too), then in the keys file (format: services/common/apikeys.py).
A revoked or expired key answers 401 whether auth is required or not.
The file is re-read when it changes, checked at most once a second, so `qlensctl keys revoke`
takes effect without a restart; a file that cannot be parsed keeps the last good key set (and is
logged) rather than locking everyone out. A key is never logged, echoed or kept in an error.

With `auth.required: false` (local, staging) a missing or unknown key is not an error: the caller
is tenant `default` and the user named by the request's `user` field. A known key still maps to
its tenant, so staging can try per-tenant budgets.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.apikeys import NAME_RE, KeyEntry, fingerprint, parse_admin_keys, parse_keys
from services.common.errors import APIError
from services.common.logging import log_event

KEYS_FILE_ENV = "QLENS_API_KEYS_FILE"
DEFAULT_TENANT = "default"
ANONYMOUS = "anonymous"
RECHECK_SECONDS = 1.0

log = logging.getLogger("qlens.gateway.auth")


ADMIN_KEYS_FILE_ENV = "QLENS_ADMIN_KEYS_FILE"


@dataclass(frozen=True, slots=True)
class Key:
    """A presented key that is known: its fingerprint (the key scope's id) and its entry."""

    fingerprint: str
    entry: KeyEntry


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: str
    user: str
    authenticated: bool
    key: str | None = None  # the key's fingerprint: the `key` limit scope
    key_limits: dict[str, Any] | None = None


def user_from_field(value: str | None) -> str:
    """The request's free-form `user` field as a budget scope: tame names as-is, others hashed.

    Budget scopes become Redis keys and log fields, so they must be short and safe; hashing keeps
    distinct users distinct without trusting their spelling.
    """
    if not value:
        return ANONYMOUS
    if NAME_RE.match(value):
        return value
    return "u-" + hashlib.sha256(value.encode()).hexdigest()[:16]


class KeyStore:
    """The keys file, reloaded on change (stat at most once a second)."""

    what = "API keys"

    def __init__(self, path: str | None, recheck_seconds: float = RECHECK_SECONDS) -> None:
        self.path = Path(path) if path else None
        self.recheck_seconds = recheck_seconds
        self._keys: dict[str, Any] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._refresh(force=True)

    def __len__(self) -> int:
        self._maybe_refresh()
        return len(self._keys)

    def lookup(self, key: str) -> KeyEntry | None:
        return self.lookup_digest(hashlib.sha256(key.encode()).hexdigest())

    def lookup_digest(self, digest: str) -> Any:
        self._maybe_refresh()
        return self._keys.get(digest)

    def items(self) -> list[tuple[str, Any]]:
        self._maybe_refresh()
        return list(self._keys.items())

    def _parse(self, text: str) -> dict[str, Any]:
        keys = parse_keys(text)
        # tenants and users become budget scopes, cache-key parts and log fields: skip odd names
        bad = [d for d, e in keys.items() if not (NAME_RE.match(e.tenant) and NAME_RE.match(e.user))]
        if bad:
            log_event(log, "API keys with invalid tenant or user names are ignored", logging.ERROR,
                      fingerprints=[fingerprint(d) for d in bad])
            keys = {d: e for d, e in keys.items() if d not in bad}
        return keys

    def _maybe_refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked >= self.recheck_seconds:
            self._refresh()

    def _refresh(self, force: bool = False) -> None:
        self._checked = time.monotonic()
        if self.path is None:
            return
        try:
            st = self.path.stat()
        except OSError:
            if self._keys or force:
                log_event(log, f"{self.what} file is missing: no key is accepted", logging.WARNING,
                          path=str(self.path))
            self._keys, self._stamp = {}, None
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp and not force:
            return
        try:
            keys = self._parse(self.path.read_text())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # keep serving the last good set; the error text never contains a key (only digests)
            log_event(log, f"{self.what} file is invalid, keeping the previous keys", logging.ERROR,
                      path=str(self.path), error=type(exc).__name__)
            self._stamp = stamp
            return
        self._keys, self._stamp = keys, stamp
        log_event(log, f"{self.what} loaded", keys=len(keys), path=str(self.path))


class AdminKeyStore(KeyStore):
    """The admin keys file (Secret qlens-admin-keys): sha256 -> {name}; separate from client keys."""

    what = "admin keys"

    def _parse(self, text: str) -> dict[str, Any]:
        return parse_admin_keys(text)


def keys_file_path(configured: str | None) -> str | None:
    return os.environ.get(KEYS_FILE_ENV) or configured or None


def admin_keys_file_path(configured: str | None) -> str | None:
    return os.environ.get(ADMIN_KEYS_FILE_ENV) or configured or None


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    m = _BEARER.match(authorization)
    return m.group(1) if m else None


_BEARER = re.compile(r"^\s*Bearer\s+(\S+)\s*$", re.IGNORECASE)


class Authenticator:
    def __init__(self, store: KeyStore, required: bool,
                 runtime: Callable[[str], KeyEntry | None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.required = required
        self.runtime = runtime  # digest -> the admin API's record (tenancy), consulted first
        self.clock = clock

    def find(self, key: str) -> Key | None:
        """The key's record, runtime first; revoked and expired keys included (check refuses them)."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        entry = self.runtime(digest) if self.runtime is not None else None
        if entry is None and self.store.path is not None:
            entry = self.store.lookup_digest(digest)
        return None if entry is None else Key(fingerprint(digest), entry)

    def check(self, authorization: str | None) -> Key | None:
        """The key, if known; APIError 401 when it is revoked or expired, or required and missing/unknown.

        Done before the body is read, so an unauthenticated client cannot make the gateway read
        (or parse) a megabyte.
        """
        key = bearer(authorization)
        found = self.find(key) if key else None
        if found is not None:
            if found.entry.revoked:
                raise APIError(401, "This API key has been revoked.", code="invalid_api_key")
            if found.entry.expired(self.clock()):
                raise APIError(401, "This API key has expired.", code="invalid_api_key")
            return found
        if not self.required:
            return None
        if key is None:
            raise APIError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                           code="missing_api_key")
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    @staticmethod
    def check_model(found: Key | None, model: str) -> None:
        """403 `model_not_allowed` for a model outside the key's allow-list."""
        if found is not None and not found.entry.allows(model):
            raise APIError(403, f"This API key is not allowed to use the model '{model}'.",
                           param="model", code="model_not_allowed")

    @staticmethod
    def caller_for(found: Key | None, user_field: str | None = None) -> Caller:
        """Tenant and user: the key's when there is one, else `default` and the request's `user`."""
        if found is not None:
            e = found.entry
            return Caller(e.tenant, e.user, True, found.fingerprint, e.limits)
        return Caller(DEFAULT_TENANT, user_from_field(user_field), False)

    def caller(self, authorization: str | None, user_field: str | None = None) -> Caller:
        return self.caller_for(self.check(authorization), user_field)
