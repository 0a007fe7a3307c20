"""The usage ledger, read side: date ranges and rollups of the per-day x tenant hashes.

The write side is the budget's settle (services/gateway/budget.py): every finished request adds
to the hash of its UTC day and tenant, fields `{user}|{model}|{metric}`. A report reads the hashes
of the days asked for and sums them by any of day, tenant, user and model. Pure functions: the
admin API (/admin/v1/usage), the client API (/v1/usage?from=&to=) and the tests share them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from typing import Any

from services.gateway.budget import LEDGER_METRICS, MICROS_PER_USD, utc_day

DIMENSIONS = ("day", "tenant", "user", "model")
MAX_RANGE_DAYS = 400


class RangeError(ValueError):
    """A bad from/to/by: the API answers 400 with this message."""


def days_between(start: str | None, end: str | None, today: str) -> list[str]:
    """The UTC days from..to inclusive (YYYY-MM-DD); default: the 1st of this month .. today."""
    try:
        to = date.fromisoformat(end) if end else date.fromisoformat(today)
        frm = date.fromisoformat(start) if start else to.replace(day=1)
    except ValueError:
        raise RangeError("from and to must be dates such as 2026-11-01") from None
    if frm > to:
        raise RangeError(f"from ({frm}) is after to ({to})")
    span = (to - frm).days + 1
    if span > MAX_RANGE_DAYS:
        raise RangeError(f"the range is {span} days; ask for at most {MAX_RANGE_DAYS} at a time")
    return [(frm + timedelta(days=i)).isoformat() for i in range(span)]


def parse_by(value: str | None, default: str = "day") -> tuple[str, ...]:
    """`by=tenant` or `by=day,model`: the dimensions to group by, in the order given."""
    dims = tuple(d.strip() for d in (value or default).split(",") if d.strip())
    bad = [d for d in dims if d not in DIMENSIONS]
    if not dims or bad or len(set(dims)) != len(dims):
        raise RangeError(f"by must be one or more of {', '.join(DIMENSIONS)} (comma-separated, no repeats)")
    return dims


def rollup(raw: Mapping[tuple[str, str], Mapping[str, int]], by: Sequence[str],
           user: str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows grouped by `by` (sorted by it) and the grand total; `user` keeps only that user's."""
    groups: dict[tuple[str, ...], dict[str, int]] = {}
    total = dict.fromkeys(LEDGER_METRICS, 0)
    for (day, tenant), fields in raw.items():
        for name, value in fields.items():
            parts = name.rsplit("|", 2)
            if len(parts) != 3 or parts[2] not in total:
                continue
            row_user, model, metric = parts
            if user is not None and row_user != user:
                continue
            where = {"day": day, "tenant": tenant, "user": row_user, "model": model}
            group = groups.setdefault(tuple(where[d] for d in by), dict.fromkeys(LEDGER_METRICS, 0))
            group[metric] += value
            total[metric] += value
    rows = [{**dict(zip(by, k, strict=True)), **_with_usd(v)} for k, v in sorted(groups.items())]
    return rows, _with_usd(total)


def _with_usd(metrics: dict[str, int]) -> dict[str, Any]:
    return {**metrics, "cost_usd": round(metrics["cost_micros"] / MICROS_PER_USD, 6)}


async def report(budget: Any, start: str | None, end: str | None, by: str | None, *,
                 tenant: str | None = None, user: str | None = None) -> dict[str, Any]:
    """The body of a usage report (both APIs): range, grouping, rows and total."""
    days = days_between(start, end, utc_day(budget.clock()))
    dims = parse_by(by)
    rows, total = rollup(await budget.ledger(days, tenant), dims, user)
    return {"object": "usage.report", "from": days[0], "to": days[-1], "by": list(dims),
            "data": rows, "total": total}
