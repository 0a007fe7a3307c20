"""A cache that accepts connections and never answers (a deleted pod's IP, a hung process): the
gateway pays the cache's timeout once, then skips the cache for CACHE_RETRY_SECONDS, instead of
on every request. Counted at the black hole: how many lookups reached it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from services.gateway.peers import CACHE_RETRY_SECONDS

CHAT = "/v1/chat/completions"


class BlackHole:
    """Accepts TCP connections, reads, never writes; counts the connections."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def test_an_unanswering_cache_is_skipped_after_one_timeout(make_stack, black_hole: BlackHole) -> None:
    stack = make_stack(extra_env={"QLENS_CACHE_URL": f"http://127.0.0.1:{black_hole.port}"})
    before = black_hole.connections  # readiness probes also knock
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as gw:
        answers = [gw.post(CHAT, json={"model": "echo", "messages": [{"role": "user", "content": f"q{i}"}]})
                   for i in range(20)]
    assert [r.status_code for r in answers] == [200] * 20
    assert {r.headers["x-qlens-cache"] for r in answers} == {"bypass"}
    # 20 requests within a few seconds: the first waits out the timeout, the rest skip the cache
    # (at most one more try per CACHE_RETRY_SECONDS); the pool opens one connection per try
    lookups = black_hole.connections - before
    assert 1 <= lookups <= 1 + int(5 / CACHE_RETRY_SECONDS), lookups
    assert "cache unreachable" in stack.log("gateway")
