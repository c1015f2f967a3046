"""The beat jobs, run by a real Celery worker on this run's queue and test database."""
from __future__ import annotations

import time
from datetime import UTC, timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from audit.models import AuditChainHead, AuditEvent, AuditExport, AuditSinkCursor
from tests.audit.conftest import add_events
from tests.audit.test_sink import Collector
from tests.servers import celery_worker, database_url_for, free_port, server_env

requires_redis = pytest.mark.skipif(not settings.REDIS_URL, reason="a real worker needs the Redis broker")


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the worker")
        time.sleep(0.2)


def test_the_beat_schedule_names_registered_tasks():
    from gateway_site.celery import app

    app.loader.import_default_modules()
    for name in ("audit-export-daily", "audit-retention", "audit-sink-flush", "audit-partitions",
                 "dashboard-usage-rollup"):
        assert settings.CELERY_BEAT_SCHEDULE[name]["task"] in app.tasks


@requires_redis
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_exports_days_and_ships_events(server_database, tmp_path):
    from audit.tasks import audit_export_daily, audit_sink_flush

    # End-to-end tests' servers commit events outside any test transaction; start clean.
    for model in (AuditEvent, AuditChainHead, AuditExport, AuditSinkCursor):
        model.objects.all().delete()
    today = timezone.now().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    add_events(12, start=today - timedelta(days=2), step=timedelta(hours=4))  # two full days
    collector = Collector(free_port())
    collector.start()
    env = server_env(
        DATABASE_URL=database_url_for(connection.settings_dict),
        TOLLGATE_AUDIT_EXPORT_DIR=str(tmp_path),
        TOLLGATE_AUDIT_EXPORT_DELAY_MINUTES="0",
        TOLLGATE_AUDIT_SINK_URL=f"http://127.0.0.1:{collector.port}/",
        TOLLGATE_AUDIT_SINK_BATCH_SIZE="5",
    )
    try:
        with celery_worker(env):
            audit_export_daily.delay()
            audit_sink_flush.delay()
            wait_for(lambda: AuditExport.objects.count() == 2 and len(collector.received) == 12)
            audit_export_daily.delay()  # again: nothing new, nothing twice
            audit_sink_flush.delay()
            time.sleep(1.0)  # give a wrong duplicate the chance to show
    finally:
        collector.stop()
    days = [today.date() - timedelta(days=2), today.date() - timedelta(days=1)]
    assert list(AuditExport.objects.order_by("day").values_list("day", "rows")) == [(d, 6) for d in days]
    assert (tmp_path / f"audit-{days[0].isoformat()}.manifest.json").exists()
    assert sorted(e["seq"] for e in collector.received) == list(AuditEvent.objects.order_by("seq").values_list(
        "seq", flat=True))
    assert sorted(e["lane_seq"] for e in collector.received) == list(range(1, 13))  # one writer: one lane
    assert AuditSinkCursor.objects.get(lane=0).last_seq == 12



@requires_redis
@pytest.mark.skipif(connection.vendor != "postgresql", reason="partitions are PostgreSQL's")
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_creates_partitions_ahead_and_empties_default(server_database):
    from audit.partitions import DEFAULT, partitions_list
    from audit.services import lane_heads_ensure
    from audit.tasks import audit_partitions
    from tests.audit.conftest import partitions_relayout

    for model in (AuditEvent, AuditChainHead):
        model.objects.all().delete()
    lane_heads_ensure()  # a first append without heads draws seqs it then gives up (gaps are allowed)
    with connection.cursor() as cursor:  # seq from 1 again, for the partition bounds below
        cursor.execute("SELECT setval('audit_event_seq', 1, false)")
    partitions_relayout(5, ahead=1)
    add_events(12)  # 6..12 land in DEFAULT
    env = server_env(DATABASE_URL=database_url_for(connection.settings_dict),
                     TOLLGATE_AUDIT_PARTITION_ROWS="5", TOLLGATE_AUDIT_PARTITIONS_AHEAD="2")
    with celery_worker(env):
        audit_partitions.delay()
        wait_for(lambda: len(partitions_list()) == 6)
    assert [p.name for p in partitions_list()] == [
        "audit_auditevent_p1", "audit_auditevent_p6", "audit_auditevent_p11", "audit_auditevent_p16",
        "audit_auditevent_p21", DEFAULT]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {DEFAULT}")  # noqa: S608
        assert cursor.fetchone()[0] == 0
    assert AuditEvent.objects.count() == 12
