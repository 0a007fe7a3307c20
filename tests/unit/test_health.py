"""services/common/health.py: required vs optional (degraded) checks, the drain, the version."""

from __future__ import annotations

import asyncio

import pytest

from services.common import health


async def ok() -> str:
    return "fine"


async def down() -> None:
    raise ConnectionError("connection refused")


def test_a_failing_optional_check_is_degraded_not_unready():
    status, body = asyncio.run(health.readiness("gateway", {"router": ok}, optional={"cache": down}))
    assert status == 200
    assert body == {"service": "gateway", "status": "ready", "degraded": ["cache"], "checks": {
        "router": {"ok": True, "detail": "fine"},
        "cache": {"ok": False, "error": "connection refused", "optional": True, "status": "degraded"}}}
    assert health.DEPENDENCY_UP.labels("gateway", "cache")._value.get() == 0
    assert health.DEPENDENCY_UP.labels("gateway", "router")._value.get() == 1


def test_a_failing_required_check_is_unready():
    status, body = asyncio.run(health.readiness("gateway", {"router": down}, optional={"cache": ok}))
    assert status == 503 and body["status"] == "not ready" and "degraded" not in body


def test_draining_is_unready_whatever_the_checks(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(health.drain, "active", True)
    assert asyncio.run(health.readiness("router", {"x": ok})) == (
        503, {"service": "router", "status": "draining", "checks": {}})


def test_liveness_names_the_version_that_answers(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("QLENS_VERSION", raising=False)
    assert health.liveness("cache") == {"status": "ok", "service": "cache"}
    monkeypatch.setenv("QLENS_VERSION", "v1.2.3")
    assert health.liveness("cache") == {"status": "ok", "service": "cache", "version": "v1.2.3"}
