"""Daily spend limits that cannot overshoot: reserve the worst case, settle to the actual cost.

Before a provider call the gateway reserves the request's worst-case cost (prompt tokens estimated
from above + max_tokens, at the model's prices) against every scope at once: `total`, the caller's
`tenant` and the caller's `user`. Either every scope has room and all are reserved, or none is and
`BudgetExceeded` names the first scope without room. After the answer `settle` records the actual
cost and returns the rest; on failure `release` returns all of it. Recorded spend therefore never
exceeds a limit as long as the actual cost stays within its reservation (the gateway makes sure of
that by sending the `max_tokens` it reserved for).

Amounts are integer micro-dollars (no float drift over millions of requests). Days are UTC: the
counters of a new day start at zero at 00:00 UTC; a reservation settles against the day it was
made on. The clock is injectable for tests.

Stores: `MemoryBudget` (one process; operations never await, so each is atomic on the event loop)
and `RedisBudget` (shared by every gateway replica; one Lua script per operation, see budget_lua).
When Redis is unreachable the environment decides: `failClosed` raises `BudgetUnavailable`,
`failOpen` counts in a local MemoryBudget and logs a warning at most once a minute.

Metrics (bounded labels, scope = total|tenant|user): `qlens_cost_usd_total{scope}` grows by every
settled cost in each scope (dashboards sum `scope="total"`); `qlens_budget_remaining_usd{scope}` is
the remaining budget of the total, and of the tenant / user closest to its limit as this replica
last saw them (only for scopes that have a limit).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from services.common.apikeys import NAME_RE
from services.common.config import CostControls, DailyLimits, Pricing
from services.common.logging import log_event
from services.common.metrics import BUDGET_REMAINING, COST
from services.gateway import budget_lua

log = logging.getLogger("qlens.gateway.budget")

SCOPES = ("total", "tenant", "user")
MICROS_PER_USD = 1_000_000
# reservation when the client sets no max_tokens: the gateway must then send this max_tokens upstream
DEFAULT_MAX_COMPLETION_TOKENS = 4096
# a reservation not settled after this long is presumed abandoned (its replica died) and returned
LEASE_SECONDS = 900.0
# counters outlive their day by this much: late settles land, yesterday stays inspectable
DAY_MARGIN_SECONDS = 86400
WARN_INTERVAL_SECONDS = 60.0
# tokens per message for role and framing (OpenAI's own accounting uses 3-4), and an image part
MESSAGE_OVERHEAD_TOKENS = 8
IMAGE_TOKENS = 2000

Clock = Callable[[], float]
# what "the store is down" looks like from redis-py
STORE_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


# --- errors ------------------------------------------------------------------------------------


class BudgetError(Exception):
    """Base of the budget errors."""


class BudgetExceeded(BudgetError):
    """A daily limit has no room for the request: HTTP 429, code `budget_exceeded`."""

    def __init__(self, scope: str, limit: float) -> None:
        super().__init__(f"daily {scope} budget of ${limit:.2f} exceeded; it resets at 00:00 UTC")
        self.scope = scope
        self.limit = limit


class BudgetUnavailable(BudgetError):
    """The budget store is unreachable and the policy is failClosed: HTTP 503."""


# --- costs -------------------------------------------------------------------------------------


def _text_bytes(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode())
    return len(orjson.dumps(value))


def estimate_prompt_tokens(messages: Iterable[Mapping[str, Any]], tools: Any = None) -> int:
    """An upper bound on the prompt's tokens, without a tokenizer.

    Byte-level BPE tokenizers (OpenAI's, Anthropic's) never emit a token shorter than one byte, so
    the UTF-8 length of the text bounds its token count; per-message framing and images are added
    as fixed amounts. Overestimating only makes a request near the limit be refused early;
    underestimating could let spend pass the limit.
    """
    tokens = 3  # the reply's priming
    for msg in messages:
        tokens += MESSAGE_OVERHEAD_TOKENS + _text_bytes(msg.get("role")) + _text_bytes(msg.get("name"))
        content = msg.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and part.get("type") in ("image_url", "image", "input_image"):
                    tokens += IMAGE_TOKENS
                elif isinstance(part, Mapping) and "text" in part:
                    tokens += _text_bytes(part["text"])
                else:
                    tokens += _text_bytes(part)
        else:
            tokens += _text_bytes(content)
        for extra in ("tool_calls", "function_call", "tool_call_id"):
            tokens += _text_bytes(msg.get(extra))
    if tools:
        tokens += _text_bytes(tools)
    return tokens


def worst_case_cost(pricing: Pricing, prompt_tokens: int, max_tokens: int | None) -> float:
    """USD if the prompt is as long as estimated and the answer uses every allowed token."""
    completion = DEFAULT_MAX_COMPLETION_TOKENS if max_tokens is None else max_tokens
    return actual_cost(pricing, prompt_tokens, completion)


def actual_cost(pricing: Pricing, prompt_tokens: int, completion_tokens: int) -> float:
    """USD for the tokens used; prices are per 1K tokens."""
    return (max(prompt_tokens, 0) * pricing.input + max(completion_tokens, 0) * pricing.output) / 1000


def _micros_up(usd: float) -> int:
    # round first so 0.1 * 1e6 = 100000.00000000001 does not become 100001
    return math.ceil(round(usd * MICROS_PER_USD, 3))


def _micros(usd: float) -> int:
    return round(usd * MICROS_PER_USD)


def _usd(micros: int) -> float:
    return round(micros / MICROS_PER_USD, 6)


def _check_amount(usd: float) -> None:
    if not isinstance(usd, int | float) or not math.isfinite(usd) or usd < 0:
        raise ValueError(f"budget amount must be a finite number >= 0, got {usd!r}")


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"{kind} {name!r} is not a valid name (letters, digits, '._@-', at most 64)")


# --- days --------------------------------------------------------------------------------------


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def day_end(day: str) -> datetime:
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC) + timedelta(days=1)


def _expire_at(day: str) -> int:
    return int(day_end(day).timestamp()) + DAY_MARGIN_SECONDS


# --- shared pieces -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """Daily limits per scope in micro-dollars; None = no limit."""

    total: int | None = None
    tenant: int | None = None
    user: int | None = None

    @classmethod
    def from_config(cls, limits: DailyLimits) -> Limits:
        def conv(v: float | None) -> int | None:
            return None if v is None else _micros(v)

        return cls(conv(limits.total), conv(limits.per_tenant), conv(limits.per_user))

    def of(self, scope: str) -> int | None:
        return getattr(self, scope)


@dataclass
class Reservation:
    """A held amount; settle or release it exactly once (later calls are no-ops)."""

    id: str
    tenant: str
    user: str
    micros: int
    day: str
    store: str  # "memory" | "redis" | "local" (failOpen fallback of a RedisBudget)
    done: bool = False

    @property
    def usd(self) -> float:
        return _usd(self.micros)

    @property
    def lease_member(self) -> str:
        return f"{self.id}|{self.micros}|{self.tenant}|{self.user}"


def _scope_ids(tenant: str, user: str) -> tuple[str, str, str]:
    return ("all", tenant, f"{tenant}/{user}")


def _scope_usage(limit: int | None, spent: int, reserved: int) -> dict[str, Any]:
    remaining = None if limit is None else max(limit - spent - reserved, 0)
    return {
        "spent": _usd(spent),
        "reserved": _usd(max(reserved, 0)),
        "limit": None if limit is None else _usd(limit),
        "remaining": None if remaining is None else _usd(remaining),
    }


class _RemainingGauges:
    """qlens_budget_remaining_usd: the total's remaining, and the minimum over tenants / users seen."""

    MAX_IDS = 10000

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.day = ""
        self.seen: dict[str, dict[str, int]] = {"tenant": {}, "user": {}}

    def update(self, day: str, ids: tuple[str, str, str], counts: list[tuple[int, int]]) -> None:
        if day < self.day:
            return  # a late settle of yesterday's reservation
        if day != self.day:
            self.day = day
            self.seen = {"tenant": {}, "user": {}}
        for scope, scope_id, (spent, reserved) in zip(SCOPES, ids, counts, strict=True):
            limit = self.limits.of(scope)
            if limit is None:
                continue
            remaining = max(limit - spent - reserved, 0)
            if scope == "total":
                BUDGET_REMAINING.labels(scope).set(_usd(remaining))
                continue
            seen = self.seen[scope]
            if len(seen) >= self.MAX_IDS and scope_id not in seen:
                seen.clear()
            seen[scope_id] = remaining
            BUDGET_REMAINING.labels(scope).set(_usd(min(seen.values())))


class Budget(ABC):
    """The interface the gateway uses; see the module docstring."""

    store = "memory"

    def __init__(self, limits: Limits, *, clock: Clock = time.time,
                 lease_seconds: float = LEASE_SECONDS) -> None:
        self.limits = limits
        self.clock = clock
        self.lease_seconds = lease_seconds
        self._gauges = _RemainingGauges(limits)

    def _new_reservation(self, tenant: str, user: str, usd: float, store: str) -> Reservation:
        _check_name("tenant", tenant)
        _check_name("user", user)
        _check_amount(usd)
        return Reservation(secrets.token_hex(8), tenant, user, _micros_up(usd), utc_day(self.clock()), store)

    def _refused(self, scope_index: int) -> BudgetExceeded:
        scope = SCOPES[scope_index]
        return BudgetExceeded(scope, _usd(self.limits.of(scope) or 0))

    def _settled(self, res: Reservation, actual: int) -> None:
        if actual:
            for scope in SCOPES:
                COST.labels(scope).inc(actual / MICROS_PER_USD)

    def _usage_body(self, day: str, counts: list[tuple[int, int]], store: str) -> dict[str, Any]:
        return {
            "date": day,
            "resets_at": day_end(day).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "store": store,
            "tenant": _scope_usage(self.limits.tenant, *counts[1]),
            "user": _scope_usage(self.limits.user, *counts[2]),
        }

    @abstractmethod
    async def reserve(self, tenant: str, user: str, usd: float) -> Reservation: ...

    @abstractmethod
    async def settle(self, reservation: Reservation, actual_usd: float) -> None: ...

    async def release(self, reservation: Reservation) -> None:
        await self.settle(reservation, 0.0)

    @abstractmethod
    async def usage(self, tenant: str, user: str) -> dict[str, Any]: ...

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


# --- memory ------------------------------------------------------------------------------------


@dataclass
class _Day:
    counts: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (scope, id) -> [spent, reserved]
    leases: dict[str, Reservation] = field(default_factory=dict)
    expiries: list[tuple[float, str]] = field(default_factory=list)  # heap of (deadline, reservation id)

    def cell(self, scope: str, scope_id: str) -> list[int]:
        key = (scope, scope_id)
        cell = self.counts.get(key)
        if cell is None:
            cell = self.counts[key] = [0, 0]
        return cell

    def cells(self, tenant: str, user: str) -> list[list[int]]:
        return [self.cell(s, i) for s, i in zip(SCOPES, _scope_ids(tenant, user), strict=True)]


class MemoryBudget(Budget):
    """Counters in this process. No `await` inside an operation, so each is atomic on the loop."""

    store = "memory"

    def __init__(self, limits: Limits, *, clock: Clock = time.time, lease_seconds: float = LEASE_SECONDS,
                 store_name: str = "memory") -> None:
        super().__init__(limits, clock=clock, lease_seconds=lease_seconds)
        self.store = store_name
        self._days: dict[str, _Day] = {}

    def _day(self, day: str) -> _Day:
        state = self._days.get(day)
        if state is None:
            state = self._days[day] = _Day()
            # keep today and yesterday (late settles); older days are gone, as in Redis
            for old in sorted(self._days)[:-2]:
                del self._days[old]
        return state

    def _reap(self, state: _Day, now: float) -> None:
        while state.expiries and state.expiries[0][0] <= now:
            _, rid = heapq.heappop(state.expiries)
            res = state.leases.pop(rid, None)
            if res is not None:
                for cell in state.cells(res.tenant, res.user):
                    cell[1] -= res.micros

    async def reserve(self, tenant: str, user: str, usd: float) -> Reservation:
        return self.reserve_now(tenant, user, usd)

    def reserve_now(self, tenant: str, user: str, usd: float) -> Reservation:
        res = self._new_reservation(tenant, user, usd, self.store)
        now = self.clock()
        state = self._day(res.day)
        self._reap(state, now)
        cells = state.cells(tenant, user)
        for i, (scope, cell) in enumerate(zip(SCOPES, cells, strict=True)):
            limit = self.limits.of(scope)
            if limit is not None and cell[0] + cell[1] + res.micros > limit:
                raise self._refused(i)
        for cell in cells:
            cell[1] += res.micros
        state.leases[res.id] = res
        heapq.heappush(state.expiries, (now + self.lease_seconds, res.id))
        self._gauges.update(res.day, _scope_ids(tenant, user), [(c[0], c[1]) for c in cells])
        return res

    async def settle(self, reservation: Reservation, actual_usd: float) -> None:
        self.settle_now(reservation, actual_usd)

    def settle_now(self, reservation: Reservation, actual_usd: float) -> None:
        _check_amount(actual_usd)
        if reservation.done:
            return
        reservation.done = True
        state = self._days.get(reservation.day)
        if state is None:
            return  # its day is long gone
        actual = _micros(actual_usd)
        held = state.leases.pop(reservation.id, None) is not None
        cells = state.cells(reservation.tenant, reservation.user)
        for cell in cells:
            if held:
                cell[1] -= reservation.micros
            cell[0] += actual
        self._settled(reservation, actual)
        ids = _scope_ids(reservation.tenant, reservation.user)
        self._gauges.update(reservation.day, ids, [(c[0], c[1]) for c in cells])

    async def usage(self, tenant: str, user: str) -> dict[str, Any]:
        return self.usage_now(tenant, user)

    def usage_now(self, tenant: str, user: str) -> dict[str, Any]:
        _check_name("tenant", tenant)
        _check_name("user", user)
        day = utc_day(self.clock())
        state = self._days.get(day) or _Day()
        keys = zip(SCOPES, _scope_ids(tenant, user), strict=True)
        counts = [(spent, reserved) for spent, reserved in (state.counts.get(k) or (0, 0) for k in keys)]
        return self._usage_body(day, counts, self.store)


# --- redis -------------------------------------------------------------------------------------


class RedisBudget(Budget):
    """Counters in Redis, shared by every gateway replica; one Lua script per operation."""

    store = "redis"

    def __init__(self, limits: Limits, url: str, *, fail_open: bool = False, clock: Clock = time.time,
                 lease_seconds: float = LEASE_SECONDS, max_connections: int = 64,
                 socket_timeout: float = 1.0) -> None:
        super().__init__(limits, clock=clock, lease_seconds=lease_seconds)
        # short timeouts: a dead Redis must answer fast, never hang a request; one immediate retry
        # replaces a pooled connection that died with a Redis restart
        self._pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=2.0, socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout, retry=Retry(NoBackoff(), 1),
        )
        self._redis = Redis(connection_pool=self._pool)
        self._reserve = self._redis.register_script(budget_lua.RESERVE)
        self._settle = self._redis.register_script(budget_lua.SETTLE)
        self.fail_open = fail_open
        self._local = MemoryBudget(limits, clock=clock, lease_seconds=lease_seconds, store_name="local")
        self._last_warning = -math.inf
        self._down = False

    @staticmethod
    def _keys(day: str, tenant: str, user: str) -> list[str]:
        prefix = f"qlens:budget:{day}:"
        return [f"{prefix}total:all", f"{prefix}tenant:{tenant}", f"{prefix}user:{tenant}/{user}",
                f"{prefix}leases"]

    def _store_down(self, op: str, exc: BaseException) -> None:
        """Warn (at most once a minute, not once a request); failClosed then raises BudgetUnavailable."""
        self._down = True
        now = time.monotonic()
        if now - self._last_warning >= WARN_INTERVAL_SECONDS:
            self._last_warning = now
            action = "counting spend locally in this replica (failOpen)" if self.fail_open else \
                "refusing requests (failClosed)"
            log_event(log, f"budget store unreachable, {action}", logging.WARNING, op=op,
                      error=type(exc).__name__)
        if not self.fail_open:
            raise BudgetUnavailable("budget store unreachable; refusing requests until it is back") from exc

    async def reserve(self, tenant: str, user: str, usd: float) -> Reservation:
        res = self._new_reservation(tenant, user, usd, "redis")
        now = self.clock()
        keys = self._keys(res.day, tenant, user)
        limits = [-1 if (limit := self.limits.of(s)) is None else limit for s in SCOPES]
        try:
            out = await self._reserve(keys=keys, args=[
                res.micros, *limits, _expire_at(res.day), int(now * 1000),
                int((now + self.lease_seconds) * 1000), res.lease_member, keys[0][: -len("total:all")],
            ])
        except STORE_ERRORS as exc:
            self._store_down("reserve", exc)
            return self._local.reserve_now(tenant, user, usd)
        if self._down:
            self._down = False
            log_event(log, "budget store reachable again", logging.WARNING)
        if int(out[0]) == 0:
            raise self._refused(int(out[1]) - 1)
        self._gauges.update(res.day, _scope_ids(tenant, user), _pairs(out[1:]))
        return res

    async def settle(self, reservation: Reservation, actual_usd: float) -> None:
        if reservation.store == "local":
            self._local.settle_now(reservation, actual_usd)
            return
        _check_amount(actual_usd)
        if reservation.done:
            return
        reservation.done = True
        actual = _micros(actual_usd)
        keys = self._keys(reservation.day, reservation.tenant, reservation.user)
        try:
            out = await self._settle(keys=keys, args=[reservation.micros, actual, reservation.lease_member,
                                                      _expire_at(reservation.day)])
        except STORE_ERRORS as exc:
            # the answer is already served: never fail it here. The lease returns the reservation later.
            log_event(log, "budget settle lost: store unreachable", logging.ERROR,
                      error=type(exc).__name__, usd=_usd(actual), reserved_usd=reservation.usd)
            return
        self._settled(reservation, actual)
        ids = _scope_ids(reservation.tenant, reservation.user)
        self._gauges.update(reservation.day, ids, _pairs(out[1:]))

    async def usage(self, tenant: str, user: str) -> dict[str, Any]:
        _check_name("tenant", tenant)
        _check_name("user", user)
        day = utc_day(self.clock())
        keys = self._keys(day, tenant, user)[:3]
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for key in keys:
                    pipe.hmget(key, "spent", "reserved")
                rows = await pipe.execute()
        except STORE_ERRORS as exc:
            self._store_down("usage", exc)
            return self._local.usage_now(tenant, user)
        counts = [(int(s or 0), int(r or 0)) for s, r in rows]
        return self._usage_body(day, counts, "redis")

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except STORE_ERRORS as exc:
            raise BudgetUnavailable(f"budget store unreachable: {type(exc).__name__}") from exc

    async def close(self) -> None:
        await self._redis.aclose()
        await self._pool.disconnect()


def _pairs(flat: list[Any]) -> list[tuple[int, int]]:
    return [(int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]


def make_budget(cost_controls: CostControls, redis_url: str | None, *, clock: Clock = time.time,
                lease_seconds: float = LEASE_SECONDS) -> Budget:
    """The budget the environment asks for. Disabled cost controls: counted, never refused."""
    if not cost_controls.enabled:
        return MemoryBudget(Limits(), clock=clock, lease_seconds=lease_seconds)
    limits = Limits.from_config(cost_controls.daily_limits)
    if cost_controls.store == "redis":
        if not redis_url:
            raise ValueError("costControls.store is redis but QLENS_REDIS_URL is not set")
        return RedisBudget(limits, redis_url, fail_open=cost_controls.on_store_failure == "failOpen",
                           clock=clock, lease_seconds=lease_seconds)
    return MemoryBudget(limits, clock=clock, lease_seconds=lease_seconds)
