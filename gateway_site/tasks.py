"""Celery jobs of the site itself: the heartbeat that shows beat and a worker are alive."""
from __future__ import annotations

from celery import shared_task

from gateway_site.lib.stamps import stamp


@shared_task(soft_time_limit=20, time_limit=30, ignore_result=True)
def ops_heartbeat() -> None:
    """Scheduled by beat, run by a worker: its stamp is the admin's "Celery last heartbeat"."""
    stamp("celery_heartbeat")
