"""Closing budget periods: the daily reset job's writes across usage, history and reservations.

What remains here is the one write that touches several tables at once (a finished
window's BudgetUsage row becomes a BudgetHistory row, and its reservations go); keys,
admission, counters, the usage mirror and alerts each have a module of their own.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from budgets import counters
from budgets.alerts import budget_alert_send, budget_alerts_due
from budgets.models import Budget, BudgetHistory, BudgetReservation, BudgetUsage
from budgets.usage import usage_mirror


@dataclass(frozen=True)
class ResetReport:
    closed: int
    alerts: int


def budget_periods_close(*, now: datetime | None = None) -> int:
    """Move every finished window's usage into BudgetHistory; idempotent, catches up any backlog.

    A window's row is deleted in the same transaction as its history is written, so
    running twice closes nothing twice; a late charge (a stream that outlived its
    window) recreates the row and is added to the history on the next run.
    """
    now = now or timezone.now()
    usage_mirror.flush()
    closed = 0
    live = counters.live_used_reader()
    for pk in BudgetUsage.objects.filter(ends_at__lte=now).values_list("pk", flat=True).order_by("ends_at"):
        with transaction.atomic():
            usage = BudgetUsage.objects.select_for_update().select_related("budget").filter(pk=pk).first()
            if usage is None:
                continue  # closed by a concurrent run
            budget: Budget = usage.budget
            # Redis is ahead of the database copy by the charges a killed worker never wrote.
            usage.used = max(usage.used, live(budget, usage.period_start))
            history, created = BudgetHistory.objects.get_or_create(
                budget=budget, period_start=usage.period_start,
                defaults={"starts_at": usage.starts_at, "ends_at": usage.ends_at, "metric": budget.metric,
                          "limit": budget.limit, "used": usage.used, "closed_at": now},
            )
            if not created:
                BudgetHistory.objects.filter(pk=history.pk).update(
                    used=F("used") + Greatest(usage.used, 0), closed_at=now)
            BudgetReservation.objects.filter(budget=budget, period_start=usage.period_start).delete()
            usage.delete()
            closed += 1
    return closed


def budget_reset(*, now: datetime | None = None) -> ResetReport:
    """The daily job: close finished windows into history, send alerts that are due."""
    now = now or timezone.now()
    closed = budget_periods_close(now=now)
    sent = sum(budget_alert_send(budget_id=b, period_start=p, now=now) for b, p in budget_alerts_due(now=now))
    return ResetReport(closed=closed, alerts=sent)
