"""Reads used on the request path and by the exports."""
from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db.models import QuerySet

from audit.models import AuditEvent, AuditPolicy
from gateway_site.lib.localcache import LocalCache

policy_cache = LocalCache(
    "audit-policy",
    ttl=settings.TOLLGATE_AUDIT_POLICY_CACHE_SECONDS,
    recheck=settings.TOLLGATE_AUTH_RECHECK_SECONDS,
)


async def body_mode_for(consumer_id: int | None) -> str:
    """The consumer's body mode (`none`, `metadata` or `full`); cached per worker."""
    if consumer_id is None:
        return settings.TOLLGATE_AUDIT_DEFAULT_BODY_MODE
    mode = await policy_cache.aget_or_load(
        consumer_id, lambda: AuditPolicy.objects.filter(consumer_id=consumer_id).values_list(
            "body_mode", flat=True).afirst())
    return mode or settings.TOLLGATE_AUDIT_DEFAULT_BODY_MODE


def events_in_range(*, since: datetime | None = None, until: datetime | None = None,
                    consumer: str | None = None) -> QuerySet[AuditEvent]:
    """Events with since <= time < until (optionally one consumer's), oldest first."""
    events = AuditEvent.objects.all()
    if since is not None:
        events = events.filter(time__gte=since)
    if until is not None:
        events = events.filter(time__lt=until)
    if consumer:
        events = events.filter(consumer_name=consumer)
    return events.order_by("time", "seq")
