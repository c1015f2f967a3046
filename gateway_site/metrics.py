"""Prometheus metrics: recorded once per request, exposed at GET /metrics (docs/operations.md).

Under gunicorn every worker writes its samples to files in PROMETHEUS_MULTIPROC_DIR
(set by gateway_site/gunicorn_conf.py) and a scrape, answered by any worker, adds
them up. Recording is in-memory work (a few microseconds per request); what needs
the database or Redis (budget remaining, breaker states, worker heartbeats) is
computed when /metrics is scraped, in a thread, never on the request path.

Labels are bounded: routes, providers, deployments and consumers are configured
names ("-" when a request got no further than that), never what a client sent.
"""
from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from gateway_site.lib import clientaddr
from gateway_site.lib.db import run_db

if TYPE_CHECKING:
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
AUDIT_BACKLOG = Gauge("tollgate_audit_backlog", "Audit events waiting for their group commit (sampled).",
                      multiprocess_mode="livesum")


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


def audit_backlog_sample() -> None:
    """Publish this worker's group-commit queue length (the heartbeat calls it every few seconds)."""
    from audit.writer import writer

    AUDIT_BACKLOG.set(len(writer._pending))


# --- Scrape-time state ------------------------------------------------------------------


class StateCollector:
    """Gauges read from the shared state at scrape time: the same answer from any worker."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from gateway_site import status

        up = GaugeMetricFamily("tollgate_state_up", "Whether this part of the scrape-time state could be read.",
                               labels=["part"])
        for part, collect in (("breakers", self._breakers), ("budgets", self._budgets), ("status", self._status)):
            try:
                yield from collect(status)
            except Exception as exc:
                logger.warning("metrics: could not read %s: %r", part, exc)
                up.add_metric([part], 0)
            else:
                up.add_metric([part], 1)
        yield up

    def _breakers(self, status: Any) -> Iterator[GaugeMetricFamily]:
        from proxy import health
        from proxy.models import Deployment

        family = GaugeMetricFamily("tollgate_circuit_breaker_state",
                                   "Circuit breaker per deployment: 0 closed, 1 half-open, 2 open.",
                                   labels=["route", "provider", "deployment"])
        values = {"closed": 0, "half_open": 1, "open": 2}
        deployments = Deployment.objects.filter(enabled=True).select_related("route", "provider")
        for d in deployments.order_by("route__model", "priority", "id"):
            family.add_metric([d.route.model, d.provider.name, f"{d.provider.name}/{d.upstream_model}"],
                              values[health.state_now(d.pk)])
        yield family

    def _budgets(self, status: Any) -> Iterator[GaugeMetricFamily]:
        from budgets.models import Budget, Consumer
        from budgets.selectors import budget_usage_report

        labels = ["consumer", "budget", "metric", "period", "scope"]
        remaining = GaugeMetricFamily("tollgate_budget_remaining",
                                      "What a budget has left in its current period (tokens, requests, "
                                      "or micro-dollars for cost_usd).", labels=labels)
        limit = GaugeMetricFamily("tollgate_budget_limit", "A budget's limit per period, in the same units.",
                                  labels=labels)
        owners = set()
        for consumer_id, key_consumer_id in Budget.objects.filter(enabled=True).values_list(
                "consumer_id", "key__consumer_id"):
            owners.add(consumer_id or key_consumer_id)
        for consumer in Consumer.objects.filter(pk__in=owners).order_by("name"):
            for row in budget_usage_report(consumer=consumer):
                values = [consumer.name, str(row.budget_id), row.metric, row.period,
                          "consumer" if row.owner == "consumer" else "key"]
                remaining.add_metric(values, row.remaining)
                limit.add_metric(values, row.limit)
        yield remaining
        yield limit

    def _status(self, status: Any) -> Iterator[GaugeMetricFamily]:
        report = status.status_report()
        workers = GaugeMetricFamily("tollgate_workers_up", "Gateway worker processes with a fresh heartbeat.")
        workers.add_metric([], sum(1 for w in report.workers if w.up))
        yield workers
        dependency = GaugeMetricFamily("tollgate_dependency_up", "Whether a dependency answers (1) or not (0).",
                                       labels=["dependency"])
        dependency.add_metric(["database"], 1 if report.database.ok else 0)
        if report.redis is not None:
            dependency.add_metric(["redis"], 1 if report.redis.ok else 0)
        yield dependency
        last = GaugeMetricFamily("tollgate_last_run_timestamp_seconds",
                                 "Unix time a background job last ran (absent: never seen).", labels=["job"])
        for job, when in (("celery_heartbeat", report.celery_heartbeat), ("budget_reset", report.budget_reset),
                          ("audit_export", report.audit_export)):
            if when is not None:
                last.add_metric([job], when.timestamp())
        yield last


class _ThisProcess:
    """The default registry's metrics, when there is no multiprocess directory (tests, runserver)."""

    def collect(self) -> Iterator[Any]:
        yield from REGISTRY.collect()


def render() -> bytes:
    """The text exposition of every metric (sync: reads files, the database and Redis)."""
    registry = CollectorRegistry(auto_describe=False)
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        MultiProcessCollector(registry, path=path)
    else:
        registry.register(_ThisProcess())  # type: ignore[arg-type]
    registry.register(StateCollector())  # type: ignore[arg-type]
    return generate_latest(registry)


# --- The endpoint -----------------------------------------------------------------------


def _refused(status: int, message: str) -> JsonResponse:
    response = JsonResponse({"error": {"message": message, "type": "forbidden" if status == 403
                                       else "authentication_error"}}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


def access_refusal(request: HttpRequest) -> JsonResponse | None:
    """None when the request may read /metrics; otherwise the 403 or 401 to send.

    The refusals name no setting: any address may ask, and a TOLLGATE_* name would tell it which
    product answers (docs/operations.md explains them to the operator)."""
    meta = request.META
    if clientaddr.forwarded_by_untrusted(meta):
        return _refused(403, "Scrape /metrics directly, not through an untrusted proxy.")
    address = clientaddr.ip(clientaddr.client_address(meta))
    if not clientaddr.address_in(address, clientaddr.networks(tuple(settings.TOLLGATE_METRICS_ALLOW))):
        return _refused(403, "This address may not read /metrics.")
    token = settings.TOLLGATE_METRICS_TOKEN
    if token:
        scheme, _, given = meta.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            return _refused(401, "A bearer token is required to read /metrics.")
    return None


async def metrics_view(request: HttpRequest) -> HttpResponse:
    refusal = access_refusal(request)
    if refusal is not None:
        return refusal
    return HttpResponse(await run_db(render), content_type=CONTENT_TYPE_LATEST)
