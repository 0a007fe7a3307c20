"""API keys: the one format shared by the gateway (reads) and `qlensctl keys` (writes).

Only SHA-256 hex digests of keys are stored, each mapped to a tenant and a user. The file (or the
`keys.json` entry of Secret `qlens-api-keys`, mounted into the gateway) looks like:

    {"keys": {"<sha256 hex>": {"tenant": "acme", "user": "alice", "created": "2026-11-26T07:30:00Z"}}}

A key itself is shown once, when created, and never stored, logged or echoed.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

KEY_PREFIX = "qlk-"
# tenants and users become cache-key parts, log fields and budget scopes: keep them tame
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class KeyEntry:
    tenant: str
    user: str
    created: str = ""


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
        out[digest] = KeyEntry(tenant=str(entry["tenant"]), user=str(entry["user"]),
                               created=str(entry.get("created", "")))
    return out


def dump_keys(keys: dict[str, KeyEntry]) -> str:
    entries = {d: asdict(e) for d, e in sorted(keys.items())}
    return json.dumps({"keys": entries}, indent=2, sort_keys=True) + "\n"


def load_keys_file(path: str | Path) -> dict[str, KeyEntry]:
    return parse_keys(Path(path).read_text())
