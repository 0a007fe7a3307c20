"""Liveness and readiness bodies, the same shape on every service.

/health answers while the process runs (no dependency checked); /health/ready runs the service's
checks and answers 200 only when all pass, naming each check in the body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

Check = Callable[[], Awaitable[Any]]


def liveness(service: str) -> dict[str, Any]:
    return {"status": "ok", "service": service}


async def readiness(
    service: str,
    checks: Mapping[str, Check],
    timeout: float = 2.0,
    optional: Mapping[str, Check] | None = None,
) -> tuple[int, dict[str, Any]]:
    """(status, body). `optional` checks are reported (with `"optional": true`) but do not make the
    service unready: e.g. a store the service can run without under its configured policy."""
    async def run(check: Check) -> dict[str, Any]:
        try:
            detail = await asyncio.wait_for(check(), timeout)
            out: dict[str, Any] = {"ok": True}
            if detail not in (None, True):
                out["detail"] = detail
            return out
        except Exception as exc:  # a failed check is data, not an error
            return {"ok": False, "error": str(exc) or type(exc).__name__}

    extra = optional or {}
    names = list(checks) + [n for n in extra if n not in checks]
    results = await asyncio.gather(*(run(checks[n] if n in checks else extra[n]) for n in names))
    for name, result in zip(names, results, strict=True):
        if name not in checks:
            result["optional"] = True
    body = {"service": service, "checks": dict(zip(names, results, strict=True))}
    ready = all(r["ok"] for n, r in zip(names, results, strict=True) if n in checks)
    body["status"] = "ready" if ready else "not ready"
    return (200 if ready else 503), body
