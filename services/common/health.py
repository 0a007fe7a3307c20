"""Liveness and readiness bodies, the same shape on every service, and the drain state.

/health answers while the process runs (no dependency checked) and names the version that answers
(QLENS_VERSION, the image tag the chart sets: after an emergency rollback it shows which version
serves). /health/ready runs the service's checks and answers 200 only when all required ones pass,
naming each check in the body. A failed optional check is `degraded`: reported, counted in
`qlens_dependency_up`, but the service stays Ready (e.g. the gateway without its cache, which it
bypasses).

Once the process got SIGTERM (services/common/server.py) it is draining: readiness answers 503 at
once, so whatever still routes by readiness stops sending new work while in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from prometheus_client import Gauge

Check = Callable[[], Awaitable[Any]]

DEPENDENCY_UP = Gauge("qlens_dependency_up", "Readiness check result: 1 ok, 0 failing",
                      ["service", "dependency"])


class _Drain:
    """Set once, by the SIGTERM handler; read by readiness and the HTTP protocol."""

    active = False


drain = _Drain()


def liveness(service: str) -> dict[str, Any]:
    body: dict[str, Any] = {"status": "ok", "service": service}
    version = os.environ.get("QLENS_VERSION")
    if version:
        body["version"] = version
    return body


async def readiness(
    service: str,
    checks: Mapping[str, Check],
    timeout: float = 2.0,
    optional: Mapping[str, Check] | None = None,
    optional_timeout: float = 0.5,
) -> tuple[int, dict[str, Any]]:
    """(status, body). `optional` checks are reported (with `"optional": true`, and
    `"status": "degraded"` when failing) but do not make the service unready. They get a shorter
    `optional_timeout`: a hung optional peer must not make this endpoint slower than the kubelet's
    probe timeout (2 s in the chart), which would turn "degraded" into "not ready"."""
    if drain.active:
        return 503, {"service": service, "status": "draining", "checks": {}}

    async def run(check: Check, limit: float) -> dict[str, Any]:
        try:
            detail = await asyncio.wait_for(check(), limit)
            out: dict[str, Any] = {"ok": True}
            if detail not in (None, True):
                out["detail"] = detail
            return out
        except Exception as exc:  # a failed check is data, not an error
            return {"ok": False, "error": str(exc) or type(exc).__name__}

    extra = optional or {}
    names = list(checks) + [n for n in extra if n not in checks]
    results = await asyncio.gather(*(run(checks[n], timeout) if n in checks
                                     else run(extra[n], optional_timeout) for n in names))
    degraded = []
    for name, result in zip(names, results, strict=True):
        DEPENDENCY_UP.labels(service, name).set(1 if result["ok"] else 0)
        if name not in checks:
            result["optional"] = True
            if not result["ok"]:
                result["status"] = "degraded"
                degraded.append(name)
    body: dict[str, Any] = {"service": service, "checks": dict(zip(names, results, strict=True))}
    ready = all(r["ok"] for n, r in zip(names, results, strict=True) if n in checks)
    body["status"] = "ready" if ready else "not ready"
    if degraded:
        body["degraded"] = degraded
    return (200 if ready else 503), body
