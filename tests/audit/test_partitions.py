"""The audit table partitioned by RANGE(seq) on PostgreSQL (issue #18): migration, partitions created
ahead, the DEFAULT partition, retention by dropping partitions. SQLite keeps one table (last tests)."""
from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.conf import settings
from django.db import connection, models
from django.test import override_settings

from audit.anchors import anchor_write
from audit.chain import chain_verify
from audit.models import AuditChainHead, AuditEvent
from audit.partitions import DEFAULT, partitioned, partitions_ensure, partitions_list, partitions_stats
from audit.services import events_prune, export_daily_run, lane_heads_ensure
from tests.audit.conftest import add_events, partitions_relayout
from tests.audit.test_migrations import migrate

on_postgresql = pytest.mark.skipif(connection.vendor != "postgresql", reason="partitions are PostgreSQL's")
DAY1 = datetime(2025, 3, 1, tzinfo=UTC)


def rows_per_partition() -> dict[str, int]:
    """Where the stored events are, by the partition PostgreSQL put them in."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text, count(*) FROM audit_auditevent GROUP BY 1")
        return dict(cursor.fetchall())


def attached() -> set[str]:
    """The partitions as the catalog knows them (pg_inherits)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT inhrelid::regclass::text FROM pg_inherits "
                       "WHERE inhparent = 'audit_auditevent'::regclass")
        return {row[0] for row in cursor.fetchall()}


def exists(table: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [table])
        return cursor.fetchone()[0]


@on_postgresql
@pytest.mark.django_db
class TestPartitions:
    def test_the_migrated_table_is_partitioned_with_a_default(self):
        assert partitioned()
        assert partitions_list()[-1].is_default and DEFAULT in attached()

    def test_appends_land_in_the_partition_of_their_seq(self):
        partitions_relayout(5, ahead=3)
        add_events(12, batch=4)
        assert rows_per_partition() == {"audit_auditevent_p1": 5, "audit_auditevent_p6": 5,
                                        "audit_auditevent_p11": 2}
        assert chain_verify().ok

    def test_the_job_keeps_empty_partitions_ahead_and_is_idempotent(self):
        assert partitions_relayout(5, ahead=2) == ["audit_auditevent_p1", "audit_auditevent_p6"]
        add_events(7)  # p6 is no longer empty: one more is missing
        assert partitions_ensure(rows=5, ahead=2) == ["audit_auditevent_p11", "audit_auditevent_p16"]
        assert partitions_ensure(rows=5, ahead=2) == []
        assert attached() == {DEFAULT, *(f"audit_auditevent_p{n}" for n in (1, 6, 11, 16))}
        assert rows_per_partition() == {"audit_auditevent_p1": 5, "audit_auditevent_p6": 2}

    def test_rows_past_the_last_partition_go_to_default_and_move_when_their_partition_is_made(self):
        partitions_relayout(5, ahead=1)
        add_events(13)  # no partition beyond seq 5: the append must not fail
        assert rows_per_partition() == {"audit_auditevent_p1": 5, DEFAULT: 8}
        # PostgreSQL refuses a partition whose range has rows in DEFAULT: they move into it.
        created = partitions_ensure(rows=5, ahead=1)
        assert created == ["audit_auditevent_p6", "audit_auditevent_p11", "audit_auditevent_p16"]
        assert rows_per_partition() == {"audit_auditevent_p1": 5, "audit_auditevent_p6": 5,
                                        "audit_auditevent_p11": 3}
        add_events(2)
        assert rows_per_partition()["audit_auditevent_p11"] == 5
        report = chain_verify()
        assert report.ok and report.checked == 15

    def test_a_missing_default_partition_is_made_again(self):
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE audit_auditevent DETACH PARTITION {DEFAULT}")
            cursor.execute(f"DROP TABLE {DEFAULT}")
        assert DEFAULT in partitions_ensure()
        assert DEFAULT in attached()

    def test_stats_list_each_partition_with_its_times(self):
        partitions_relayout(5, ahead=2)
        add_events(7, start=DAY1, step=timedelta(hours=1))
        stats = {s.partition.name: s for s in partitions_stats()}
        assert stats["audit_auditevent_p6"].oldest == DAY1 + timedelta(hours=5)
        assert stats["audit_auditevent_p6"].newest == DAY1 + timedelta(hours=6)
        assert stats[DEFAULT].oldest is None

    def test_a_later_add_field_works_on_the_partitioned_table(self):
        """What a later AddField migration does (schema_editor.add_field), indexed column included."""
        partitions_relayout(5, ahead=2)
        add_events(7)
        field = models.CharField(max_length=16, default="main", db_index=True)
        field.set_attributes_from_name("region")
        with connection.schema_editor() as editor:
            editor.add_field(AuditEvent, field)
        with connection.cursor() as cursor:
            cursor.execute("SELECT DISTINCT region FROM audit_auditevent")
            assert cursor.fetchall() == [("main",)]
            cursor.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'audit_auditevent_p6' "
                           "AND indexdef LIKE '%(region)%'")
            assert cursor.fetchone()[0] == 1


def retained(days: int = 6, per_day: int = 24, *, exported_days: int = 3) -> None:
    """`days` days of events in partitions of one day each, the first `exported_days` exported."""
    partitions_relayout(per_day, ahead=days)
    add_events(days * per_day, start=DAY1, step=timedelta(hours=24 / per_day))
    with time_machine.travel(DAY1 + timedelta(days=exported_days, hours=2), tick=False):
        export_daily_run()


def prune() -> int:
    with time_machine.travel(datetime(2025, 3, 10, tzinfo=UTC), tick=False):
        return events_prune()


@pytest.fixture
def retention(tmp_path) -> Iterator[None]:
    with override_settings(TOLLGATE_AUDIT_RETENTION_DAYS=2, TOLLGATE_AUDIT_EXPORT_DIR=str(tmp_path),
                           TOLLGATE_AUDIT_EXPORT_DELAY_MINUTES=60):
        yield


@on_postgresql
@pytest.mark.django_db
class TestRetentionByPartitions:
    def test_it_drops_exactly_the_old_exported_anchored_partitions(self, retention, anchor_key):
        retained()
        anchor_write()
        assert prune() == 72  # days 1..3; days 4..6 are past retention too, but not exported
        gone = [f"audit_auditevent_p{n}" for n in (1, 25, 49)]
        kept = [f"audit_auditevent_p{n}" for n in (73, 97, 121)]
        assert not any(exists(name) for name in gone)  # detached and dropped, not only detached
        assert attached() == {*kept, DEFAULT}
        assert AuditEvent.objects.count() == 72
        head = AuditChainHead.objects.get(pk=1)
        assert (head.pruned_seq, head.pruned_hash) != (0, "") and head.pruned_seq == 72
        report = chain_verify()
        assert report.ok and report.checked == 72
        assert prune() == 0  # nothing more is due

    def test_the_oldest_remaining_event_must_still_link_to_the_dropped_ones(self, retention, anchor_key):
        retained()
        anchor_write()
        prune()
        AuditEvent.objects.filter(seq=73).delete()
        assert not chain_verify().ok

    def test_nothing_is_dropped_without_an_anchor_key(self, retention):
        retained()
        anchor_write()  # unsigned: no TOLLGATE_AUDIT_ANCHOR_KEY_FILE
        assert prune() == 0
        assert len(attached()) == 7

    def test_nothing_is_dropped_past_the_newest_signed_anchor(self, retention, anchor_key):
        partitions_relayout(24, ahead=6)
        add_events(50, start=DAY1, step=timedelta(hours=1))
        anchor_write()  # at event 50: covers day 1 and day 2, not day 3
        add_events(94, start=DAY1 + timedelta(hours=50), step=timedelta(hours=1))
        with time_machine.travel(DAY1 + timedelta(days=3, hours=2), tick=False):
            export_daily_run()
        assert prune() == 48
        assert not exists("audit_auditevent_p25") and exists("audit_auditevent_p49")
        assert chain_verify().ok

    def test_an_anchor_signed_with_another_key_does_not_count(self, retention, anchor_key, tmp_path, settings):
        from audit.anchors import private_key_new

        retained()
        anchor_write()
        other = tmp_path / "other.pem"
        other.write_bytes(private_key_new())
        settings.TOLLGATE_AUDIT_ANCHOR_KEY_FILE = str(other)
        assert prune() == 0

    def test_nothing_is_dropped_before_it_is_exported(self, retention, anchor_key):
        retained(exported_days=0)
        anchor_write()
        assert prune() == 0
        assert len(attached()) == 7

    def test_a_partition_only_partly_old_is_kept(self, retention, anchor_key):
        # Two days per partition: day 3 is exported but shares its partition with day 4, which is not.
        partitions_relayout(48, ahead=3)
        add_events(144, start=DAY1, step=timedelta(hours=1))
        anchor_write()
        with time_machine.travel(DAY1 + timedelta(days=3, hours=2), tick=False):
            export_daily_run()
        assert prune() == 48
        assert exists("audit_auditevent_p49")


@pytest.fixture
def committed(transactional_db) -> Iterator[None]:
    yield
    AuditEvent.objects.all().delete()
    partitions_relayout(settings.TOLLGATE_AUDIT_PARTITION_ROWS)  # the layout other tests start from


@on_postgresql
def test_a_drop_that_cannot_lock_the_table_waits_for_the_next_run(committed, retention, anchor_key):
    import psycopg

    from tests.servers import database_url_for

    retained()
    anchor_write()
    # A long read (an export, a verification) holds the table: the DETACH gives up after its lock
    # timeout instead of holding every append queued behind it; nothing changed, the next run drops.
    with psycopg.connect(database_url_for(connection.settings_dict)) as reader:
        reader.execute("SELECT count(*) FROM audit_auditevent").fetchone()
        assert prune() == 0
        reader.rollback()
    assert AuditChainHead.objects.get(pk=1).pruned_seq == 0
    assert exists("audit_auditevent_p1") and chain_verify().ok
    holders = other_lock_holders()
    assert prune() == 72, f"other sessions hold the audit table: {holders}"
    assert chain_verify().ok


def other_lock_holders(wait: float = 15.0) -> list[tuple]:
    """The other sessions holding a lock on the audit table or its partitions, once none is left or
    after `wait` seconds (a session of an earlier test may still be finishing): for the failure message."""
    deadline = time.monotonic() + wait
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT l.pid, l.mode, a.state, left(a.query, 200) FROM pg_locks l "
                "JOIN pg_class c ON c.oid = l.relation LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE c.relname LIKE 'audit_auditevent%%' AND l.pid <> pg_backend_pid()")
            holders = cursor.fetchall()
        if not holders or time.monotonic() > deadline:
            return holders
        time.sleep(0.2)


@pytest.fixture
def migrator(transactional_db) -> Iterator[None]:
    yield
    # Back to the layout every other test starts from: the table converted with the default sizes.
    AuditEvent.objects.all().delete()
    migrate([("audit", "0008_chain_format_lanes")])
    migrate()


@on_postgresql
def test_the_migration_converts_a_table_holding_rows(migrator):
    migrate([("audit", "0008_chain_format_lanes")])
    assert not partitioned()
    AuditEvent.objects.all().delete()
    lane_heads_ensure()  # a first append without heads draws seqs it then gives up (gaps are allowed)
    with connection.cursor() as cursor:  # seq from 1, whatever the tests before drew from the sequence
        cursor.execute("SELECT setval('audit_event_seq', 1, false)")
    add_events(30, batch=7)
    with override_settings(TOLLGATE_AUDIT_PARTITION_ROWS=10, TOLLGATE_AUDIT_PARTITIONS_AHEAD=2):
        migrate()
    assert partitioned()
    # The old table is the first partition, up to the next multiple of the size; then two ahead.
    assert [(p.name, p.low, p.high) for p in partitions_list()] == [
        ("audit_auditevent_p0", None, 31), ("audit_auditevent_p31", 31, 41), ("audit_auditevent_p41", 41, 51),
        (DEFAULT, None, None)]
    assert rows_per_partition() == {"audit_auditevent_p0": 30}
    report = chain_verify()
    assert report.ok and report.checked == 30
    add_events(15)
    assert rows_per_partition() == {"audit_auditevent_p0": 30, "audit_auditevent_p31": 10,
                                    "audit_auditevent_p41": 5}
    with connection.cursor() as cursor:  # the indexes kept Django's names, on the partitioned table
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'audit_auditevent'")
        assert {"audit_auditevent_pkey", "audit_event_time", "audit_event_consumer_time"} <= {
            row[0] for row in cursor.fetchall()}
    # And back: one plain table again, every row kept.
    migrate([("audit", "0008_chain_format_lanes")])
    assert not partitioned() and AuditEvent.objects.count() == 45
    assert chain_verify().ok


@pytest.mark.skipif(connection.vendor == "postgresql", reason="SQLite's")
@pytest.mark.django_db
def test_sqlite_keeps_one_table():
    assert not partitioned()
    assert partitions_list() == [] and partitions_ensure() == [] and partitions_stats() == []
