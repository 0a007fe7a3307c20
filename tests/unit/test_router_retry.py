"""Which failures are retried, and the backoff between attempts."""

from __future__ import annotations

import random

import pytest

from services.router.retry import FailureKind, backoff_seconds, kind_for_status


@pytest.mark.parametrize(
    "status,kind,retryable",
    [
        (429, FailureKind.RATE_LIMITED, True),
        (500, FailureKind.SERVER, True),
        (503, FailureKind.SERVER, True),
        (408, FailureKind.TIMEOUT, True),
        (400, FailureKind.CLIENT, False),
        (413, FailureKind.CLIENT, False),
        (401, FailureKind.DEPLOYMENT, False),
        (404, FailureKind.DEPLOYMENT, False),
    ],
)
def test_status_classification(status, kind, retryable):
    assert kind_for_status(status) is kind
    assert kind.retryable is retryable


def test_backoff_grows_exponentially_and_is_capped():
    rng = random.Random(0)
    for attempt, ceiling in [(1, 0.05), (2, 0.1), (3, 0.2), (4, 0.4), (10, 1.0)]:
        samples = [backoff_seconds(attempt, 50, 1000, rng) for _ in range(300)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # jitter spans the range, not a fixed wait


def test_backoff_jitter_is_reproducible_with_a_seed():
    a = [backoff_seconds(2, 100, 2000, random.Random(4)) for _ in range(3)]
    b = [backoff_seconds(2, 100, 2000, random.Random(4)) for _ in range(3)]
    assert a == b


def test_zero_base_means_no_wait():
    assert backoff_seconds(3, 0, 1000, random.Random(1)) == 0
