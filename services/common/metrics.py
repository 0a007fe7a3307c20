"""Prometheus metrics (prefix `qlens_`) with the names DESIGN.md fixes, shared by all services.

Each service process registers only what it touches; the definitions live here once so names and
labels cannot drift between services. Labels are bounded: never request ids, never raw tenant ids.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter("qlens_requests_total", "HTTP requests served", ["service", "route", "status"])
REQUEST_DURATION = Histogram(
    "qlens_request_duration_seconds", "HTTP request duration", ["service", "route"], buckets=LATENCY_BUCKETS
)
PROVIDER_REQUESTS = Counter(
    "qlens_provider_requests_total", "Provider calls by outcome", ["provider", "deployment", "outcome"]
)
PROVIDER_LATENCY = Histogram(
    "qlens_provider_latency_seconds", "Provider call latency", ["provider", "deployment"],
    buckets=LATENCY_BUCKETS,
)
CIRCUIT_STATE = Gauge("qlens_circuit_state", "Circuit state: 0 closed, 1 half-open, 2 open", ["deployment"])
RETRIES = Counter("qlens_retries_total", "Provider calls retried")
FALLBACKS = Counter("qlens_fallbacks_total", "Requests served by a fallback model")
TOKENS = Counter("qlens_tokens_total", "Tokens processed", ["model", "kind"])
COST = Counter("qlens_cost_usd_total", "Spend in USD", ["scope"])
BUDGET_REMAINING = Gauge("qlens_budget_remaining_usd", "Remaining daily budget in USD", ["scope"])
CACHE_REQUESTS = Counter("qlens_cache_requests_total", "Cache lookups by result", ["result"])
GATEWAY_OVERHEAD = Histogram(
    "qlens_gateway_overhead_seconds", "Time spent in QLens, provider excluded", buckets=LATENCY_BUCKETS
)


def render_metrics() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
