"""When to retry a provider call and how long to wait before the next attempt.

Retryable: connection errors, timeouts, 408, 429 and 5xx. A 4xx that describes the request (400,
413, 422) is the client's problem and goes straight back; 401/403/404 from a provider mean that
deployment is misconfigured, so another deployment or a fallback model may still answer.
"""

from __future__ import annotations

import random
from enum import StrEnum


class FailureKind(StrEnum):
    """How a failed provider call is handled. The value is the metrics `outcome` label."""

    CONNECT = "connect_error"  # retry; counts against the circuit
    TIMEOUT = "timeout"  # retry; counts against the circuit
    RATE_LIMITED = "rate_limited"  # retry (429); counts against the circuit
    SERVER = "server_error"  # retry (5xx); counts against the circuit
    DEPLOYMENT = "deployment_error"  # 401/403/404, malformed answer: try elsewhere; counts too
    CLIENT = "client_error"  # the request itself is bad: answer the client; the circuit is untouched

    @property
    def retryable(self) -> bool:
        return self in (
            FailureKind.CONNECT,
            FailureKind.TIMEOUT,
            FailureKind.RATE_LIMITED,
            FailureKind.SERVER,
        )


def kind_for_status(status: int) -> FailureKind:
    if status == 429:
        return FailureKind.RATE_LIMITED
    if status == 408:
        return FailureKind.TIMEOUT
    if status >= 500:
        return FailureKind.SERVER
    if status in (401, 403, 404):
        return FailureKind.DEPLOYMENT
    return FailureKind.CLIENT


def backoff_seconds(attempt: int, base_ms: float, max_ms: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter before retry number `attempt` (1 = first retry).

    The ceiling doubles each time (base, 2*base, 4*base, ...) up to `max_ms`; the wait is uniform
    in [0, ceiling] so that many clients retrying together spread out instead of arriving in waves.
    """
    ceiling = min(max_ms, base_ms * (2 ** max(attempt - 1, 0)))
    return (rng or random).uniform(0, ceiling) / 1000.0
