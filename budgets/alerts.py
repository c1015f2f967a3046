"""Budget alerts: an email and/or a webhook, once per budget window, when usage crosses a threshold.

Two paths lead here: the settle that crosses the threshold queues the alert task at
once (budget_alerts_queue), and the daily job sends whatever was missed
(budget_alerts_due, then budget_alert_send). The task is queued by its Celery name, not
imported: budgets.tasks imports the services, never the reverse.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import date, datetime

import httpx
from celery import current_app
from django.conf import settings
from django.core.mail import send_mail
from django.utils import timezone

from budgets.holds import Admission
from budgets.models import Budget, BudgetUsage, format_amount

logger = logging.getLogger("tollgate.budgets")

# The task in budgets/tasks.py. Looked up in the app's registry (BudgetsConfig.ready imports
# budgets.tasks in every process) rather than sent with `send_task`: the registered task's
# delay() honours CELERY_TASK_ALWAYS_EAGER, so the embedded default sends the alert at once.
ALERT_TASK = "budgets.tasks.budget_alert"

_alerted: set[tuple[int, date]] = set()  # windows this process already queued an alert for


async def budget_alerts_queue(*, admission: Admission) -> None:
    """Queue the alert of each window the request's settle took over its threshold (once per process)."""
    for hold in admission.holds:
        percent = hold.rule.alert_at_percent
        if percent is None or hold.total * 100 < hold.rule.limit * percent:
            continue
        window_id = (hold.rule.id, hold.window.period_start)
        if window_id in _alerted:
            continue
        _alerted.add(window_id)
        try:
            task = current_app.tasks[ALERT_TASK]
            await asyncio.to_thread(task.delay, hold.rule.id, hold.window.period_start.isoformat())
        except Exception:
            _alerted.discard(window_id)  # the daily job sends it otherwise
            logger.exception("could not queue the alert for budget %s", hold.rule.id)


def budget_alerts_due(*, now: datetime | None = None) -> list[tuple[int, date]]:
    """Current windows over their alert threshold that have not alerted yet."""
    now = now or timezone.now()
    due = []
    rows = BudgetUsage.objects.filter(
        ends_at__gt=now, alert_sent_at__isnull=True, budget__enabled=True, budget__alert_at_percent__isnull=False,
    ).values_list("budget_id", "period_start", "used", "budget__limit", "budget__alert_at_percent")
    for budget_id, period_start, used, limit, percent in rows:
        if percent is not None and used * 100 >= limit * percent:  # (never None: filtered above)
            due.append((budget_id, period_start))
    return due


def budget_alert_send(*, budget_id: int, period_start: date, now: datetime | None = None) -> bool:
    """Send a window's alert (email and/or webhook) at most once; True when this call sent it."""
    now = now or timezone.now()
    budget = Budget.objects.select_related("team", "consumer", "key__consumer").filter(pk=budget_id).first()
    if budget is None or budget.alert_at_percent is None:
        return False
    usage = BudgetUsage.objects.filter(budget=budget, period_start=period_start).first()
    if usage is None or usage.used * 100 < budget.limit * budget.alert_at_percent:
        return False
    # The conditional UPDATE is the "once": of any number of concurrent senders, one wins.
    if BudgetUsage.objects.filter(pk=usage.pk, alert_sent_at__isnull=True).update(alert_sent_at=now) != 1:
        return False
    owner = (budget.consumer.name if budget.consumer is not None
             else f"key {budget.key.prefix} of {budget.key.consumer.name}" if budget.key is not None
             else f"team {budget.team.name}" if budget.team is not None else "?")
    routes = f" for routes {', '.join(budget.routes)}" if budget.routes else ""
    percent_used = usage.used * 100 // max(1, budget.limit)
    subject = f"Tollgate budget alert: {owner} used {percent_used}% of its {budget.metric} budget"
    text = (
        f"{owner} has used {format_amount(budget.metric, usage.used)} of its {budget.mode} {budget.metric} "
        f"budget of {budget.limit_display} per {budget.period} ({budget.timezone}){routes}, period starting "
        f"{period_start.isoformat()} ({percent_used}%, alert threshold {budget.alert_at_percent}%)."
    )
    payload = {
        "event": "budget.alert", "budget_id": budget.pk, "owner": owner, "metric": budget.metric,
        "mode": budget.mode, "limit": budget.limit, "used": usage.used, "percent_used": percent_used,
        "alert_at_percent": budget.alert_at_percent, "period": budget.period,
        "period_start": period_start.isoformat(), "timezone": budget.timezone, "routes": budget.routes or [],
        "message": text,
    }
    if budget.alert_email:
        try:
            send_mail(subject, text, settings.TOLLGATE_ALERT_FROM_EMAIL, [budget.alert_email])
        except Exception:
            logger.exception("budget %s: alert email failed", budget.pk)
    if budget.alert_webhook:
        try:
            httpx.post(budget.alert_webhook, json=payload, timeout=10).raise_for_status()
        except Exception:
            logger.exception("budget %s: alert webhook failed", budget.pk)
    logger.warning("budget alert: %s", text)
    return True
