"""Start a service with uvicorn: `python -m services.<name>` calls `serve`.

Host and port come from QLENS_HOST / QLENS_PORT (defaults: 0.0.0.0 in a container, ports from
DESIGN.md). uvloop and httptools are used when installed: they are most of uvicorn's speed.
SIGTERM lets in-flight requests finish (uvicorn's graceful shutdown) within the pod's grace.

The HTTP protocol is uvicorn's httptools one with time and size limits on reading a request
(services/common/http_limits.py): a slow or oversized request cannot hold a connection forever.
No service speaks WebSocket, so upgrades are off.

Per-request extras are off where nobody reads them: the `server: uvicorn` header everywhere, and
for the internal services (router, cache: only the gateway calls them, never through a proxy)
X-Forwarded-* parsing and the `date` header. The public gateway keeps both.
"""

from __future__ import annotations

import os

DEFAULT_PORTS = {"gateway": 8080, "router": 8081, "cache": 8082}
INTERNAL = frozenset({"router", "cache"})


def serve(service: str, factory: str) -> None:
    import uvicorn

    from services.common.http_limits import BoundedHttpToolsProtocol

    host = os.environ.get("QLENS_HOST", "0.0.0.0")
    port = int(os.environ.get("QLENS_PORT", DEFAULT_PORTS[service]))
    public = service not in INTERNAL
    uvicorn.run(
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
