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
BUDGET_LIMIT = Gauge("qlens_budget_limit_usd", "Daily limit in USD (scopes that have one)", ["scope"])

# --- what LLM users feel (observed by the router, per public model) -------------------------------
# TTFT: request start to the first streamed chunk; for a non-stream, the whole answer.
# TPOT: the rest of the answer over the output tokens after the first (a non-stream: whole answer
# over all output tokens).
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 20, 30, 60)
TPOT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1)
TIME_TO_FIRST_TOKEN = Histogram(
    "qlens_time_to_first_token_seconds", "Time to the first token (non-streams: the whole answer)", ["model"],
    buckets=TTFT_BUCKETS,
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "qlens_time_per_output_token_seconds", "Time per output token after the first", ["model"],
    buckets=TPOT_BUCKETS,
)
PROVIDER_UP = Gauge(
    "qlens_provider_up", "1 when the deployment's circuit is closed and its last call succeeded",
    ["provider", "deployment"],
)

# --- per tenant, only for the tenants in observability.tenantLabels (the rest are "other") ---------
TENANT_TOKENS = Counter("qlens_tenant_tokens_total", "Tokens by allow-listed tenant", ["tenant", "kind"])
TENANT_COST = Counter("qlens_tenant_cost_usd_total", "Spend in USD by allow-listed tenant", ["tenant"])
OTHER_TENANT = "other"


class TenantLabel:
    """The label value for a tenant: itself when allow-listed, else "other" (bounded cardinality)."""

    def __init__(self, allowed: list[str]) -> None:
        self.allowed = frozenset(allowed)

    def __call__(self, tenant: str) -> str:
        return tenant if tenant in self.allowed else OTHER_TENANT


def observe_llm_latency(model: str, first_token: float, total: float, output_tokens: int,
                        stream: bool) -> None:
    """TTFT and TPOT of one answer (`first_token` and `total` in seconds since the request began)."""
    TIME_TO_FIRST_TOKEN.labels(model).observe(first_token)
    if stream:
        if output_tokens > 1:
            TIME_PER_OUTPUT_TOKEN.labels(model).observe(max(total - first_token, 0.0) / (output_tokens - 1))
    elif output_tokens > 0:
        TIME_PER_OUTPUT_TOKEN.labels(model).observe(total / output_tokens)


def render_metrics() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
