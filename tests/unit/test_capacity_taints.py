"""Which nodes preflight counts: a NoSchedule/NoExecute taint the release does not tolerate makes a
node offer nothing (qlensctl/capacity.py), with the scheduler's toleration rules."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from qlensctl.capacity import _schedulable_for

GPU = SimpleNamespace(key="pool", value="gpu", effect="NoSchedule")


def node(*taints: SimpleNamespace) -> SimpleNamespace:
    return SimpleNamespace(spec=SimpleNamespace(taints=list(taints)))


@pytest.mark.parametrize(("toleration", "fits"), [
    ({"key": "pool", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}, True),
    ({"key": "pool", "operator": "Equal", "value": "gpu"}, True),  # no effect: every effect
    ({"key": "pool", "operator": "Exists"}, True),
    ({"operator": "Exists"}, True),  # no key with Exists: every taint
    ({"key": "pool", "operator": "Equal", "value": "cpu", "effect": "NoSchedule"}, False),
    ({"key": "pool", "operator": "Exists", "effect": "NoExecute"}, False),
    ({"key": "other", "operator": "Exists"}, False),
])
def test_a_tainted_node_counts_only_when_its_taint_is_tolerated(toleration: dict[str, str],
                                                                fits: bool) -> None:
    assert _schedulable_for(node(GPU), [toleration]) is fits


def test_untainted_and_prefer_no_schedule_nodes_always_count() -> None:
    assert _schedulable_for(node(), [])
    assert _schedulable_for(node(SimpleNamespace(key="soft", value="", effect="PreferNoSchedule")), [])
    assert not _schedulable_for(node(GPU), [])
