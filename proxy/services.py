"""Writes of the proxy app that touch several rows: the active health check."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

import httpx
from django.utils import timezone

from proxy import breaker
from proxy.models import Deployment, Provider
from proxy.providers.registry import ADAPTERS
from proxy.routing import ProviderInfo

logger = logging.getLogger(__name__)


def _provider_info(provider: Provider) -> ProviderInfo:
    return ProviderInfo(
        id=provider.pk, name=provider.name, kind=provider.kind, base_url=provider.base_url.rstrip("/"),
        credential=provider.read_credential(),
        extra_headers=tuple((str(k), str(v)) for k, v in (provider.extra_headers or {}).items()),
        timeout_seconds=provider.timeout_seconds, connect_timeout_seconds=provider.connect_timeout_seconds,
    )


def provider_check(*, provider: Provider, client: httpx.Client | None = None) -> str | None:
    """Call the provider's model list (costs no tokens); None when healthy, else what went wrong.

    A failure opens the breaker of every deployment on the provider; a success lets an
    open one go half-open at once, so the next request can prove it.
    """
    adapter = ADAPTERS[provider.kind](_provider_info(provider))
    headers = adapter.request_headers({})
    headers.pop("content-type", None)
    error: str | None = None
    try:
        own_client = client or httpx.Client(trust_env=False)
        try:
            response = own_client.get(adapter.health_url(), headers=headers,
                                      timeout=min(provider.timeout_seconds, 10.0))
        finally:
            if client is None:
                own_client.close()
        if response.status_code >= 400:
            error = f"health check answered {response.status_code}"
    except httpx.HTTPError as exc:
        error = f"health check failed: {exc.__class__.__name__}"
    deployment_ids = list(Deployment.objects.filter(provider=provider, enabled=True).values_list("pk", flat=True))
    for deployment_id in deployment_ids:
        if error is None:
            breaker.allow_trial(deployment_id)
        else:
            breaker.trip(deployment_id, error)
    # update(), not save(): a check must not invalidate every worker's route table.
    Provider.objects.filter(pk=provider.pk).update(
        last_check_at=timezone.now(), last_check_ok=error is None, last_check_error=error or "")
    if error is not None:
        Deployment.objects.filter(pk__in=deployment_ids).update(last_error=error, last_error_at=timezone.now())
    return error


def provider_health_check_all(*, now: datetime | None = None) -> int:
    now = now or timezone.now()
    checked = 0
    with httpx.Client(trust_env=False) as client:
        for provider in Provider.objects.filter(enabled=True, health_check_interval_seconds__gt=0):
            due = provider.last_check_at is None or (
                provider.last_check_at + timedelta(seconds=provider.health_check_interval_seconds) <= now)
            if not due:
                continue
            try:
                provider_check(provider=provider, client=client)
            except Exception:
                logger.exception("health check of provider %s failed", provider.name)
            checked += 1
    return checked
