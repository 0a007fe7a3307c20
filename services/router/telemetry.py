"""Metric children cached by label values: `Metric.labels()` validates and locks on every call,
which shows in the per-request profile. Every label value used here is bounded (deployments and
models from the catalog, a fixed set of outcomes and statuses), so the cache is bounded too."""

from __future__ import annotations

from typing import Any

_children: dict[tuple[Any, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    key = (metric, labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found
