"""Spend and rate limits that cannot overshoot: reserve the worst case, settle to the actual.

Before a provider call the gateway reserves the request against every counter of every scope at
once. The scopes are the caller's `key` (when it has one), `user`, `tenant` and the `total`; each
has a daily and a monthly budget (UTC windows, in micro-dollars: the worst-case cost, prompt tokens
estimated from above + max_tokens, at the model's prices) and, when limited, requests and tokens
per minute (tokens: the same worst case in tokens). Either every counter has room and all are
reserved, or none is and `BudgetExceeded` names the first scope and window without room. After the
answer `settle` records the actual cost and tokens (requests stay counted) and returns the rest;
on failure `release` returns all of it. Recorded spend therefore never exceeds a limit as long as
the actual stays within its reservation (the gateway sends the `max_tokens` it reserved for).

A scope is data: `Budget.scopes` lists (scope, id, limits), and every store works on the list of
counters built from it (RedisBudget: one Lua script of N counters per operation, see budget_lua).
Limits are the environment's defaults per scope (`costControls.limits`, `dailyLimits`), overridden
at runtime per tenant (`Budget.overrides`, set by the admin store) and per key (the key's own).

The usage ledger rides on the settle: the same script adds the request to the rollup of its UTC
day x tenant (one hash per day and tenant, fields `{user}|{model}|{metric}`; see services/gateway/
ledger.py), kept `usage.retentionDays`.

Amounts are integer micro-dollars (no float drift over millions of requests). A reservation
settles against the windows it was made in. The clock is injectable for tests.

Stores: `MemoryBudget` (one process; operations never await, so each is atomic on the event loop)
and `RedisBudget` (shared by every gateway replica). When Redis is unreachable the environment
decides: `failClosed` raises `BudgetUnavailable`, `failOpen` counts in a local MemoryBudget and
logs a warning at most once a minute.

Metrics (bounded labels, scope = key|user|tenant|total): `qlens_cost_usd_total{scope}` grows by
every settled cost in each scope (dashboards sum `scope="total"`); `qlens_budget_remaining_usd
{scope}` is the remaining daily budget of the total, and of the tenant / user / key closest to its
limit as this replica last saw them (only for scopes that have a limit).
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import math
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from services.common.apikeys import NAME_RE
from services.common.config import CostControls, Pricing
from services.common.config import ScopeLimits as ScopeLimitsConfig
from services.common.logging import log_event
from services.common.metrics import BUDGET_LIMIT, BUDGET_REMAINING, COST
from services.gateway import budget_lua

log = logging.getLogger("qlens.gateway.budget")

# checked in this order: a refusal names the narrowest scope without room
SCOPES = ("key", "user", "tenant", "total")
WINDOWS = ("daily", "monthly", "rpm", "tpm")
MICROS_PER_USD = 1_000_000
# reservation when the client sets no max_tokens: the gateway must then send this max_tokens upstream
DEFAULT_MAX_COMPLETION_TOKENS = 4096
# a reservation not settled after this long is presumed abandoned (its replica died) and returned
LEASE_SECONDS = 900.0
# counters outlive their window by this much: late settles land, yesterday stays inspectable
DAY_MARGIN_SECONDS = 86400
MINUTE_MARGIN_SECONDS = 60
WARN_INTERVAL_SECONDS = 60.0
# tokens per message for role and framing (OpenAI's own accounting uses 3-4), and an image part
MESSAGE_OVERHEAD_TOKENS = 8
IMAGE_TOKENS = 2000
LEASES_KEY = "qlens:budget:leases"
# the ledger's metrics per (user, model): requests, input/output tokens, cost (micro-dollars),
# cache hits, errors
LEDGER_METRICS = ("requests", "input_tokens", "output_tokens", "cost_micros", "cache_hits", "errors")

Clock = Callable[[], float]
# what "the store is down" looks like from redis-py
STORE_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


# --- errors ------------------------------------------------------------------------------------


class BudgetError(Exception):
    """Base of the budget errors."""


class BudgetExceeded(BudgetError):
    """A limit has no room for the request: HTTP 429 with Retry-After and the rate-limit headers.

    `scope` is key|user|tenant|total, `window` daily|monthly|rpm|tpm, `limit` in USD for the
    budgets and in requests or tokens for the rates.
    """

    def __init__(self, scope: str, window: str, limit: float, retry_after: int,
                 resets_at: str, headers: dict[str, str] | None = None) -> None:
        if window in ("daily", "monthly"):
            what = f"{window} {scope} budget of ${limit:.2f} exceeded; it resets at {resets_at}"
        else:
            unit = "requests" if window == "rpm" else "tokens"
            what = (f"{scope} rate limit of {int(limit)} {unit} per minute ({window}) reached; "
                    f"retry in {retry_after}s")
        super().__init__(what)
        self.scope = scope
        self.window = window
        self.limit = limit
        self.retry_after = retry_after
        self.headers = {**(headers or {}), "retry-after": str(retry_after)}

    @property
    def code(self) -> str:
        return "budget_exceeded" if self.window in ("daily", "monthly") else "rate_limit_exceeded"


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


# --- windows -----------------------------------------------------------------------------------


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


@functools.lru_cache(maxsize=8)  # a pure function of the day (datetimes are immutable); per request
def day_end(day: str) -> datetime:
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC) + timedelta(days=1)


def utc_month(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m")


@functools.lru_cache(maxsize=8)
def month_end(month: str) -> datetime:
    start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    return (start + timedelta(days=32)).replace(day=1)


def _expire_at(day: str) -> int:
    return int(day_end(day).timestamp()) + DAY_MARGIN_SECONDS


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Windows:
    """The windows a moment falls in, with the epoch second each one ends."""

    day: str
    day_end: int
    month: str
    month_end: int
    minute: str
    minute_end: int

    @classmethod
    def at(cls, now: float) -> Windows:
        # every window is a whole number of UTC minutes, so the minute decides them all: one
        # build per minute instead of three strftime and two strptime per request (5% of the
        # gateway's CPU on the miss path, py-spy)
        return _windows_of_minute(int(now // 60))


@functools.lru_cache(maxsize=4)
def _windows_of_minute(minute: int) -> Windows:
    minute_start = minute * 60
    day, month = utc_day(minute_start), utc_month(minute_start)
    return Windows(day, int(day_end(day).timestamp()), month, int(month_end(month).timestamp()),
                   datetime.fromtimestamp(minute_start, UTC).strftime("%Y%m%d%H%M"), minute_start + 60)


# --- limits and scopes -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScopeLimits:
    """One scope's limits: budgets in micro-dollars, rates per minute; None = no limit."""

    daily: int | None = None
    monthly: int | None = None
    rpm: int | None = None
    tpm: int | None = None

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> ScopeLimits:
        """From the config's units (USD, counts), as the environment and the admin API spell them."""
        return cls(_opt_micros(values.get("daily")), _opt_micros(values.get("monthly")),
                   _opt_int(values.get("rpm")), _opt_int(values.get("tpm")))

    def merged(self, override: Mapping[str, Any] | None) -> ScopeLimits:
        """These limits with an override's fields on top: a field present replaces (null = no limit)."""
        if not override:
            return self
        return ScopeLimits(
            _opt_micros(override["daily"]) if "daily" in override else self.daily,
            _opt_micros(override["monthly"]) if "monthly" in override else self.monthly,
            _opt_int(override["rpm"]) if "rpm" in override else self.rpm,
            _opt_int(override["tpm"]) if "tpm" in override else self.tpm,
        )

    def of(self, window: str) -> int | None:
        return getattr(self, window)

    def public(self) -> dict[str, Any]:
        """As the admin API shows them (USD, counts)."""
        return {"daily": _opt_usd(self.daily), "monthly": _opt_usd(self.monthly),
                "rpm": self.rpm, "tpm": self.tpm}


def _opt_micros(usd: Any) -> int | None:
    return None if usd is None else _micros(float(usd))


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def _opt_usd(micros: int | None) -> float | None:
    return None if micros is None else _usd(micros)


@dataclass(frozen=True)
class Limits:
    """The environment's default limits per scope."""

    total: ScopeLimits = ScopeLimits()
    tenant: ScopeLimits = ScopeLimits()
    user: ScopeLimits = ScopeLimits()
    key: ScopeLimits = ScopeLimits()

    @classmethod
    def from_config(cls, cost_controls: CostControls) -> Limits:
        def conv(scope: ScopeLimitsConfig, daily: float | None) -> ScopeLimits:
            values = scope.model_dump()
            if daily is not None:
                values["daily"] = daily
            return ScopeLimits.from_values(values)

        lim, daily = cost_controls.limits, cost_controls.daily_limits
        return cls(conv(lim.total, daily.total), conv(lim.per_tenant, daily.per_tenant),
                   conv(lim.per_user, daily.per_user), conv(lim.per_key, None))

    @classmethod
    def daily(cls, total: float | None = None, tenant: float | None = None,
              user: float | None = None) -> Limits:
        """Daily budgets only (USD): the common case, and the tests'."""
        def d(v: float | None) -> ScopeLimits:
            return ScopeLimits(daily=_opt_micros(v))

        return cls(d(total), d(tenant), d(user))

    def of(self, scope: str) -> ScopeLimits:
        return getattr(self, scope)


@dataclass(frozen=True, slots=True)
class Counter:
    """One counter a reservation holds: a hash {spent, reserved} in its store."""

    key: str
    scope: str
    window: str
    limit: int | None
    amount: int
    expire_at: int
    resets_at: int


@dataclass
class Reservation:
    """A held amount; settle or release it exactly once (later calls are no-ops)."""

    id: str
    tenant: str
    user: str
    micros: int
    tokens: int
    day: str
    store: str  # "memory" | "redis" | "local" (failOpen fallback of a RedisBudget)
    counters: tuple[Counter, ...] = ()
    model: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # x-ratelimit-* for the answer
    done: bool = False

    @property
    def usd(self) -> float:
        return _usd(self.micros)

    @property
    def lease_member(self) -> str:
        held = "".join(f"|{c.amount}:{c.key}" for c in self.counters if c.amount)
        return f"{self.id}{held}"


OverrideLookup = Callable[[str], Mapping[str, Any] | None]


def _no_overrides(tenant: str) -> None:
    return None


def _scope_usage(limit: int | None, spent: int, reserved: int) -> dict[str, Any]:
    remaining = None if limit is None else max(limit - spent - reserved, 0)
    return {
        "spent": _usd(spent),
        "reserved": _usd(max(reserved, 0)),
        "limit": None if limit is None else _usd(limit),
        "remaining": None if remaining is None else _usd(remaining),
    }


def rate_headers(counters: Sequence[Counter], counts: Sequence[tuple[int, int]], now: float,
                 ) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers from the tightest rpm and tpm counters (none without limits)."""
    out: dict[str, str] = {}
    for window, unit in (("rpm", "requests"), ("tpm", "tokens")):
        best: tuple[int, int, int] | None = None  # remaining, limit, resets_at
        for c, (spent, reserved) in zip(counters, counts, strict=True):
            if c.window != window or c.limit is None:
                continue
            remaining = max(c.limit - spent - reserved, 0)
            if best is None or remaining < best[0]:
                best = (remaining, c.limit, c.resets_at)
        if best is not None:
            out[f"x-ratelimit-limit-{unit}"] = str(best[1])
            out[f"x-ratelimit-remaining-{unit}"] = str(best[0])
            out[f"x-ratelimit-reset-{unit}"] = f"{max(math.ceil(best[2] - now), 0)}s"
    return out


@functools.cache  # scopes are the four of Limits: a label lookup once each, not per request
def _child(metric: Any, scope: str) -> Any:
    return metric.labels(scope)


class _RemainingGauges:
    """qlens_budget_remaining_usd: the total's remaining today, and the minimum over the others seen;
    qlens_budget_limit_usd: the daily limit beside it (the dashboard's spend = limit - remaining).

    A settle only records its ids' remaining (O(1)); the minimum over up to MAX_IDS ids per scope
    is taken when Prometheus scrapes (the gauges' set_function), not on every request."""

    MAX_IDS = 10000

    def __init__(self) -> None:
        self.day = ""
        self.seen: dict[str, dict[str, tuple[int, int]]] = {}  # scope -> id -> (remaining, limit)
        self._closest: dict[str, tuple[int, int]] = {}  # scope -> the last minimum, kept over a new day

    def update(self, day: str, counters: Sequence[Counter], counts: Sequence[tuple[int, int]]) -> None:
        if day < self.day:
            return  # a late settle of yesterday's reservation
        if day != self.day:
            self.day = day
            self.seen = {}
        for c, (spent, reserved) in zip(counters, counts, strict=True):
            if c.window != "daily" or c.limit is None:
                continue
            remaining = max(c.limit - spent - reserved, 0)
            if c.scope == "total":
                _child(BUDGET_REMAINING, c.scope).set(_usd(remaining))
                _child(BUDGET_LIMIT, c.scope).set(_usd(c.limit))
                continue
            seen = self.seen.get(c.scope)
            if seen is None:
                seen = self.seen[c.scope] = {}
                self._watch(c.scope)
            if len(seen) >= self.MAX_IDS and c.key not in seen:
                seen.clear()
            seen[c.key] = (remaining, c.limit)

    def _watch(self, scope: str) -> None:
        _child(BUDGET_REMAINING, scope).set_function(lambda: _usd(self.closest(scope)[0]))
        _child(BUDGET_LIMIT, scope).set_function(lambda: _usd(self.closest(scope)[1]))

    def closest(self, scope: str) -> tuple[int, int]:
        """(remaining, limit) of the scope's id closest to its limit today."""
        seen = self.seen.get(scope)
        if seen:
            self._closest[scope] = min(seen.values())
        return self._closest.get(scope, (0, 0))


def ledger_key(day: str, tenant: str) -> str:
    return f"qlens:usage:{day}:t:{tenant}"


def ledger_index(day: str) -> str:
    return f"qlens:usage:{day}:index"


def _ledger_name(name: str) -> str:
    return name.replace("|", "_")


def ledger_fields(user: str, model: str, values: Mapping[str, int]) -> list[tuple[str, int]]:
    prefix = f"{_ledger_name(user)}|{_ledger_name(model)}|"
    return [(prefix + metric, v) for metric, v in values.items() if v]


class Budget(ABC):
    """The interface the gateway uses; see the module docstring."""

    store = "memory"

    def __init__(self, limits: Limits, *, clock: Clock = time.time, lease_seconds: float = LEASE_SECONDS,
                 ledger_days: int | None = None) -> None:
        self.limits = limits
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.ledger_days = ledger_days  # None: no usage ledger
        self.overrides: OverrideLookup = _no_overrides  # tenant -> runtime limits (the admin store)
        self.enforcing = True
        self._gauges = _RemainingGauges()

    def stop_enforcing(self) -> None:
        """`costControls.enabled: false`: every request is counted (spend, tokens, the ledger) and
        none is refused, whatever limit the environment, a key or the admin API sets. Runtime
        limits stay stored, and bite again once cost controls are on."""
        self.enforcing = False

    # the scopes of a request, as data: (scope, id, limits)
    def scopes(self, tenant: str, user: str, key: str | None = None,
               key_limits: Mapping[str, Any] | None = None) -> list[tuple[str, str, ScopeLimits]]:
        if not self.enforcing:
            ids = ([("key", f"key:{key}")] if key is not None else []) + [
                ("user", f"user:{tenant}/{user}"), ("tenant", f"tenant:{tenant}"), ("total", "total:all")]
            return [(scope, sid, ScopeLimits()) for scope, sid in ids]
        out = []
        if key is not None:
            out.append(("key", f"key:{key}", self.limits.key.merged(key_limits)))
        out.append(("user", f"user:{tenant}/{user}", self.limits.user))
        out.append(("tenant", f"tenant:{tenant}", self.limits.tenant.merged(self.overrides(tenant))))
        out.append(("total", "total:all", self.limits.total))
        return out

    def _counters(self, scopes: Iterable[tuple[str, str, ScopeLimits]], w: Windows, micros: int,
                  tokens: int, *, rates: bool = True) -> tuple[Counter, ...]:
        out = []
        day_exp, month_exp = w.day_end + DAY_MARGIN_SECONDS, w.month_end + DAY_MARGIN_SECONDS
        minute_exp = w.minute_end + MINUTE_MARGIN_SECONDS
        for scope, sid, lim in scopes:
            out.append(Counter(f"qlens:budget:{w.day}:{sid}", scope, "daily", lim.daily, micros,
                               day_exp, w.day_end))
            out.append(Counter(f"qlens:budget:{w.month}:{sid}", scope, "monthly", lim.monthly, micros,
                               month_exp, w.month_end))
            # rates are counted only where limited: a limit set at runtime starts a fresh minute
            if rates and lim.rpm is not None:
                out.append(Counter(f"qlens:rate:{w.minute}:req:{sid}", scope, "rpm", lim.rpm, 1,
                                   minute_exp, w.minute_end))
            if rates and lim.tpm is not None:
                out.append(Counter(f"qlens:rate:{w.minute}:tok:{sid}", scope, "tpm", lim.tpm, tokens,
                                   minute_exp, w.minute_end))
        return tuple(out)

    def _new_reservation(self, tenant: str, user: str, usd: float, tokens: int, store: str, *,
                         key: str | None, key_limits: Mapping[str, Any] | None, model: str,
                         now: float) -> Reservation:
        _check_name("tenant", tenant)
        _check_name("user", user)
        _check_amount(usd)
        if not isinstance(tokens, int) or tokens < 0:
            raise ValueError(f"tokens must be an integer >= 0, got {tokens!r}")
        micros = _micros_up(usd)
        w = Windows.at(now)
        counters = self._counters(self.scopes(tenant, user, key, key_limits), w, micros, tokens)
        return Reservation(secrets.token_hex(8), tenant, user, micros, tokens, w.day, store, counters, model)

    def _refused(self, res: Reservation, index: int, counts: list[tuple[int, int]],
                 now: float) -> BudgetExceeded:
        c = res.counters[index]
        limit = _usd(c.limit or 0) if c.window in ("daily", "monthly") else float(c.limit or 0)
        retry = max(math.ceil(c.resets_at - now), 1)
        return BudgetExceeded(c.scope, c.window, limit, retry, _iso(c.resets_at),
                              rate_headers(res.counters, counts, now))

    def _reserved(self, res: Reservation, counts: list[tuple[int, int]], now: float) -> Reservation:
        res.headers = rate_headers(res.counters, counts, now)
        self._gauges.update(res.day, res.counters, counts)
        return res

    def _actuals(self, res: Reservation, actual: int, tokens: int | None) -> list[int]:
        """What each counter keeps at settle: the cost, the request (always), the tokens used."""
        out = []
        for c in res.counters:
            if c.window in ("daily", "monthly"):
                out.append(actual)
            elif c.window == "rpm":
                out.append(c.amount)
            else:
                out.append(c.amount if tokens is None else tokens)
        return out

    def _ledger_values(self, actual: int, input_tokens: int | None, output_tokens: int | None,
                       error: bool) -> dict[str, int]:
        return {"requests": 1, "input_tokens": input_tokens or 0, "output_tokens": output_tokens or 0,
                "cost_micros": actual, "errors": int(error)}

    def _ledger_expire(self, day: str) -> int:
        return int(day_end(day).timestamp()) + (self.ledger_days or 0) * 86400

    def _settled(self, res: Reservation, actual: int, counts: list[tuple[int, int]]) -> None:
        if actual:
            for c in res.counters:
                if c.window == "daily":
                    _child(COST, c.scope).inc(actual / MICROS_PER_USD)
        self._gauges.update(res.day, res.counters, counts)

    def _usage_body(self, w: Windows, counters: Sequence[Counter], counts: Sequence[tuple[int, int]],
                    store: str) -> dict[str, Any]:
        by = {(c.scope, c.window): _scope_usage(c.limit, *n) for c, n in zip(counters, counts, strict=True)}
        return {
            "date": w.day,
            "resets_at": _iso(w.day_end),
            "store": store,
            "tenant": by[("tenant", "daily")],
            "user": by[("user", "daily")],
            "monthly": {"month": w.month, "resets_at": _iso(w.month_end),
                        "tenant": by[("tenant", "monthly")], "user": by[("user", "monthly")]},
        }

    def _usage_counters(self, tenant: str, user: str) -> tuple[Windows, tuple[Counter, ...]]:
        _check_name("tenant", tenant)
        _check_name("user", user)
        w = Windows.at(self.clock())
        scopes = [s for s in self.scopes(tenant, user) if s[0] in ("tenant", "user")]
        return w, self._counters(scopes, w, 0, 0, rates=False)

    @abstractmethod
    async def reserve(self, tenant: str, user: str, usd: float, *, tokens: int = 0, key: str | None = None,
                      key_limits: Mapping[str, Any] | None = None, model: str = "") -> Reservation: ...

    @abstractmethod
    async def settle(self, reservation: Reservation, actual_usd: float, *, input_tokens: int | None = None,
                     output_tokens: int | None = None, model: str | None = None,
                     error: bool = False) -> None: ...

    async def release(self, reservation: Reservation) -> None:
        """Return the whole reservation (the request failed): the ledger counts an error."""
        await self.settle(reservation, 0.0, input_tokens=0, output_tokens=0, error=True)

    @abstractmethod
    async def record_hit(self, tenant: str, user: str, model: str) -> None:
        """A request answered from the cache: into the ledger (no limit is reserved for it)."""

    @abstractmethod
    async def usage(self, tenant: str, user: str) -> dict[str, Any]: ...

    @abstractmethod
    async def ledger(self, days: Sequence[str], tenant: str | None = None,
                     ) -> dict[tuple[str, str], dict[str, int]]:
        """The ledger's hashes: (day, tenant) -> {"{user}|{model}|{metric}": value}."""

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


# --- memory ------------------------------------------------------------------------------------


class MemoryBudget(Budget):
    """Counters in this process. No `await` inside an operation, so each is atomic on the loop."""

    store = "memory"
    PURGE_SECONDS = 60.0

    def __init__(self, limits: Limits, *, clock: Clock = time.time, lease_seconds: float = LEASE_SECONDS,
                 ledger_days: int | None = None, store_name: str = "memory") -> None:
        super().__init__(limits, clock=clock, lease_seconds=lease_seconds, ledger_days=ledger_days)
        self.store = store_name
        self._cells: dict[str, list[int]] = {}  # key -> [spent, reserved, expire_at]
        self._leases: dict[str, Reservation] = {}
        self._expiries: list[tuple[float, str]] = []  # heap of (deadline, reservation id)
        self._ledger: dict[tuple[str, str], dict[str, int]] = {}
        self._ledger_expiry: dict[tuple[str, str], int] = {}
        self._purged = -math.inf

    def _cell(self, c: Counter) -> list[int]:
        cell = self._cells.get(c.key)
        if cell is None:
            cell = self._cells[c.key] = [0, 0, c.expire_at]
        return cell

    def _housekeeping(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            _, rid = heapq.heappop(self._expiries)
            res = self._leases.pop(rid, None)
            if res is not None:
                for c in res.counters:
                    cell = self._cells.get(c.key)
                    if cell is not None:
                        cell[1] -= c.amount
        if now - self._purged >= self.PURGE_SECONDS:  # windows that are over, as Redis expires them
            self._purged = now
            for key in [k for k, cell in self._cells.items() if cell[2] < now]:
                del self._cells[key]
            for lk in [k for k, exp in self._ledger_expiry.items() if exp < now]:
                del self._ledger_expiry[lk]
                self._ledger.pop(lk, None)

    async def reserve(self, tenant: str, user: str, usd: float, *, tokens: int = 0, key: str | None = None,
                      key_limits: Mapping[str, Any] | None = None, model: str = "") -> Reservation:
        return self.reserve_now(tenant, user, usd, tokens=tokens, key=key, key_limits=key_limits, model=model)

    def reserve_now(self, tenant: str, user: str, usd: float, *, tokens: int = 0, key: str | None = None,
                    key_limits: Mapping[str, Any] | None = None, model: str = "") -> Reservation:
        now = self.clock()
        res = self._new_reservation(tenant, user, usd, tokens, self.store, key=key, key_limits=key_limits,
                                    model=model, now=now)
        self._housekeeping(now)
        cells = [self._cell(c) for c in res.counters]
        counts = [(cell[0], cell[1]) for cell in cells]
        for i, (c, (spent, reserved)) in enumerate(zip(res.counters, counts, strict=True)):
            if c.limit is not None and spent + reserved + c.amount > c.limit:
                raise self._refused(res, i, counts, now)
        for c, cell in zip(res.counters, cells, strict=True):
            cell[1] += c.amount
            cell[2] = max(cell[2], c.expire_at)
        self._leases[res.id] = res
        heapq.heappush(self._expiries, (now + self.lease_seconds, res.id))
        return self._reserved(res, [(cell[0], cell[1]) for cell in cells], now)

    async def settle(self, reservation: Reservation, actual_usd: float, *, input_tokens: int | None = None,
                     output_tokens: int | None = None, model: str | None = None, error: bool = False) -> None:
        self.settle_now(reservation, actual_usd, input_tokens=input_tokens, output_tokens=output_tokens,
                        model=model, error=error)

    def settle_now(self, reservation: Reservation, actual_usd: float, *, input_tokens: int | None = None,
                   output_tokens: int | None = None, model: str | None = None, error: bool = False) -> None:
        _check_amount(actual_usd)
        if reservation.done:
            return
        reservation.done = True
        actual = _micros(actual_usd)
        tokens = None if input_tokens is None and output_tokens is None else \
            (input_tokens or 0) + (output_tokens or 0)
        held = self._leases.pop(reservation.id, None) is not None
        counts = []
        for c, keep in zip(reservation.counters, self._actuals(reservation, actual, tokens), strict=True):
            cell = self._cell(c)
            if held:
                cell[1] -= c.amount
            cell[0] += keep
            counts.append((cell[0], cell[1]))
        if self.ledger_days is not None:
            values = self._ledger_values(actual, input_tokens, output_tokens, error)
            self._add_ledger(reservation.day, reservation.tenant, reservation.user,
                             model or reservation.model, values)
        self._settled(reservation, actual, counts)

    def _add_ledger(self, day: str, tenant: str, user: str, model: str, values: Mapping[str, int]) -> None:
        row = self._ledger.setdefault((day, tenant), {})
        for name, v in ledger_fields(user, model, values):
            row[name] = row.get(name, 0) + v
        self._ledger_expiry[(day, tenant)] = self._ledger_expire(day)

    async def record_hit(self, tenant: str, user: str, model: str) -> None:
        self.record_hit_now(tenant, user, model)

    def record_hit_now(self, tenant: str, user: str, model: str) -> None:
        if self.ledger_days is not None:
            self._add_ledger(utc_day(self.clock()), tenant, user, model, {"requests": 1, "cache_hits": 1})

    async def usage(self, tenant: str, user: str) -> dict[str, Any]:
        return self.usage_now(tenant, user)

    def usage_now(self, tenant: str, user: str) -> dict[str, Any]:
        w, counters = self._usage_counters(tenant, user)
        counts = []
        for c in counters:
            cell = self._cells.get(c.key) or (0, 0)
            counts.append((cell[0], cell[1]))
        return self._usage_body(w, counters, counts, self.store)

    async def ledger(self, days: Sequence[str], tenant: str | None = None,
                     ) -> dict[tuple[str, str], dict[str, int]]:
        wanted = set(days)
        return {k: dict(v) for k, v in self._ledger.items()
                if k[0] in wanted and (tenant is None or k[1] == tenant)}


# --- redis -------------------------------------------------------------------------------------


class RedisBudget(Budget):
    """Counters in Redis, shared by every gateway replica; one Lua script per operation."""

    store = "redis"

    def __init__(self, limits: Limits, url: str, *, fail_open: bool = False, clock: Clock = time.time,
                 lease_seconds: float = LEASE_SECONDS, ledger_days: int | None = None,
                 max_connections: int = 64, socket_timeout: float = 1.0) -> None:
        super().__init__(limits, clock=clock, lease_seconds=lease_seconds, ledger_days=ledger_days)
        # short timeouts: a dead Redis must answer fast, never hang a request; one immediate retry
        # replaces a pooled connection that died with a Redis restart
        self._pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=2.0, socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout, retry=Retry(NoBackoff(), 1),
        )
        self.redis = Redis(connection_pool=self._pool)
        self._reserve = self.redis.register_script(budget_lua.RESERVE)
        self._settle = self.redis.register_script(budget_lua.SETTLE)
        self.fail_open = fail_open
        self._local = MemoryBudget(limits, clock=clock, lease_seconds=lease_seconds, ledger_days=ledger_days,
                                   store_name="local")
        self._local.overrides = lambda tenant: self.overrides(tenant)  # whatever the gateway sets later
        self._last_warning = -math.inf
        self._down = False

    def stop_enforcing(self) -> None:
        super().stop_enforcing()
        self._local.stop_enforcing()

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

    async def reserve(self, tenant: str, user: str, usd: float, *, tokens: int = 0, key: str | None = None,
                      key_limits: Mapping[str, Any] | None = None, model: str = "") -> Reservation:
        now = self.clock()
        res = self._new_reservation(tenant, user, usd, tokens, "redis", key=key, key_limits=key_limits,
                                    model=model, now=now)
        args: list[Any] = [len(res.counters), int(now * 1000), int((now + self.lease_seconds) * 1000),
                           res.lease_member]
        for c in res.counters:
            args += [-1 if c.limit is None else c.limit, c.amount, c.expire_at]
        try:
            out = await self._reserve(keys=[*(c.key for c in res.counters), LEASES_KEY], args=args)
        except STORE_ERRORS as exc:
            self._store_down("reserve", exc)
            return self._local.reserve_now(tenant, user, usd, tokens=tokens, key=key, key_limits=key_limits,
                                           model=model)
        if self._down:
            self._down = False
            log_event(log, "budget store reachable again", logging.WARNING)
        counts = _pairs(out[2:])
        if int(out[0]) == 0:
            raise self._refused(res, int(out[1]) - 1, counts, now)
        return self._reserved(res, counts, now)

    async def settle(self, reservation: Reservation, actual_usd: float, *, input_tokens: int | None = None,
                     output_tokens: int | None = None, model: str | None = None, error: bool = False) -> None:
        if reservation.store == "local":
            self._local.settle_now(reservation, actual_usd, input_tokens=input_tokens,
                                   output_tokens=output_tokens, model=model, error=error)
            return
        _check_amount(actual_usd)
        if reservation.done:
            return
        reservation.done = True
        actual = _micros(actual_usd)
        tokens = None if input_tokens is None and output_tokens is None else \
            (input_tokens or 0) + (output_tokens or 0)
        day, tenant = reservation.day, reservation.tenant
        ledger_on = self.ledger_days is not None
        args: list[Any] = [len(reservation.counters), reservation.lease_member,
                           self._ledger_expire(day) if ledger_on else 0, tenant]
        for c, keep in zip(reservation.counters, self._actuals(reservation, actual, tokens), strict=True):
            args += [c.amount, keep, c.expire_at]
        if ledger_on:
            values = self._ledger_values(actual, input_tokens, output_tokens, error)
            for name, v in ledger_fields(reservation.user, model or reservation.model, values):
                args += [name, v]
        keys = [*(c.key for c in reservation.counters), LEASES_KEY, ledger_key(day, tenant),
                ledger_index(day)]
        try:
            out = await self._settle(keys=keys, args=args)
        except STORE_ERRORS as exc:
            # the answer is already served: never fail it here. The lease returns the reservation later.
            log_event(log, "budget settle lost: store unreachable", logging.ERROR,
                      error=type(exc).__name__, usd=_usd(actual), reserved_usd=reservation.usd)
            return
        self._settled(reservation, actual, _pairs(out[1:]))

    async def record_hit(self, tenant: str, user: str, model: str) -> None:
        if self.ledger_days is None:
            return
        day = utc_day(self.clock())
        key, expire = ledger_key(day, tenant), self._ledger_expire(day)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for name, v in ledger_fields(user, model, {"requests": 1, "cache_hits": 1}):
                    pipe.hincrby(key, name, v)
                pipe.expireat(key, expire)
                pipe.sadd(ledger_index(day), tenant)
                pipe.expireat(ledger_index(day), expire)
                await pipe.execute()
        except STORE_ERRORS as exc:
            log_event(log, "usage ledger: a cache hit was not recorded (store unreachable)", logging.WARNING,
                      error=type(exc).__name__)

    async def usage(self, tenant: str, user: str) -> dict[str, Any]:
        w, counters = self._usage_counters(tenant, user)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for c in counters:
                    pipe.hmget(c.key, "spent", "reserved")
                rows = await pipe.execute()
        except STORE_ERRORS as exc:
            self._store_down("usage", exc)
            return self._local.usage_now(tenant, user)
        counts = [(int(s or 0), int(r or 0)) for s, r in rows]
        return self._usage_body(w, counters, counts, "redis")

    async def ledger(self, days: Sequence[str], tenant: str | None = None,
                     ) -> dict[tuple[str, str], dict[str, int]]:
        try:
            if tenant is None:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for day in days:
                        pipe.smembers(ledger_index(day))
                    members = await pipe.execute()
                pairs = [(day, t.decode()) for day, ts in zip(days, members, strict=True) for t in sorted(ts)]
            else:
                pairs = [(day, tenant) for day in days]
            async with self.redis.pipeline(transaction=False) as pipe:
                for day, t in pairs:
                    pipe.hgetall(ledger_key(day, t))
                rows = await pipe.execute()
        except STORE_ERRORS as exc:
            raise BudgetUnavailable(f"usage store unreachable: {type(exc).__name__}") from exc
        return {p: {k.decode(): int(v) for k, v in row.items()} for p, row in zip(pairs, rows, strict=True)
                if row}

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except STORE_ERRORS as exc:
            raise BudgetUnavailable(f"budget store unreachable: {type(exc).__name__}") from exc

    async def close(self) -> None:
        await self.redis.aclose()
        await self._pool.disconnect()


def _pairs(flat: list[Any]) -> list[tuple[int, int]]:
    return [(int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]


def make_budget(cost_controls: CostControls, redis_url: str | None, *, clock: Clock = time.time,
                lease_seconds: float = LEASE_SECONDS, ledger_days: int | None = None) -> Budget:
    """The budget the environment asks for. Disabled cost controls: counted, never refused."""
    limits = Limits.from_config(cost_controls) if cost_controls.enabled else Limits()
    budget: Budget
    if cost_controls.store == "redis":
        if not redis_url:
            raise ValueError("costControls.store is redis but QLENS_REDIS_URL is not set")
        budget = RedisBudget(limits, redis_url, fail_open=cost_controls.on_store_failure == "failOpen",
                             clock=clock, lease_seconds=lease_seconds, ledger_days=ledger_days)
    else:
        budget = MemoryBudget(limits, clock=clock, lease_seconds=lease_seconds, ledger_days=ledger_days)
    if not cost_controls.enabled:
        budget.stop_enforcing()
    return budget
