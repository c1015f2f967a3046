"""Daily export: file + manifest per day, never skipping or duplicating; retention after export only."""
from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, timedelta

import orjson
import pytest
import time_machine
from django.test import override_settings

from audit.anchors import anchor_write
from audit.chain import chain_verify
from audit.models import AuditChainHead, AuditEvent, AuditExport, AuditSinkCursor
from audit.services import events_prune, export_daily_run
from tests.audit.conftest import add_events, partitions_relayout

pytestmark = pytest.mark.django_db

DAY1 = datetime(2025, 3, 1, tzinfo=UTC)


@pytest.fixture
def export_dir(tmp_path):
    with override_settings(TOLLGATE_AUDIT_EXPORT_DIR=str(tmp_path), TOLLGATE_AUDIT_EXPORT_DELAY_MINUTES=60):
        yield tmp_path


def events_over_days(days: int, per_day: int = 24) -> None:
    add_events(days * per_day, start=DAY1, step=timedelta(hours=24 / per_day))


def manifest(directory, day: str) -> dict:
    return orjson.loads((directory / f"audit-{day}.manifest.json").read_bytes())


def test_it_writes_the_previous_day_with_a_manifest(export_dir):
    events_over_days(2)
    with time_machine.travel(datetime(2025, 3, 2, 1, 30, tzinfo=UTC), tick=False):
        done = export_daily_run()
    assert [e.day for e in done] == [date(2025, 3, 1)]
    data = (export_dir / "audit-2025-03-01.jsonl").read_bytes()
    meta = manifest(export_dir, "2025-03-01")
    assert meta["rows"] == 24 == len(data.splitlines())
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["first_seq"] == 1 and meta["last_seq"] == 24
    assert "request_id" in meta["fields"]


def test_it_waits_for_the_day_to_be_complete(export_dir):
    events_over_days(2)
    with time_machine.travel(datetime(2025, 3, 2, 0, 30, tzinfo=UTC), tick=False):
        assert export_daily_run() == []  # requests of 23:59 may still be running


def test_it_catches_up_after_downtime_without_skipping_or_duplicating(export_dir):
    events_over_days(5)
    with time_machine.travel(datetime(2025, 3, 3, 2, tzinfo=UTC), tick=False):
        assert [e.day.day for e in export_daily_run()] == [1, 2]
        assert export_daily_run() == []  # idempotent
    # The worker was down for days; the next run does the days it missed, in order.
    with time_machine.travel(datetime(2025, 3, 8, 2, tzinfo=UTC), tick=False):
        assert [e.day.day for e in export_daily_run()] == [3, 4, 5, 6, 7]
    assert list(AuditExport.objects.order_by("day").values_list("rows", flat=True)) == [24] * 5 + [0, 0]
    assert manifest(export_dir, "2025-03-06")["rows"] == 0  # an empty day still gets its file


def test_csv_daily_export(export_dir):
    events_over_days(1)
    with override_settings(TOLLGATE_AUDIT_EXPORT_FORMAT="csv"), \
         time_machine.travel(datetime(2025, 3, 2, 2, tzinfo=UTC), tick=False):
        export_daily_run()
    assert (export_dir / "audit-2025-03-01.csv").read_text(encoding="utf-8-sig").count("\n") == 25


def test_it_does_nothing_without_a_directory(db):
    events_over_days(2)
    with override_settings(TOLLGATE_AUDIT_EXPORT_DIR=""):
        assert export_daily_run() == []


# On PostgreSQL retention drops whole partitions (tests/audit/test_partitions.py), here of one day
# each, and only below a signed anchor: the same events go as with SQLite's DELETE.
@override_settings(TOLLGATE_AUDIT_RETENTION_DAYS=2)
def test_retention_deletes_only_exported_events_and_keeps_the_chain_verifiable(export_dir, anchor_key):
    partitions_relayout(24, ahead=6)
    events_over_days(6)
    anchor_write()
    with time_machine.travel(datetime(2025, 3, 10, tzinfo=UTC), tick=False):
        assert events_prune() == 0, "nothing exported yet: nothing may be deleted"
    with time_machine.travel(datetime(2025, 3, 4, 2, tzinfo=UTC), tick=False):
        export_daily_run()  # days 1..3
    with time_machine.travel(datetime(2025, 3, 10, tzinfo=UTC), tick=False):
        deleted = events_prune()
    assert deleted == 72  # the exported days only, although days 4..6 are past retention too
    assert AuditEvent.objects.order_by("time").first().time == datetime(2025, 3, 4, tzinfo=UTC)
    head = AuditChainHead.objects.get(pk=1)
    assert head.pruned_seq == 72
    assert chain_verify().ok and chain_verify().checked == 72
    AuditEvent.objects.filter(seq=73).delete()
    assert not chain_verify().ok


@override_settings(TOLLGATE_AUDIT_RETENTION_DAYS=1, TOLLGATE_AUDIT_SINK_URL="http://127.0.0.1:9/")
def test_retention_also_waits_for_the_sink(export_dir, anchor_key):
    partitions_relayout(5, ahead=15)
    events_over_days(3)
    anchor_write()
    with time_machine.travel(datetime(2025, 3, 4, 2, tzinfo=UTC), tick=False):
        export_daily_run()
    AuditSinkCursor.objects.create(name="http", last_seq=10)
    with time_machine.travel(datetime(2025, 3, 20, tzinfo=UTC), tick=False):
        assert events_prune() == 10
