"""The circuit breaker's state machine, driven by a hand-moved clock."""

from __future__ import annotations

from services.router.circuit import CircuitBreaker, State


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock, changes=None, threshold=3, cooldown=10.0):
    on_change = changes.append if changes is not None else None
    return CircuitBreaker(threshold, cooldown, clock=clock, on_change=on_change)


def test_opens_after_threshold_consecutive_failures():
    clock, changes = Clock(), []
    b = breaker(clock, changes)
    for _ in range(2):
        assert b.acquire()
        b.record_failure()
    assert b.state is State.CLOSED
    b.record_failure()
    assert b.state is State.OPEN
    assert not b.available() and not b.acquire()
    assert changes == [State.OPEN]


def test_success_resets_the_failure_count():
    b = breaker(Clock())
    b.record_failure()
    b.record_failure()
    b.record_success()
    b.record_failure()
    b.record_failure()
    assert b.state is State.CLOSED
    assert b.consecutive_failures == 2


def test_half_open_after_cooldown_lets_one_probe_through():
    clock, changes = Clock(), []
    b = breaker(clock, changes, threshold=1)
    b.record_failure()
    clock.now += 9.9
    assert b.state is State.OPEN
    clock.now += 0.1
    assert b.state is State.HALF_OPEN
    assert b.acquire()  # the probe
    assert not b.available() and not b.acquire()  # nobody else while it runs
    b.record_success()
    assert b.state is State.CLOSED
    assert changes == [State.OPEN, State.HALF_OPEN, State.CLOSED]


def test_failed_probe_reopens_for_another_cooldown():
    clock = Clock()
    b = breaker(clock, threshold=1)
    b.record_failure()
    clock.now += 10
    assert b.acquire()
    b.record_failure()
    assert b.state is State.OPEN
    clock.now += 5
    assert b.state is State.OPEN
    clock.now += 5
    assert b.state is State.HALF_OPEN


def test_released_probe_frees_the_slot():
    clock = Clock()
    b = breaker(clock, threshold=1)
    b.record_failure()
    clock.now += 10
    assert b.acquire()
    b.release()  # e.g. the provider rejected the request itself: nothing learned
    assert b.state is State.HALF_OPEN and b.acquire()


def test_state_values_match_the_metric():
    assert [int(State.CLOSED), int(State.HALF_OPEN), int(State.OPEN)] == [0, 1, 2]
    assert State.HALF_OPEN.label == "half-open"


def test_an_older_call_succeeding_does_not_close_an_open_circuit():
    """A slow call let through while closed finishes after failures opened the circuit: its success
    is stale. Only the half-open probe's outcome may close the circuit (or reopen it)."""
    clock, changes = Clock(), []
    b = breaker(clock, changes, threshold=2)
    slow = b.acquire()
    assert slow is not None and not slow.probe
    for _ in range(2):
        b.record_failure(b.acquire())
    assert b.state is State.OPEN
    b.record_success(slow)
    assert b.state is State.OPEN and not b.available()
    clock.now += 10
    probe = b.acquire()
    assert probe is not None and probe.probe
    older = b.acquire()
    assert older is None  # one probe at a time
    b.record_success(slow)  # still not the probe: nothing changes
    b.record_failure(slow)
    assert b.state is State.HALF_OPEN and not b.available()
    b.record_success(probe)
    assert b.state is State.CLOSED
    assert changes == [State.OPEN, State.HALF_OPEN, State.CLOSED]
