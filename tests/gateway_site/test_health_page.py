"""The admin's gateway health page: workers, database, Redis, Celery, last budget reset and audit export."""
from __future__ import annotations

import time
from datetime import date

import pytest
from django.db import connection
from django.urls import reverse

from audit.models import AuditExport
from budgets.tasks import budget_reset
from gateway_site import status
from gateway_site.tasks import ops_heartbeat

pytestmark = pytest.mark.django_db


def test_a_heartbeat_shows_the_worker_up_and_an_old_one_down():
    status.heartbeat_write(started=time.time() - 60)
    (worker,) = status.workers()
    assert worker.up and worker.pid > 0
    assert status.workers(now=time.time() + 3600)[0].up is False


def test_celery_and_budget_reset_stamp_their_runs():
    assert status.last_stamp("celery_heartbeat") is None
    ops_heartbeat.apply()
    budget_reset.apply()
    report = status.status_report()
    assert report.celery_heartbeat is not None
    assert report.budget_reset is not None
    assert report.database.ok


def test_the_page_shows_the_gateway_at_a_glance(client, personas):
    status.heartbeat_write(started=time.time())
    ops_heartbeat.apply()
    AuditExport.objects.create(day=date(2025, 3, 1), format="jsonl", path="/x", rows=3, sha256="0" * 64)
    client.force_login(personas.admin)
    index = client.get(reverse("admin:index"))
    assert reverse("gateway-health").encode() in index.content
    page = client.get(reverse("gateway-health"))
    assert page.status_code == 200
    text = page.content.decode()
    assert "Gateway workers: 1 up" in text
    assert "Database" in text and "reachable" in text
    assert "Celery heartbeat" in text and "alive" in text
    assert "2025-03-01" in text


def test_only_staff_see_it(client, personas):
    response = client.get(reverse("gateway-health"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_the_page_lists_the_unpriced_models_seen(client, personas):
    import asyncio

    from budgets.pricing import unpriced_seen_add, unpriced_seen_clear

    unpriced_seen_clear()
    client.force_login(personas.admin)
    assert "None: every model served lately had a price." in client.get(reverse("gateway-health")).content.decode()
    asyncio.run(unpriced_seen_add("mystery-model-7", "local-llm"))
    text = client.get(reverse("gateway-health")).content.decode()
    assert "Unpriced models seen" in text and "mystery-model-7" in text and "local-llm" in text
    assert reverse("admin:budgets_modelprice_add") in text
    unpriced_seen_clear()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="partitions are PostgreSQL's")
def test_the_page_lists_the_audit_partitions(client, personas):
    from tests.audit.conftest import add_events, partitions_relayout

    partitions_relayout(5, ahead=2)
    add_events(7)
    client.force_login(personas.admin)
    text = client.get(reverse("gateway-health")).content.decode()
    assert "Audit partitions" in text
    assert "audit_auditevent_p6" in text and "6 to 10" in text
    assert "audit_auditevent_default" in text
