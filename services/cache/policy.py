"""What the cache service accepts: tenant and key names, TTLs, entry sizes.

Names are checked before they reach a backend because they become Redis key parts and SCAN
patterns: a tenant with `:` or `*` could reach another tenant's entries.
"""

from __future__ import annotations

import math
import re

from services.common.apikeys import NAME_RE
from services.common.config import Cache
from services.common.errors import APIError

KEY_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_TTL_SECONDS = 30 * 86400
# one entry never takes more than this, whatever maxBytes allows (a chat answer is far smaller)
MAX_ENTRY_BYTES = 8 * 1024 * 1024


def check_tenant(tenant: str) -> str:
    if not NAME_RE.fullmatch(tenant):
        raise APIError(400, "Invalid tenant: use letters, digits and '._@-' (at most 64).",
                       param="tenant", code="invalid_value")
    return tenant


def check_key(key: str) -> str:
    if not KEY_RE.fullmatch(key):
        raise APIError(400, "Invalid key: use letters, digits and '._-' (at most 128).",
                       param="key", code="invalid_value")
    return key


def parse_ttl(raw: str | None, default: int) -> float:
    if raw is None or raw == "":
        return float(default)
    try:
        ttl = float(raw)
    except ValueError:
        ttl = math.nan
    if not (math.isfinite(ttl) and 0 < ttl <= MAX_TTL_SECONDS):
        raise APIError(400, f"Invalid ttl: a number of seconds in (0, {MAX_TTL_SECONDS}].",
                       param="ttl", code="invalid_value")
    return ttl


def max_entry_bytes(cfg: Cache) -> int:
    """The largest value accepted: it must fit in the memory backend's byte bound."""
    return min(cfg.max_bytes // 2, MAX_ENTRY_BYTES) if cfg.backend == "memory" else MAX_ENTRY_BYTES
