"""Fixtures shared by the whole suite. Every process a test starts, it stops."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer

# fixture modules, each owned by one area of the suite
pytest_plugins = ["tests.k8s.fixtures", "tests.support.stack", "tests.k8s.harness"]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server per test (starts in ~20 ms)."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()
