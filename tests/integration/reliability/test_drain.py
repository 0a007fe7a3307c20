"""SIGTERM with a drain phase (QLENS_DRAIN_SECONDS, what the chart sets for rolling deploys).

For the drain the process keeps serving, readiness answers 503 `draining`, and every answer carries
`connection: close` so keep-alive clients reconnect elsewhere; then the listener closes and the
process exits by itself. Without the variable (local use) SIGTERM shuts down at once, as
test_process_faults checks.
"""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from qlensctl.local import pid_running
from tests.integration.reliability.support import CHAT, chat, restart_service, wait_for

pytestmark = pytest.mark.timeout(120)

DRAIN_SECONDS = 5


def test_sigterm_drains_then_exits(make_stack):
    stack = make_stack()
    stack.stop_service("gateway")
    gateway = restart_service(stack, "gateway", {"QLENS_DRAIN_SECONDS": str(DRAIN_SECONDS)})
    with httpx.Client(base_url=stack.gateway_url, timeout=10) as client:
        before = client.post(CHAT, json=chat("before the drain"))
        assert before.status_code == 200 and "connection" not in before.headers  # kept alive
        assert client.get("/health/ready").status_code == 200

        os.kill(gateway.pid, signal.SIGTERM)
        assert wait_for(lambda: client.get("/health/ready").status_code == 503, DRAIN_SECONDS, 0.05)
        draining = {"service": "gateway", "status": "draining", "checks": {}}
        assert client.get("/health/ready").json() == draining
        during = client.post(CHAT, json=chat("during the drain"))  # still served, on a new connection
        assert during.status_code == 200 and during.headers["connection"] == "close"
        assert during.json()["choices"][0]["message"]["content"] == "Echo: during the drain"

    assert wait_for(lambda: not pid_running(gateway.pid), DRAIN_SECONDS + 30), "the gateway did not exit"
    with pytest.raises(httpx.ConnectError):
        httpx.get(stack.gateway_url + "/health", timeout=2)
    assert "Traceback" not in stack.log("gateway")
