"""Runtime keys and tenant limits: what the admin API writes and every gateway replica reads.

The records live in the budget store, so every replica sharing it shares them (memory store: this
process only):

    qlens:admin:keys      hash  sha256(key) -> the key's record (services/common/apikeys.KeyEntry JSON)
    qlens:admin:tenants   hash  tenant -> its limit overrides {daily?, monthly?, rpm?, tpm?}
    qlens:admin:version   int   bumped (in the same MULTI) by every change

Reads on the request path are dict lookups in this replica's snapshot. The snapshot follows the
store by polling the version (one GET every POLL_SECONDS) and reloading both hashes when it moved,
so a change made through one replica is enforced by all of them within POLL_SECONDS plus a round
trip: well inside the 1 s the operators are promised. A store that cannot be read keeps the last
snapshot (and logs that, at most once a minute).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson
from redis.asyncio import Redis

from services.common.apikeys import KeyEntry
from services.common.logging import log_event
from services.gateway.budget import STORE_ERRORS, BudgetUnavailable

KEYS_HASH = "qlens:admin:keys"
TENANTS_HASH = "qlens:admin:tenants"
VERSION_KEY = "qlens:admin:version"
POLL_SECONDS = 0.25
WARN_INTERVAL_SECONDS = 60.0

log = logging.getLogger("qlens.gateway.tenancy")


class Tenancy:
    """This replica's snapshot of the runtime records, and the writes that change them."""

    def __init__(self, redis: Redis | None = None, poll_seconds: float = POLL_SECONDS) -> None:
        self.redis = redis  # None: the records live in this process only (memory budget store)
        self.poll_seconds = poll_seconds
        self.keys: dict[str, KeyEntry] = {}
        self.tenants: dict[str, dict[str, Any]] = {}
        self._version: bytes | None = None
        self._task: asyncio.Task[None] | None = None
        # one reload at a time: a poll that read the store before a write must not land after the
        # reload that follows the write (this replica would forget its own change for a poll)
        self._lock = asyncio.Lock()
        self._last_warning = -float("inf")

    # --- the request path: lookups in the snapshot --------------------------------------------

    def key(self, digest: str) -> KeyEntry | None:
        return self.keys.get(digest)

    def tenant_limits(self, tenant: str) -> Mapping[str, Any] | None:
        return self.tenants.get(tenant)

    # --- following the store ---------------------------------------------------------------------

    async def start(self) -> None:
        if self.redis is None:
            return
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            await self.refresh()

    async def refresh(self, force: bool = False) -> bool:
        """Reload the snapshot if the store's version moved; False if the store could not be read."""
        if self.redis is None:
            return True
        async with self._lock:
            return await self._reload(force)

    async def _reload(self, force: bool) -> bool:
        assert self.redis is not None
        try:
            version = await self.redis.get(VERSION_KEY)
            if version == self._version and self._version is not None and not force:
                return True
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.get(VERSION_KEY)
                pipe.hgetall(KEYS_HASH)
                pipe.hgetall(TENANTS_HASH)
                version, keys, tenants = await pipe.execute()
        except STORE_ERRORS as exc:
            now = time.monotonic()
            if now - self._last_warning >= WARN_INTERVAL_SECONDS:
                self._last_warning = now
                log_event(log, "runtime keys and limits: store unreachable, keeping the last snapshot",
                          logging.WARNING, error=type(exc).__name__)
            return False
        self.keys = _decode(keys, _key_entry)
        self.tenants = _decode(tenants, _limits)
        self._version = version if version is not None else b"0"
        return True

    # --- writes (the admin API) -------------------------------------------------------------------

    async def put_key(self, digest: str, entry: KeyEntry) -> None:
        if self.redis is None:
            self.keys = {**self.keys, digest: entry}
            return
        await self._write(KEYS_HASH, digest, orjson.dumps(entry.to_json()))

    async def put_tenant(self, tenant: str, limits: Mapping[str, Any] | None) -> None:
        """Set a tenant's overrides; None clears them (back to the environment's defaults)."""
        if self.redis is None:
            tenants = {k: v for k, v in self.tenants.items() if k != tenant}
            if limits is not None:
                tenants[tenant] = dict(limits)
            self.tenants = tenants
            return
        await self._write(TENANTS_HASH, tenant, None if limits is None else orjson.dumps(dict(limits)))

    async def _write(self, hash_name: str, field: str, value: bytes | None) -> None:
        """The change and a version bump in one MULTI, then this replica's snapshot reloaded."""
        assert self.redis is not None
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                if value is None:
                    pipe.hdel(hash_name, field)
                else:
                    pipe.hset(hash_name, field, value)
                pipe.incr(VERSION_KEY)
                await pipe.execute()
        except STORE_ERRORS as exc:
            raise BudgetUnavailable(f"the budget store is unreachable ({type(exc).__name__})") from exc
        await self.refresh(force=True)


def _key_entry(raw: Any) -> KeyEntry:
    return KeyEntry.from_json(raw)


def _limits(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError("tenant limits must be a mapping")
    return raw


def _decode(rows: Mapping[bytes, bytes], parse: Any) -> dict[str, Any]:
    out = {}
    for name, value in rows.items():
        try:
            out[name.decode()] = parse(orjson.loads(value))
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            # one bad record (a hand edit) must not drop the others; the name is a digest or tenant
            log_event(log, "runtime record ignored: not valid", logging.ERROR, record=name.decode()[:12])
    return out
