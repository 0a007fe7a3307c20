"""Who is calling: `Authorization: Bearer <key>` -> (tenant, user).

Keys are looked up by their SHA-256 digest in the keys file (format: services/common/apikeys.py).
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
from dataclasses import dataclass
from pathlib import Path

from services.common.apikeys import NAME_RE, KeyEntry, fingerprint, parse_keys
from services.common.errors import APIError
from services.common.logging import log_event

KEYS_FILE_ENV = "QLENS_API_KEYS_FILE"
DEFAULT_TENANT = "default"
ANONYMOUS = "anonymous"
RECHECK_SECONDS = 1.0

log = logging.getLogger("qlens.gateway.auth")


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: str
    user: str
    authenticated: bool


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

    def __init__(self, path: str | None, recheck_seconds: float = RECHECK_SECONDS) -> None:
        self.path = Path(path) if path else None
        self.recheck_seconds = recheck_seconds
        self._keys: dict[str, KeyEntry] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._refresh(force=True)

    def __len__(self) -> int:
        self._maybe_refresh()
        return len(self._keys)

    def lookup(self, key: str) -> KeyEntry | None:
        self._maybe_refresh()
        return self._keys.get(hashlib.sha256(key.encode()).hexdigest())

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
                log_event(log, "API keys file is missing: no key is accepted", logging.WARNING,
                          path=str(self.path))
            self._keys, self._stamp = {}, None
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp and not force:
            return
        try:
            keys = parse_keys(self.path.read_text())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # keep serving the last good set; the error text never contains a key (only digests)
            log_event(log, "API keys file is invalid, keeping the previous keys", logging.ERROR,
                      path=str(self.path), error=type(exc).__name__)
            self._stamp = stamp
            return
        # tenants and users become budget scopes, cache-key parts and log fields: skip odd names
        bad = [d for d, e in keys.items() if not (NAME_RE.match(e.tenant) and NAME_RE.match(e.user))]
        if bad:
            log_event(log, "API keys with invalid tenant or user names are ignored", logging.ERROR,
                      fingerprints=[fingerprint(d) for d in bad])
            keys = {d: e for d, e in keys.items() if d not in bad}
        self._keys, self._stamp = keys, stamp
        log_event(log, "API keys loaded", keys=len(keys), path=str(self.path))


def keys_file_path(configured: str | None) -> str | None:
    return os.environ.get(KEYS_FILE_ENV) or configured or None


_BEARER = re.compile(r"^\s*Bearer\s+(\S+)\s*$", re.IGNORECASE)


class Authenticator:
    def __init__(self, store: KeyStore, required: bool) -> None:
        self.store = store
        self.required = required

    def check(self, authorization: str | None) -> KeyEntry | None:
        """The key's entry; APIError 401 when a key is required and missing or unknown.

        Done before the body is read, so an unauthenticated client cannot make the gateway read
        (or parse) a megabyte.
        """
        key = None
        if authorization:
            m = _BEARER.match(authorization)
            key = m.group(1) if m else None
        entry = self.store.lookup(key) if key and self.store.path is not None else None
        if entry is not None or not self.required:
            return entry
        if key is None:
            raise APIError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                           code="missing_api_key")
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    @staticmethod
    def caller_for(entry: KeyEntry | None, user_field: str | None = None) -> Caller:
        """Tenant and user: the key's when there is one, else `default` and the request's `user`."""
        if entry is not None:
            return Caller(entry.tenant, entry.user, True)
        return Caller(DEFAULT_TENANT, user_from_field(user_field), False)

    def caller(self, authorization: str | None, user_field: str | None = None) -> Caller:
        return self.caller_for(self.check(authorization), user_field)
