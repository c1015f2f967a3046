"""Celery tasks of the proxy: the active health check of providers (beat, see settings)."""
from __future__ import annotations

from celery import shared_task

from proxy.services import provider_health_check_all


@shared_task(name="proxy.tasks.provider_health_check", ignore_result=True, soft_time_limit=60, time_limit=90)
def provider_health_check() -> int:
    """Check every provider whose interval has passed; returns how many were checked."""
    return provider_health_check_all()
