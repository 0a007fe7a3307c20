"""The `make` fixture both budget-store test modules use: one factory per backend (memory, and the
session's real redis-server), every budget it made closed after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from services.gateway.budget import Budget, Limits, MemoryBudget, RedisBudget

# the Lua round trips of a loaded 2-core CI machine can be slow; a timeout here is not the test's point
SLOW_MACHINE_TIMEOUT = 10.0

Factory = Callable[..., Budget]


@pytest.fixture(params=["memory", "redis"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    made: list[Budget] = []
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None

    def factory(lims: Limits, **kwargs) -> Budget:
        if server is None:
            budget: Budget = MemoryBudget(lims, **kwargs)
        else:
            budget = RedisBudget(lims, server.url, socket_timeout=SLOW_MACHINE_TIMEOUT, **kwargs)
        made.append(budget)
        return budget

    yield factory
    for budget in made:
        await budget.close()
