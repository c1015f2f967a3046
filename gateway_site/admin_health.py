"""The admin's "Gateway health" page: workers, PostgreSQL/Redis, Celery, last budget reset and audit export,
the models served without a price, and the audit table's partitions."""
from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from audit.partitions import partitions_stats
from budgets.pricing import unpriced_seen
from gateway_site.status import status_report

# Beyond these ages a background job is shown as late (its schedule, with room to spare).
CELERY_LATE = timedelta(minutes=2)
BUDGET_RESET_LATE = timedelta(hours=25)
AUDIT_EXPORT_LATE = timedelta(hours=26)


def _age(now: datetime, when: datetime | None, late: timedelta) -> dict:
    if when is None:
        return {"when": None, "ok": False, "age": None}
    return {"when": when, "ok": now - when <= late, "age": now - when}


def health_view(request: HttpRequest) -> HttpResponse:
    """Sync view behind admin.site.admin_view (staff only); reads the database and the cache."""
    report = status_report()
    now = report.now
    context = {
        **admin.site.each_context(request),
        "title": "Gateway health",
        "report": report,
        "workers_up": sum(1 for w in report.workers if w.up),
        "heartbeat_seconds": settings.TOLLGATE_HEARTBEAT_SECONDS,
        "celery": _age(now, report.celery_heartbeat, CELERY_LATE),
        "budget_reset": _age(now, report.budget_reset, BUDGET_RESET_LATE),
        "audit_export": _age(now, report.audit_export, AUDIT_EXPORT_LATE),
        "audit_export_configured": bool(settings.TOLLGATE_AUDIT_EXPORT_DIR),
        # Served without a price: recorded at no cost, and refused under hard cost budgets (issue #16).
        "unpriced": unpriced_seen(),
        # PostgreSQL: the audit table's partitions (empty on SQLite, one plain table); issue #18.
        "audit_partitions": partitions_stats(),
    }
    return TemplateResponse(request, "admin/gateway_health.html", context)
