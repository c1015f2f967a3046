"""Period windows across time zones and month ends; the reset job, twice and after a gap."""
from __future__ import annotations

import threading
import time
from datetime import UTC, date, datetime

import pytest
import time_machine
from asgiref.sync import async_to_sync
from django.core import mail

from budgets import admission as admission_module
from budgets import services as services_module
from budgets import usage
from budgets.admission import budget_reserve, budget_settle
from budgets.holds import LimitExceeded
from budgets.keys import key_digest
from budgets.models import BudgetHistory, BudgetUsage
from budgets.periods import window_at
from budgets.selectors import budget_usage_report, key_info_by_digest, limits_for_key
from budgets.services import budget_reset
from tests.budgets.conftest import budget, requires_redis
from tests.budgets.test_admission import HELLO
from tests.proxy.client import chat


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_a_day_starts_at_local_midnight():
    w = window_at("day", "America/Los_Angeles", utc(2026, 3, 15, 6, 59))
    assert w.period_start == date(2026, 3, 14)
    assert w.ends_at == utc(2026, 3, 15, 7, 0)  # PDT began that night: midnight is 07:00 UTC
    assert window_at("day", "America/Los_Angeles", utc(2026, 3, 15, 7, 0)).period_start == date(2026, 3, 15)


def test_a_day_across_the_dst_change_has_23_hours():
    w = window_at("day", "Europe/Paris", utc(2026, 3, 29, 12))
    assert (w.ends_at - w.starts_at).total_seconds() == 23 * 3600


def test_the_same_instant_is_in_different_days_in_different_time_zones():
    instant = utc(2026, 11, 26, 23, 30)
    assert window_at("day", "UTC", instant).period_start == date(2026, 11, 26)
    assert window_at("day", "Asia/Tokyo", instant).period_start == date(2026, 11, 27)
    assert window_at("day", "Pacific/Honolulu", instant).period_start == date(2026, 11, 26)


def test_a_month_ends_at_the_first_of_the_next_month_in_its_time_zone():
    w = window_at("month", "Asia/Tokyo", utc(2026, 1, 31, 14, 59))
    assert w.period_start == date(2026, 1, 1)
    assert w.ends_at == utc(2026, 1, 31, 15, 0)
    feb = window_at("month", "UTC", utc(2028, 2, 29, 23, 59))
    assert (feb.period_start, feb.ends_at) == (date(2028, 2, 1), utc(2028, 3, 1))
    dec = window_at("month", "UTC", utc(2026, 12, 31, 12))
    assert dec.ends_at == utc(2027, 1, 1)


def test_a_week_starts_on_monday():
    w = window_at("week", "UTC", utc(2026, 11, 26, 12))  # a Thursday
    assert w.period_start == date(2026, 11, 23)
    assert w.ends_at == utc(2026, 11, 30)


def _charge(key, tokens: int, request_id: str) -> None:
    limits = async_to_sync(limits_for_key)(key)
    admission = async_to_sync(budget_reserve)(key=key, limits=limits, request_id=request_id, tokens=tokens,
                                              cost=0)
    async_to_sync(budget_settle)(admission=admission, prompt_tokens=tokens, completion_tokens=0, requests=1,
                                 cost=0)


@pytest.mark.django_db
def test_a_new_period_starts_at_zero_even_if_the_reset_never_ran(personas):
    budget(personas.alice, metric="tokens", limit=1000, timezone="Asia/Tokyo")
    key = key_info_by_digest(key_digest(personas.alice_key))
    with time_machine.travel(utc(2026, 11, 26, 14, 50), tick=False):  # 23:50 in Tokyo
        _charge(key, 900, "req_a")
        with pytest.raises(LimitExceeded):
            _charge(key, 200, "req_b")
    with time_machine.travel(utc(2026, 11, 26, 15, 0, 1), tick=False):  # 00:00:01 next day in Tokyo
        _charge(key, 200, "req_c")
        [row] = budget_usage_report(consumer=personas.alice)
        assert (row.period_start, row.used) == (date(2026, 11, 27), 200)


@pytest.mark.django_db
def test_the_reset_job_closes_periods_once_even_when_run_twice(personas):
    tokens = budget(personas.alice, metric="tokens", limit=1000)
    key = key_info_by_digest(key_digest(personas.alice_key))
    with time_machine.travel(utc(2026, 11, 26, 10), tick=False):
        _charge(key, 300, "req_1")
        _charge(key, 100, "req_2")
    with time_machine.travel(utc(2026, 11, 27, 0, 5), tick=False):
        assert budget_reset().closed == 1
        assert budget_reset().closed == 0
        _charge(key, 50, "req_3")
        assert budget_reset().closed == 0  # today's window is still open
    [history] = BudgetHistory.objects.filter(budget=tokens)
    assert (history.period_start, history.used, history.limit) == (date(2026, 11, 26), 400, 1000)
    assert BudgetUsage.objects.get(budget=tokens).used == 50


@pytest.mark.django_db
def test_the_reset_job_catches_up_after_three_days_of_downtime(personas):
    tokens = budget(personas.alice, metric="tokens", limit=1000)
    monthly = budget(personas.alice, metric="requests", limit=100, period="month")
    key = key_info_by_digest(key_digest(personas.alice_key))
    for day, amount in ((26, 100), (27, 200), (28, 300)):
        with time_machine.travel(utc(2026, 11, day, 12), tick=False):
            _charge(key, amount, f"req_{day}")
    with time_machine.travel(utc(2026, 12, 1, 9), tick=False):  # the worker was down since the 28th
        report = budget_reset()
        assert report.closed == 4  # three days and November
        assert budget_reset().closed == 0
        days = dict(BudgetHistory.objects.filter(budget=tokens).values_list("period_start", "used"))
        assert days == {date(2026, 11, 26): 100, date(2026, 11, 27): 200, date(2026, 11, 28): 300}
        assert BudgetHistory.objects.get(budget=monthly).used == 3
        rows = {r.metric: r for r in budget_usage_report(consumer=personas.alice)}
        assert rows["tokens"].used == 0 and rows["requests"].used == 0


@pytest.mark.django_db
def test_the_reset_job_writes_waiting_charges_from_inside_a_callers_transaction(personas, settings, monkeypatch):
    # Charges another request left in the mirror are written by whoever flushes first; from
    # inside a transaction (a test's, a caller's), the flush must not close that connection.
    settings.TOLLGATE_BUDGET_MIRROR_SECONDS = 3600
    mirror = usage._UsageMirror()
    mirror._thread = threading.Thread(target=lambda: None)  # never started: only this test flushes
    monkeypatch.setattr(admission_module, "usage_mirror", mirror)
    monkeypatch.setattr(services_module, "usage_mirror", mirror)
    tokens = budget(personas.alice, metric="tokens", limit=1000)
    key = key_info_by_digest(key_digest(personas.alice_key))
    with time_machine.travel(utc(2026, 11, 26, 12), tick=False):
        _charge(key, 120, "req_waiting")
    assert not BudgetUsage.objects.filter(budget=tokens, used=120).exists()  # still waiting
    with time_machine.travel(utc(2026, 11, 27, 0, 5), tick=False):
        assert budget_reset().closed == 1
    assert BudgetHistory.objects.get(budget=tokens).used == 120


@pytest.mark.django_db
def test_a_soft_budget_alerts_once_per_period(personas, monkeypatch, settings):
    from budgets import alerts, tasks

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    sent = []
    monkeypatch.setattr(tasks.budget_alert, "delay", lambda *a: sent.append(a))
    monkeypatch.setattr(alerts, "_alerted", set())
    budget(personas.alice, metric="tokens", limit=1000, mode="soft", alert_at_percent=80,
           alert_email="finance@example.com")
    key = key_info_by_digest(key_digest(personas.alice_key))
    with time_machine.travel(utc(2026, 11, 26, 10), tick=False):
        _charge(key, 500, "req_1")
        assert sent == [] and budget_reset().alerts == 0
        _charge(key, 400, "req_2")  # 90%: the settle queues the alert
        assert len(sent) == 1
        assert budget_reset().alerts == 1  # (the queued task and the job race; one of them sends)
        _charge(key, 400, "req_3")
        assert budget_reset().alerts == 0
    assert len(mail.outbox) == 1
    assert "90%" in mail.outbox[0].subject and mail.outbox[0].to == ["finance@example.com"]
    with time_machine.travel(utc(2026, 11, 27, 10), tick=False):
        _charge(key, 900, "req_4")
        assert budget_reset().alerts == 1  # a new period alerts again
    assert len(mail.outbox) == 2


@requires_redis
@pytest.mark.django_db(transaction=True)
def test_the_reset_job_runs_in_a_real_celery_worker(server_database, personas):
    from django.db import connection

    from budgets.tasks import budget_reset as budget_reset_task
    from tests.servers import celery_worker, database_url_for, server_env

    tokens = budget(personas.alice, metric="tokens", limit=1000)
    BudgetUsage.objects.create(budget=tokens, period_start=date(2026, 1, 1), starts_at=utc(2026, 1, 1),
                               ends_at=utc(2026, 1, 2), used=123)
    with celery_worker(server_env(DATABASE_URL=database_url_for(connection.settings_dict))):
        budget_reset_task.delay()
        deadline = time.monotonic() + 30
        while not BudgetHistory.objects.filter(budget=tokens).exists():
            assert time.monotonic() < deadline, "the worker did not run the reset job"
            time.sleep(0.2)
    assert BudgetHistory.objects.get(budget=tokens).used == 123
    assert not BudgetUsage.objects.filter(budget=tokens).exists()


@pytest.mark.django_db
def test_requests_across_a_boundary_are_charged_to_their_own_period(personas, demo_route):
    budget(personas.alice, metric="requests", limit=1, timezone="Europe/Paris")
    with time_machine.travel(utc(2026, 11, 26, 22, 59), tick=True):  # 23:59 in Paris
        assert chat(personas.alice_key, HELLO).status_code == 200
        assert chat(personas.alice_key, HELLO).status_code == 429
    with time_machine.travel(utc(2026, 11, 26, 23, 0, 1), tick=True):
        assert chat(personas.alice_key, HELLO).status_code == 200
