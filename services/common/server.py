"""Start a service with uvicorn: `python -m services.<name>` calls `serve`.

Host and port come from QLENS_HOST / QLENS_PORT (defaults: 0.0.0.0 in a container, ports from
DESIGN.md). uvloop and httptools are used when installed: they are most of uvicorn's speed.
SIGTERM starts a drain (QLENS_DRAIN_SECONDS: readiness 503, `connection: close` on every answer,
still serving), then uvicorn's graceful shutdown lets in-flight requests finish within
QLENS_GRACEFUL_SECONDS; the chart sizes both to fit terminationGracePeriodSeconds.

The HTTP protocol is uvicorn's httptools one with time and size limits on reading a request
(services/common/http_limits.py): a slow or oversized request cannot hold a connection forever.
No service speaks WebSocket, so upgrades are off.

Per-request extras are off where nobody reads them: the `server: uvicorn` header everywhere, and
for the internal services (router, cache: only the gateway calls them, never through a proxy)
X-Forwarded-* parsing and the `date` header. The public gateway keeps both.
"""

from __future__ import annotations

import os
import signal
import time
from types import FrameType

import uvicorn

from services.common.health import drain

DEFAULT_PORTS = {"gateway": 8080, "router": 8081, "cache": 8082}
INTERNAL = frozenset({"router", "cache"})


def serve(service: str, factory: str) -> None:
    from services.common.http_limits import BoundedHttpToolsProtocol

    host = os.environ.get("QLENS_HOST", "0.0.0.0")
    port = int(os.environ.get("QLENS_PORT", DEFAULT_PORTS[service]))
    public = service not in INTERNAL
    config = uvicorn.Config(
        factory,
        factory=True,
        host=host,
        port=port,
        loop="auto",
        http=BoundedHttpToolsProtocol,
        ws="none",
        access_log=False,
        proxy_headers=public,
        server_header=False,
        date_header=public,
        log_config=None,
        timeout_graceful_shutdown=int(os.environ.get("QLENS_GRACEFUL_SECONDS", "25")),
        timeout_keep_alive=30,
    )
    DrainingServer(config, float(os.environ.get("QLENS_DRAIN_SECONDS", "0"))).run()


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain phase before its graceful shutdown.

    The first SIGTERM does not stop the listener: for `drain_seconds` the process keeps accepting
    and serving, while readiness answers 503 (services/common/health.py) and every response
    carries `connection: close` (http_limits.py), so load balancers and keep-alive clients move
    to other pods. Only then does uvicorn's own shutdown run: stop listening, let in-flight
    requests finish within QLENS_GRACEFUL_SECONDS. A second signal (or SIGINT) exits as uvicorn
    always did. The chart's preStop delay covers the time endpoints take to update; the drain
    covers whatever still arrives after it.
    """

    def __init__(self, config: uvicorn.Config, drain_seconds: float) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self._drain_until: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.drain_seconds > 0 and self._drain_until is None:
            drain.active = True
            self._drain_until = time.monotonic() + self.drain_seconds
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None and time.monotonic() >= self._drain_until:
            self._drain_until = float("inf")  # once
            self._captured_signals.append(signal.SIGTERM)  # re-raised after exit, as uvicorn does
            self.should_exit = True
        return await super().on_tick(counter)
