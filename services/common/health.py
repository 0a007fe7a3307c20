"""Liveness and readiness bodies, the same shape on every service.

/health answers while the process runs (no dependency checked); /health/ready runs the service's
checks and answers 200 only when all pass, naming each check in the body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Check = Callable[[], Awaitable[Any]]


def liveness(service: str) -> dict[str, Any]:
    return {"status": "ok", "service": service}


async def readiness(service: str, checks: dict[str, Check], timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
    async def run(check: Check) -> dict[str, Any]:
        try:
            detail = await asyncio.wait_for(check(), timeout)
            out: dict[str, Any] = {"ok": True}
            if detail not in (None, True):
                out["detail"] = detail
            return out
        except Exception as exc:  # a failed check is data, not an error
            return {"ok": False, "error": str(exc) or type(exc).__name__}

    names = list(checks)
    results = await asyncio.gather(*(run(checks[n]) for n in names))
    body = {"service": service, "checks": dict(zip(names, results, strict=True))}
    ready = all(r["ok"] for r in results)
    body["status"] = "ready" if ready else "not ready"
    return (200 if ready else 503), body
