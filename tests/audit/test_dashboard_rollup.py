"""Closed days come from the daily rollup and add up to exactly what the audit log says."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from budgets.models import DailyUsage
from gateway_site.dashboard import _live, usage_summary
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
    assert len(queries) <= 7  # which days are rolled up, the rollup, today's four GROUP BYs, the budgets
    assert again == first
    totals = first.totals
    assert (totals.requests, totals.errors, totals.failovers) == (50, 10, 10)
    assert totals.tokens == 50 * 15 and totals.cost_micros == 50 * 1234
    live_days = {r[2]: r[3] for r in _live(datetime(2025, 2, 19, tzinfo=UTC), None, None) if r[0] == "total"}
    assert {d.day: d.requests for d in first.days if d.requests} == live_days
    assert [c["name"] for c in first.consumers] == ["alice-agent", "bob-batch"]
    assert {p["name"]: p["errors"] for p in first.providers} == {"sandbox": 0, "other": 10}
    assert sum(first.consumer_days["alice-agent"]) == 40 * 15


def test_one_consumers_view_reads_only_its_events():
    add_events(5, start=datetime(2025, 3, 19, tzinfo=UTC), consumer="alice-agent")
    add_events(3, start=datetime(2025, 3, 19, tzinfo=UTC), consumer="bob-batch")
    assert usage_summary(now=NOW, consumer="bob-batch").totals.requests == 3
