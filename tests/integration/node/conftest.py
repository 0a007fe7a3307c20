"""Tests on the real node (tests/k8s/node): pods really run, probes really probe, traffic really
flows. One node per test session (`real_node`, tests/k8s/fixtures.py); `pytest -m node` runs
these alone. They need root and fail (never skip) when the node cannot start."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/node/" in str(item.path):
            item.add_marker(pytest.mark.node)
