"""Closed days come from the daily rollup and add up to exactly what the audit log says."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.models import DailyUsage
from audit.selectors import usage_summary
from audit.usage import live_rows
from tests.audit.conftest import add_events

pytestmark = pytest.mark.django_db
NOW = datetime(2025, 3, 20, 12, 0, tzinfo=UTC)


def test_closed_days_are_rolled_up_once_and_match_the_audit_log():
    add_events(40, start=datetime(2025, 3, 10, tzinfo=UTC), step=timedelta(hours=6), consumer="alice-agent")
    add_events(10, start=datetime(2025, 3, 20, tzinfo=UTC), step=timedelta(minutes=5), consumer="bob-batch",
               status=503, error_class="upstream_error", attempts=2, provider="other")
    first = usage_summary(now=NOW)
    assert DailyUsage.objects.filter(dimension="total").count() == 29  # every closed day of the window
    with CaptureQueriesContext(connection) as queries:
        again = usage_summary(now=NOW)
    assert len(queries) <= 6  # which days are rolled up, the rollup, today's four GROUP BYs
    assert again == first
    totals = first.totals
    assert (totals.requests, totals.errors, totals.failovers) == (50, 10, 10)
    assert totals.tokens == 50 * 15 and totals.cost_micros == 50 * 1234
    live_days = {r[2]: r[3] for r in live_rows(datetime(2025, 2, 19, tzinfo=UTC), None, None) if r[0] == "total"}
    assert {d.day: d.requests for d in first.days if d.requests} == live_days
    assert [c["name"] for c in first.consumers] == ["alice-agent", "bob-batch"]
    assert {p["name"]: p["errors"] for p in first.providers} == {"sandbox": 0, "other": 10}
    assert sum(first.consumer_days["alice-agent"]) == 40 * 15


def test_one_consumers_view_reads_only_its_events():
    add_events(5, start=datetime(2025, 3, 19, tzinfo=UTC), consumer="alice-agent")
    add_events(3, start=datetime(2025, 3, 19, tzinfo=UTC), consumer="bob-batch")
    assert usage_summary(now=NOW, consumer="bob-batch").totals.requests == 3


def test_the_rollup_task_keeps_its_old_name_and_fills_only_missing_days():
    from audit.tasks import usage_rollup
    from audit.usage import usage_rollup_recent

    # Beat schedules and queued messages still name it as it was in gateway_site.dashboard.
    assert usage_rollup.name == "gateway_site.dashboard.usage_rollup"
    add_events(4, start=datetime(2025, 3, 18, tzinfo=UTC), step=timedelta(hours=6))
    assert usage_rollup_recent(days=7, now=NOW) == 6  # the closed days 14..19 March
    assert usage_rollup_recent(days=7, now=NOW) == 0
    assert DailyUsage.objects.get(day=datetime(2025, 3, 18).date(), dimension="total").requests == 4


def test_the_dashboard_adds_the_budgets_nearest_their_limits(personas, admin_client):
    from budgets.models import Budget, BudgetUsage
    from budgets.periods import window_at
    from gateway_site.dashboard import dashboard_compose

    budget = Budget.objects.create(consumer=personas.alice, metric="tokens", limit=1000, period="day")
    window = window_at("day", "UTC", datetime.now(UTC))
    BudgetUsage.objects.create(budget=budget, period_start=window.period_start, starts_at=window.starts_at,
                               ends_at=window.ends_at, used=900)
    dashboard = dashboard_compose()
    assert [(b["consumer"], b["percent"]) for b in dashboard.nearest_budgets] == [("alice-agent", 90.0)]
    assert dashboard.summary.totals.requests == 0
    assert dashboard_compose(consumer="alice-agent").nearest_budgets == []
    page = admin_client.get(reverse("gateway-dashboard")).content.decode()
    assert 'id="tg-nearest-budgets"' in page and "900 / 1,000" in page
