"""A circuit breaker per deployment: stop sending traffic to a deployment that keeps failing.

closed     every call goes through; `failure_threshold` consecutive failures open the circuit.
open       no call goes through until `cooldown_seconds` have passed since it opened.
half-open  one probe call goes through; success closes the circuit, failure re-opens it.

Plain Python with an injectable clock, so the state machine is tested without sleeping. The
router is one asyncio event loop: `available()` and `acquire()` run without an await between them,
so no lock is needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum


class State(IntEnum):
    """Values are the ones `qlens_circuit_state` exports."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int,
        cooldown_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[State], None] | None = None,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown_seconds = cooldown_seconds
        self._clock = clock
        self._on_change = on_change
        self._state = State.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> State:
        """The current state; an open circuit whose cooldown has passed reads as half-open."""
        if self._state is State.OPEN and self._clock() - self._opened_at >= self.cooldown_seconds:
            self._set(State.HALF_OPEN)
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def available(self) -> bool:
        """Would a call be let through now? Does not reserve anything."""
        state = self.state
        if state is State.CLOSED:
            return True
        return state is State.HALF_OPEN and not self._probe_in_flight

    def acquire(self) -> bool:
        """Reserve the right to call; in half-open that is the single probe."""
        if not self.available():
            return False
        if self._state is State.HALF_OPEN:
            self._probe_in_flight = True
        return True

    def record_success(self) -> None:
        self._failures = 0
        self._probe_in_flight = False
        if self._state is not State.CLOSED:
            self._set(State.CLOSED)

    def record_failure(self) -> None:
        self._probe_in_flight = False
        self._failures += 1
        if self._state is State.HALF_OPEN or (
            self._state is State.CLOSED and self._failures >= self.failure_threshold
        ):
            self._opened_at = self._clock()
            self._set(State.OPEN)

    def release(self) -> None:
        """The call ended without saying anything about the deployment's health (e.g. a 400)."""
        self._probe_in_flight = False

    def _set(self, state: State) -> None:
        self._state = state
        if self._on_change is not None:
            self._on_change(state)
