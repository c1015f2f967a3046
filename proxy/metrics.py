"""The proxy's request metrics: recorded once per finished request, in memory (docs/operations.md).

Under gunicorn every worker writes its samples to files in PROMETHEUS_MULTIPROC_DIR
and a scrape of /metrics (the site's view of every app's metrics), answered by any worker, adds
them up. Recording costs a few microseconds per request and touches no network.

Labels are bounded: routes, providers and consumers are configured names ("-" when
a request got no further than that), never what a client sent.
"""
from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from prometheus_client import Counter, Gauge, Histogram

from proxy.context import RequestContext

logger = logging.getLogger(__name__)

NONE = "-"
# Errors that admission raised: the request never reached a provider.
REFUSAL_CLASSES = frozenset({"rate_limit_exceeded", "budget_exceeded", "limits_unavailable"})

REQUESTS = Counter("tollgate_requests", "Proxied requests, by outcome.",
                   ["endpoint", "route", "provider", "consumer", "status_class"])
ERRORS = Counter("tollgate_request_errors", "Requests that ended in an error, by error class.",
                 ["route", "provider", "consumer", "error_class"])
FAILOVERS = Counter("tollgate_failovers", "Times a request moved on to another deployment.", ["route"])
RETRIES = Counter("tollgate_retries", "Upstream attempts beyond a request's first.", ["route"])
REFUSALS = Counter("tollgate_rate_limit_refusals", "Requests refused by rate limits or budgets.",
                   ["route", "consumer", "reason"])
TOKENS = Counter("tollgate_tokens", "Tokens, as the providers counted them.",
                 ["route", "provider", "consumer", "kind"])
COST = Counter("tollgate_cost_usd", "Cost at the price table's rates, in US dollars.",
               ["route", "provider", "consumer"])
UPSTREAM_LATENCY = Histogram(
    "tollgate_upstream_latency_seconds",
    "Time spent waiting on providers: the whole answer, or up to the first byte of a stream.",
    ["route", "provider"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
OVERHEAD = Histogram(
    "tollgate_gateway_overhead_seconds",
    "Time spent in the gateway itself (for streams: up to the first byte), excluding the provider.",
    ["route"], buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
TTFT = Histogram("tollgate_time_to_first_token_seconds", "Time from arrival to the first byte of a stream.",
                 ["route", "provider"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
OPEN_STREAMS = Gauge("tollgate_open_streams", "Streams being relayed right now.", ["route"],
                     multiprocess_mode="livesum")
AUDIT_WRITE = Histogram("tollgate_audit_write_seconds", "Time a request waited for its audit event to commit.",
                        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))


_children: dict[tuple, Any] = {}


def _child(metric: Any, *values: str) -> Any:
    """metric.labels(*values), remembered: labels() validates and locks on every call (label sets are bounded)."""
    key = (metric, values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def _status_class(status: int | None) -> str:
    return f"{status // 100}xx" if status else "none"


def _consumer(ctx: RequestContext) -> str:
    if ctx.key is None:
        return NONE
    return ctx.key.consumer_name if settings.TOLLGATE_METRICS_CONSUMER_LABELS else "any"


def request_observe(ctx: RequestContext, *, audit_seconds: float | None = None) -> None:
    """Record one finished request (called once, from proxy.pipeline.request_finish)."""
    try:
        route = ctx.route.model if ctx.route else NONE
        provider = ctx.deployment.provider.name if ctx.deployment else NONE
        consumer = _consumer(ctx)
        _child(REQUESTS, ctx.endpoint, route, provider, consumer, _status_class(ctx.status)).inc()
        if ctx.error_class or (ctx.status or 0) >= 400:
            error_class = ctx.error_class or f"http_{ctx.status}"
            _child(ERRORS, route, provider, consumer, error_class).inc()
            if error_class in REFUSAL_CLASSES:
                _child(REFUSALS, route, consumer, error_class).inc()
        if ctx.failovers:
            _child(FAILOVERS, route).inc(ctx.failovers)
        if ctx.attempts > 1:
            _child(RETRIES, route).inc(ctx.attempts - 1)
        if ctx.attempts:
            _child(UPSTREAM_LATENCY, route, provider).observe(ctx.upstream_seconds)
        if ctx.stream and ctx.first_byte_seconds is not None:
            _child(TTFT, route, provider).observe(ctx.first_byte_seconds)
            _child(OVERHEAD, route).observe(max(0.0, ctx.first_byte_seconds - ctx.upstream_seconds))
        else:
            _child(OVERHEAD, route).observe(ctx.overhead_ms() / 1000.0)
        if ctx.prompt_tokens:
            _child(TOKENS, route, provider, consumer, "prompt").inc(ctx.prompt_tokens)
        if ctx.completion_tokens:
            _child(TOKENS, route, provider, consumer, "completion").inc(ctx.completion_tokens)
        if ctx.cost_microusd:
            _child(COST, route, provider, consumer).inc(ctx.cost_microusd / 1_000_000)
        if audit_seconds is not None:
            AUDIT_WRITE.observe(audit_seconds)
    except Exception:  # metrics must never fail a request
        logger.warning("could not record metrics for %s", ctx.request_id, exc_info=True)


def open_stream(ctx: RequestContext) -> Gauge:
    """Count a stream in tollgate_open_streams; the caller decrements the returned gauge when it ends."""
    gauge = _child(OPEN_STREAMS, ctx.route.model if ctx.route else NONE)
    gauge.inc()
    return gauge
