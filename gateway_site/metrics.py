"""GET /metrics (docs/operations.md): every app's metrics, and gauges that combine apps.

The proxy records its request metrics itself (proxy/metrics.py), in memory. Under
gunicorn every worker writes its samples to files in PROMETHEUS_MULTIPROC_DIR (set
by gateway_site/gunicorn_conf.py) and a scrape, answered by any worker, adds them
up. What needs the database or Redis (budget remaining, breaker states, worker
heartbeats) is computed here when /metrics is scraped, in a thread, never on the
request path.

Labels are bounded: routes, providers, deployments and consumers are configured
names, never what a client sent.
"""
from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from gateway_site.lib import clientaddr
from gateway_site.lib.db import run_db
from gateway_site.status import status_report

logger = logging.getLogger(__name__)


# --- Scrape-time state ------------------------------------------------------------------


class StateCollector:
    """Gauges read from the shared state at scrape time: the same answer from any worker."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("tollgate_state_up", "Whether this part of the scrape-time state could be read.",
                               labels=["part"])
        for part, collect in (("breakers", self._breakers), ("budgets", self._budgets), ("status", self._status)):
            try:
                yield from collect()
            except Exception as exc:
                logger.warning("metrics: could not read %s: %r", part, exc)
                up.add_metric([part], 0)
            else:
                up.add_metric([part], 1)
        yield up

    def _breakers(self) -> Iterator[GaugeMetricFamily]:
        from proxy import breaker
        from proxy.models import Deployment

        family = GaugeMetricFamily("tollgate_circuit_breaker_state",
                                   "Circuit breaker per deployment: 0 closed, 1 half-open, 2 open.",
                                   labels=["route", "provider", "deployment"])
        values = {"closed": 0, "half_open": 1, "open": 2}
        deployments = Deployment.objects.filter(enabled=True).select_related("route", "provider")
        for d in deployments.order_by("route__model", "priority", "id"):
            family.add_metric([d.route.model, d.provider.name, f"{d.provider.name}/{d.upstream_model}"],
                              values[breaker.state_now(d.pk)])
        yield family

    def _budgets(self) -> Iterator[GaugeMetricFamily]:
        from budgets.models import Budget, Consumer, Team
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
                if row.owner.startswith("team "):
                    continue  # once, under its team (below), not under each member
                values = [consumer.name, str(row.budget_id), row.metric, row.period,
                          "consumer" if row.owner == "consumer" else "key"]
                remaining.add_metric(values, row.remaining)
                limit.add_metric(values, row.limit)
        # A team's budgets: the team's name in the consumer label, scope "team".
        for team in Team.objects.filter(budgets__enabled=True).distinct().order_by("name"):
            for row in budget_usage_report(team=team):
                values = [team.name, str(row.budget_id), row.metric, row.period, "team"]
                remaining.add_metric(values, row.remaining)
                limit.add_metric(values, row.limit)
        yield remaining
        yield limit

    def _status(self) -> Iterator[GaugeMetricFamily]:
        report = status_report()
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
