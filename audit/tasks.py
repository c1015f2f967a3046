"""Celery jobs of the audit log; each calls one service (time limits set here, in one place)."""
from __future__ import annotations

from celery import shared_task

from audit.anchors import anchor_write
from audit.partitions import partitions_ensure
from audit.services import events_prune, export_daily_run
from audit.sinks import sink_flush
from audit.usage import DAYS, usage_rollup_recent

_LIMITS = {"soft_time_limit": 3300, "time_limit": 3600, "acks_late": True}


@shared_task(**_LIMITS)
def audit_export_daily() -> list[str]:
    """Export every complete day not exported yet (beat runs it often; it is idempotent)."""
    return [export.day.isoformat() for export in export_daily_run()]


@shared_task(**_LIMITS)
def audit_retention() -> int:
    """Remove events past retention that were exported (and shipped): drop whole partitions on PostgreSQL."""
    return events_prune()


@shared_task(soft_time_limit=110, time_limit=120, acks_late=True)
def audit_partitions() -> list[str]:
    """Keep empty partitions ready above the newest event (PostgreSQL; idempotent)."""
    return partitions_ensure()


@shared_task(soft_time_limit=110, time_limit=120, acks_late=True)
def audit_sink_flush() -> int:
    """Ship pending events to the HTTP collector; they wait in the table while it is down."""
    return sink_flush(max_seconds=60.0)


# Named as it was when it lived in gateway_site.dashboard: beat schedules and queued
# messages name a task by this string.
@shared_task(name="gateway_site.dashboard.usage_rollup", time_limit=1800, soft_time_limit=1700)
def usage_rollup(days: int = DAYS) -> int:
    """Roll up the closed days of the dashboard's window that are missing (usually none)."""
    return usage_rollup_recent(days=days)


@shared_task(soft_time_limit=110, time_limit=120, acks_late=True)
def audit_anchor() -> int:
    """Write the next signed anchor of the chain heads (export directory and sink too)."""
    return anchor_write().number
