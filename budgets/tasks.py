"""Celery tasks for budgets: thin wrappers around services, limits set in one place."""
from __future__ import annotations

from datetime import date

from celery import shared_task

from budgets import alerts, fallback, services
from gateway_site.lib.stamps import stamp

TASK_OPTIONS = {"soft_time_limit": 300, "time_limit": 360, "acks_late": True}


@shared_task(**TASK_OPTIONS)
def budget_reset() -> dict[str, int]:
    report = services.budget_reset()
    stamp("budget_reset")  # the admin's health page shows when it last ran
    return {"closed": report.closed, "alerts": report.alerts}


@shared_task(**TASK_OPTIONS)
def budget_reservations_expire() -> int:
    return fallback.budget_reservations_expire()


# Queued by name (budgets.alerts.ALERT_TASK) from the settle that crosses a threshold.
@shared_task(**TASK_OPTIONS, autoretry_for=(OSError,), retry_backoff=True, max_retries=5)
def budget_alert(budget_id: int, period_start: str) -> bool:
    return alerts.budget_alert_send(budget_id=budget_id, period_start=date.fromisoformat(period_start))
