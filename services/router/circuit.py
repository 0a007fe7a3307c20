"""A circuit breaker per deployment: stop sending traffic to a deployment that keeps failing.

closed     every call goes through; `failure_threshold` consecutive failures open the circuit.
open       no call goes through until `cooldown_seconds` have passed since it opened.
half-open  one probe call goes through; success closes the circuit, failure re-opens it.

Only the probe's outcome moves an open or half-open circuit. Calls let through while it was
still closed may finish long after it opened (a slow call outliving three fast failures): their
results are stale, so they are ignored; otherwise one old success would close the circuit the
moment it opened. `acquire()` hands out a `Permit` that the caller gives back with the outcome,
which is how the breaker tells the probe from those older calls.

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


class Permit:
    """The right to one call, from `acquire()`; passed back with the call's outcome."""

    __slots__ = ("probe",)

    def __init__(self, probe: bool) -> None:
        self.probe = probe


_CLOSED_CALL = Permit(probe=False)  # every call through a closed circuit shares this one


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
        self._probe: Permit | None = None  # the half-open probe in flight

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
        return state is State.HALF_OPEN and self._probe is None

    def acquire(self) -> Permit | None:
        """Reserve the right to call (in half-open: the single probe); None when refused."""
        if not self.available():
            return None
        if self._state is State.HALF_OPEN:
            self._probe = Permit(probe=True)
            return self._probe
        return _CLOSED_CALL

    def _is_probe(self, permit: Permit | None) -> bool:
        """Whether this outcome is the probe's. Without a permit (a caller making one call at a
        time, as the unit tests do) the probe in flight is assumed to be the caller's."""
        return self._probe is not None and (permit is None or permit is self._probe)

    def record_success(self, permit: Permit | None = None) -> None:
        if self._state is State.CLOSED:
            self._failures = 0
        elif self._is_probe(permit):
            self._failures = 0
            self._probe = None
            self._set(State.CLOSED)
        # else: a call let through before the circuit opened; its success says nothing about now

    def record_failure(self, permit: Permit | None = None) -> None:
        if self._state is State.CLOSED:
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._open()
        elif self._is_probe(permit):
            self._failures += 1
            self._probe = None
            self._open()
        # else: an older call failing while the circuit is already open: nothing new

    def release(self, permit: Permit | None = None) -> None:
        """The call ended without saying anything about the deployment's health (e.g. a 400)."""
        if self._is_probe(permit):
            self._probe = None

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._set(State.OPEN)

    def _set(self, state: State) -> None:
        self._state = state
        if self._on_change is not None:
            self._on_change(state)
