"""The admin's list views cost the same number of queries for 5 rows as for 50 (no N+1)."""
from __future__ import annotations

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from budgets.keys import key_issue
from budgets.models import Budget, BudgetUsage, Consumer, RateLimit
from budgets.periods import window_at
from proxy.models import Deployment, ModelRoute, Provider
from tests.audit.conftest import add_events

pytestmark = pytest.mark.django_db


def _consumers(start: int, n: int, user) -> None:
    now = timezone.now()
    for i in range(start, start + n):
        consumer = Consumer.objects.create(name=f"c{i:03d}")
        key = key_issue(consumer=consumer, name="k").key
        budget = Budget.objects.create(consumer=consumer, metric="tokens", limit=1000)
        Budget.objects.create(key=key, metric="requests", limit=10)
        window = window_at(budget.period, budget.timezone, now)
        BudgetUsage.objects.create(budget=budget, period_start=window.period_start, starts_at=window.starts_at,
                                   ends_at=window.ends_at, used=i)
        RateLimit.objects.create(consumer=consumer, requests=5)
        RateLimit.objects.create(key=key, tokens=500)
        provider = Provider.objects.create(name=f"p{i:03d}", kind="sandbox", base_url="http://127.0.0.1:9/v1")
        route = ModelRoute.objects.create(model=f"r{i:03d}")
        Deployment.objects.create(route=route, provider=provider, upstream_model="m")
        LogEntry.objects.log_actions(user.pk, [consumer], CHANGE, change_message="test")
    add_events(n, consumer=f"c{start:03d}")


LISTS = ["budgets_consumer", "budgets_apikey", "budgets_budget", "budgets_ratelimit", "budgets_budgethistory",
         "proxy_provider", "proxy_modelroute", "proxy_deployment", "audit_auditevent", "admin_logentry"]


def _count(client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_list_views_do_not_grow_with_rows(client, personas, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    client.force_login(personas.admin)
    _consumers(0, 5, personas.admin)
    ContentType.objects.clear_cache()
    small = {name: _count(client, reverse(f"admin:{name}_changelist")) for name in LISTS}
    _consumers(5, 45, personas.admin)
    large = {name: _count(client, reverse(f"admin:{name}_changelist")) for name in LISTS}
    assert large == small
    assert max(large.values()) < 20
