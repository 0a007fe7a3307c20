"""API keys: the one format shared by the gateway (reads) and `qlensctl keys` (writes).

Only SHA-256 hex digests of keys are stored, each mapped to a tenant and a user. The file (or the
`keys.json` entry of Secret `qlens-api-keys`, mounted into the gateway) looks like:

    {"keys": {"<sha256 hex>": {"tenant": "acme", "user": "alice", "created": "2026-11-26T07:30:00Z"}}}

An entry may also carry `description`, `expiresAt` (ISO 8601 UTC), `models` (an allow-list of
public model names) and `limits` (`{daily, monthly, rpm, tpm}`, the key scope's own); keys
created through the admin API carry them in the budget store instead (services/gateway/tenancy.py).
A key itself is shown once, when created, and never stored, logged or echoed.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

KEY_PREFIX = "qlk-"
# tenants and users become cache-key parts, log fields and budget scopes: keep them tame
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class KeyEntry:
    tenant: str
    user: str
    created: str = ""
    description: str = ""
    expires_at: str | None = None
    models: tuple[str, ...] | None = None  # None: every model
    limits: dict[str, Any] | None = None  # the key scope's limits, over costControls.limits.perKey
    revoked: bool = False

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and parse_time(self.expires_at) <= now

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models

    def to_json(self) -> dict[str, Any]:
        """The stored form: camelCase, optional fields only when set (files stay as they were)."""
        out: dict[str, Any] = {"tenant": self.tenant, "user": self.user, "created": self.created}
        if self.description:
            out["description"] = self.description
        if self.expires_at is not None:
            out["expiresAt"] = self.expires_at
        if self.models is not None:
            out["models"] = list(self.models)
        if self.limits:
            out["limits"] = dict(self.limits)
        if self.revoked:
            out["revoked"] = True
        return out

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> KeyEntry:
        models = entry.get("models")
        if models is not None and not (isinstance(models, list) and all(isinstance(m, str) for m in models)):
            raise ValueError("models must be a list of model names")
        limits = entry.get("limits")
        if limits is not None and not isinstance(limits, dict):
            raise ValueError("limits must be a mapping")
        expires = entry.get("expiresAt")
        if expires is not None:
            parse_time(str(expires))
        return cls(tenant=str(entry["tenant"]), user=str(entry["user"]),
                   created=str(entry.get("created", "")), description=str(entry.get("description", "")),
                   expires_at=None if expires is None else str(expires),
                   models=None if models is None else tuple(models), limits=limits or None,
                   revoked=bool(entry.get("revoked", False)))


def parse_time(value: str) -> float:
    """An ISO 8601 time (`2026-12-31T00:00:00Z`, or a date: its UTC midnight) as epoch seconds."""
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 time such as 2026-12-31T00:00:00Z") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def fingerprint(digest: str) -> str:
    """A short, safe handle for a key in listings: the first 12 hex digits of its hash."""
    return digest[:12]


def parse_keys(text: str) -> dict[str, KeyEntry]:
    data = json.loads(text) if text.strip() else {}
    keys = data.get("keys", {}) if isinstance(data, dict) else None
    if not isinstance(keys, dict):
        raise ValueError('API keys file must be {"keys": {"<sha256>": {"tenant": ..., "user": ...}}}')
    out = {}
    for digest, entry in keys.items():
        if not re.fullmatch(r"[0-9a-f]{64}", digest) or not isinstance(entry, dict):
            raise ValueError("API keys file: every key must be a sha256 hex digest mapped to {tenant, user}")
        out[digest] = KeyEntry.from_json(entry)
    return out


def dump_keys(keys: dict[str, KeyEntry]) -> str:
    entries = {d: e.to_json() for d, e in sorted(keys.items())}
    return json.dumps({"keys": entries}, indent=2, sort_keys=True) + "\n"


def load_keys_file(path: str | Path) -> dict[str, KeyEntry]:
    return parse_keys(Path(path).read_text())


# --- admin keys (Secret qlens-admin-keys): {"keys": {"<sha256>": {"name": "ops-alice", "created": ...}}}


def parse_admin_keys(text: str) -> dict[str, str]:
    """sha256 digest -> the admin key's name (for the log line of each admin change)."""
    data = json.loads(text) if text.strip() else {}
    keys = data.get("keys", {}) if isinstance(data, dict) else None
    if not isinstance(keys, dict):
        raise ValueError('admin keys file must be {"keys": {"<sha256>": {"name": ...}}}')
    out = {}
    for digest, entry in keys.items():
        if not re.fullmatch(r"[0-9a-f]{64}", digest) or not isinstance(entry, dict):
            raise ValueError("admin keys file: every key must be a sha256 hex digest mapped to {name}")
        name = str(entry.get("name") or fingerprint(digest))
        out[digest] = name if NAME_RE.match(name) else fingerprint(digest)
    return out


def dump_admin_keys(keys: dict[str, str], created: str = "") -> str:
    entries = {d: {"name": n, "created": created} for d, n in sorted(keys.items())}
    return json.dumps({"keys": entries}, indent=2, sort_keys=True) + "\n"
