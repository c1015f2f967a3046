"""The chain in lanes (issue #18): each lane a chain of its own with its own head, the heads anchored
together; audit_verify still catches a row deleted, a lane truncated or rows reordered in any lane."""
from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from io import StringIO

import orjson
import pytest
import time_machine
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from audit import services
from audit.anchors import Anchor, anchor_write, anchors_check, canonical, chain_against_anchor
from audit.chain import chain_verify, head_fields
from audit.models import AuditChainHead, AuditEvent
from audit.services import events_append, events_prune, export_daily_run, lane_heads_ensure, lanes_prune_mark_below
from tests.audit.conftest import add_v1_events, records

pytestmark = pytest.mark.django_db


@pytest.fixture
def in_lane(monkeypatch, settings):
    """append(lane, records): the writer's path, with the lane chosen by the test (one connection cannot
    show SKIP LOCKED at work; test_lanes_postgres does, with several)."""
    settings.TOLLGATE_AUDIT_LANES = 4
    def append(lane: int, pending: list) -> None:
        def locked() -> AuditChainHead:
            lane_heads_ensure()
            return AuditChainHead.objects.select_for_update().get(pk=lane + 1)

        monkeypatch.setattr(services, "_lane_locked", locked)
        events_append(pending)
        monkeypatch.undo()

    return append


@pytest.fixture
def three_lanes(in_lane):
    """Lanes 0, 1 and 2 with 6, 4 and 5 events, written interleaved as concurrent writers would."""
    start = datetime(2025, 3, 1, tzinfo=UTC)
    for i, (lane, count) in enumerate([(0, 2), (1, 2), (2, 3), (0, 4), (1, 2), (2, 2)]):
        in_lane(lane, records(count, start=start + timedelta(minutes=i), consumer=f"lane{lane}"))
    return in_lane


def verify(*args) -> str:
    out = StringIO()
    call_command("audit_verify", *args, stdout=out, stderr=out)
    return out.getvalue()


def lane_rows(lane: int) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(lane=lane).order_by("lane_seq"))


def test_each_lane_is_a_chain_of_its_own_and_seq_grows_along_it(three_lanes):
    for lane, count in ((0, 6), (1, 4), (2, 5)):
        rows = lane_rows(lane)
        assert [r.lane_seq for r in rows] == list(range(1, count + 1))
        assert [r.prev_hash for r in rows[1:]] == [r.hash for r in rows[:-1]]
        assert [r.seq for r in rows] == sorted(r.seq for r in rows)
        assert AuditChainHead.objects.get(pk=lane + 1).seq == count
    assert AuditEvent.objects.count() == len(set(AuditEvent.objects.values_list("seq", flat=True))) == 15
    report = chain_verify()
    assert report.ok and report.checked == 15, report.problem
    assert "15 events verified (against no anchor) in 4 lanes" in verify()


def test_a_row_deleted_in_one_lane_is_caught(three_lanes):
    victim = lane_rows(1)[1]
    victim.delete()
    report = chain_verify()
    assert (report.ok, report.lane, report.broken_seq) == (False, 1, lane_rows(1)[1].seq)
    assert "missing" in report.problem
    with pytest.raises(CommandError, match="lane 1") as error:
        verify()
    assert error.value.returncode == 2


def test_a_lane_truncated_with_its_head_moved_back_without_the_key_is_caught(three_lanes):
    rows = lane_rows(2)
    AuditEvent.objects.filter(pk__in=[r.pk for r in rows[3:]]).delete()
    AuditChainHead.objects.filter(pk=3).update(seq=3, hash=rows[2].hash)  # the MAC is left as it was
    report = chain_verify()
    assert not report.ok and report.lane == 2 and "MAC" in report.problem


def test_a_lane_truncated_by_someone_with_the_chain_key_is_caught_by_the_anchor(three_lanes):
    anchor = anchor_write()
    assert {h["lane"]: h["seq"] for h in anchor.body["heads"]} == {0: 6, 1: 4, 2: 5, 3: 0}
    rows = lane_rows(2)
    AuditEvent.objects.filter(pk__in=[r.pk for r in rows[3:]]).delete()
    AuditChainHead.objects.filter(pk=3).update(**head_fields(3, rows[2].hash, lane=2))  # a valid MAC
    assert chain_verify().ok, "without the anchor the shorter lane looks whole"
    problems = chain_against_anchor(anchor)
    assert problems and all("lane 2" in p for p in problems)
    with pytest.raises(CommandError, match="lane 2 is at event 3, below event 5"):
        verify()


def test_rows_reordered_within_a_lane_are_caught(three_lanes):
    first, second = lane_rows(0)[2:4]
    AuditEvent.objects.filter(pk=first.pk).update(lane_seq=-1)
    AuditEvent.objects.filter(pk=second.pk).update(lane_seq=first.lane_seq)
    AuditEvent.objects.filter(pk=first.pk).update(lane_seq=second.lane_seq)
    report = chain_verify()
    assert not report.ok and report.lane == 0 and report.broken_seq == second.seq


def test_a_row_moved_to_another_lane_is_caught(three_lanes):
    row = lane_rows(1)[-1]
    AuditEvent.objects.filter(pk=row.pk).update(lane=3, lane_seq=1)
    AuditChainHead.objects.filter(pk=4).update(**head_fields(1, row.hash, lane=3))
    assert not chain_verify().ok


def test_rows_of_a_lane_without_a_head_are_caught(three_lanes):
    AuditChainHead.objects.filter(pk=2).delete()
    report = chain_verify()
    assert not report.ok and "no head" in report.problem and report.lane == 1


def test_the_single_chain_of_before_lanes_is_lane_0s_history(in_lane):
    add_v1_events(5)
    in_lane(1, records(3))
    in_lane(0, records(2))
    in_lane(2, records(1))
    assert [(r.format, r.lane_seq) for r in lane_rows(0)] == [(None, i) for i in range(1, 6)] + [(2, 6), (2, 7)]
    assert lane_rows(0)[5].prev_hash == lane_rows(0)[4].hash
    report = chain_verify()
    assert report.ok and report.checked == 11, report.problem
    # A format 1 row cannot pose as another lane's (its hash does not cover the lane).
    AuditEvent.objects.filter(seq=3).update(lane=1)
    assert not chain_verify().ok


def test_anchors_catch_a_lane_dropped_or_truncated_between_two_anchors(three_lanes):
    first = anchor_write()

    def second(heads: list[dict]) -> Anchor:
        body = dict(first.body, number=2, previous=first.digest, heads=heads)
        return Anchor(2, body, hashlib.sha256(canonical(body)).hexdigest(), "")

    assert anchors_check([first, second(first.body["heads"])], public_key=None).ok
    dropped = second([h for h in first.body["heads"] if h["lane"] != 1])
    assert anchors_check([first, dropped], public_key=None).problems == [
        "anchor 2 lacks lane 1, which anchors before it held (lane dropped)"]
    truncated = second([dict(h, seq=2) if h["lane"] == 0 else h for h in first.body["heads"]])
    assert anchors_check([first, truncated], public_key=None).problems == [
        "anchor 2 has lane 0 at event 2, below event 6 of an anchor before it (lane truncated)"]


def test_export_merges_the_lanes_in_time_order(three_lanes):
    from audit.exports import export_chunks
    from audit.selectors import events_in_range

    exported = [orjson.loads(line) for line in b"".join(export_chunks(events_in_range(), "jsonl")).splitlines()]
    assert len(exported) == 15
    assert [r["time"] for r in exported] == sorted(r["time"] for r in exported)
    assert {r["lane"] for r in exported} == {0, 1, 2}
    lane1 = [r for r in exported if r["lane"] == 1]
    assert [r["lane_seq"] for r in lane1] == [1, 2, 3, 4]
    assert [r["prev_hash"] for r in lane1[1:]] == [r["hash"] for r in lane1[:-1]]


@override_settings(TOLLGATE_AUDIT_RETENTION_DAYS=2)
def test_retention_prunes_each_lane_and_keeps_each_verifiable(in_lane, tmp_path, settings):
    settings.TOLLGATE_AUDIT_EXPORT_DIR = str(tmp_path)
    day = datetime(2025, 3, 1, tzinfo=UTC)
    for d in range(4):  # four days; every day 3 events in lane 0, 2 in lane 1
        in_lane(0, records(3, start=day + timedelta(days=d), step=timedelta(hours=1)))
        in_lane(1, records(2, start=day + timedelta(days=d, hours=5), step=timedelta(hours=1)))
    with time_machine.travel(datetime(2025, 3, 5, 2, tzinfo=UTC), tick=False):
        export_daily_run()
    manifest = orjson.loads((tmp_path / "audit-2025-03-04.manifest.json").read_bytes())
    assert [(h["lane"], h["seq"]) for h in manifest["chain_heads"]] == [(0, 12), (1, 8), (2, 0), (3, 0)]
    # The row-deleting path (SQLite's); PostgreSQL's partition drops are tests/audit/test_partitions.py's.
    # Patched here, after the appends: in_lane's monkeypatch.undo() would undo it.
    with time_machine.travel(datetime(2025, 3, 5, tzinfo=UTC), tick=False), \
            pytest.MonkeyPatch.context() as patch:
        patch.setattr("audit.services.partitioned", lambda: False)
        assert events_prune() == 10  # the first two days of both lanes
    heads = {h.lane: h for h in AuditChainHead.objects.filter(pk__lte=2)}
    assert (heads[0].pruned_seq, heads[1].pruned_seq) == (6, 4)
    assert heads[0].pruned_hash != heads[1].pruned_hash
    assert lane_rows(0)[0].prev_hash == heads[0].pruned_hash and lane_rows(1)[0].prev_hash == heads[1].pruned_hash
    report = chain_verify()
    assert report.ok and report.checked == 10, report.problem
    AuditEvent.objects.filter(pk=lane_rows(1)[0].pk).delete()
    assert chain_verify().lane == 1


def test_the_pruned_marker_for_a_dropped_range_of_seq(three_lanes):
    """What dropping a partition (every event with seq below a bound) needs: each lane's marker moved to
    its last event below the bound, in the same transaction as the drop."""
    bound = lane_rows(0)[3].seq  # lane 0's fourth event: the second round of writes starts around here
    expected = {lane: max([r.lane_seq for r in lane_rows(lane) if r.seq < bound], default=0) for lane in (0, 1, 2)}
    lanes_prune_mark_below(seq=bound)
    AuditEvent.objects.filter(seq__lt=bound).delete()
    assert {h.lane: h.pruned_seq for h in AuditChainHead.objects.filter(pk__lte=3)} == expected
    report = chain_verify()
    assert report.ok, report.problem


def test_the_sink_delivers_each_lane_by_its_own_cursor(in_lane, monkeypatch):
    """A lane may commit an event with a smaller seq after another lane's larger ones were shipped
    (each drew its seq, then committed on its own): a cursor per lane still delivers it."""
    from django.db import connection
    from django.test import override_settings

    from audit.models import AuditSinkCursor

    if connection.vendor != "postgresql":
        pytest.skip("SQLite draws seq under its one write lock: no lane commits a smaller seq later")
    from audit.sinks import sink_flush
    from tests.audit.test_sink import Collector
    from tests.servers import free_port

    collector = Collector(free_port())
    collector.start()
    try:
        with override_settings(TOLLGATE_AUDIT_SINK_URL=f"http://127.0.0.1:{collector.port}/logs",
                               TOLLGATE_AUDIT_SINK_BATCH_SIZE=2, TOLLGATE_AUDIT_SINK_RETRIES=0):
            real_seqs = services._seqs
            monkeypatch.setattr(services, "_seqs", lambda count: [1000 + i for i in range(count)])
            in_lane(1, records(3, consumer="late-drawn-early"))  # as if drawn after lane 0's next ones
            monkeypatch.setattr(services, "_seqs", real_seqs)
            assert sink_flush(max_seconds=20) == 3
            in_lane(0, records(2, consumer="drawn-small"))
            assert AuditEvent.objects.filter(lane=0).order_by("seq").last().seq < 1000
            assert sink_flush(max_seconds=20) == 2
            assert sink_flush(max_seconds=20) == 0
    finally:
        collector.stop()
    assert sorted(e["seq"] for e in collector.received) == sorted(AuditEvent.objects.values_list("seq", flat=True))
    assert dict(AuditSinkCursor.objects.values_list("lane", "last_seq")) == {0: 2, 1: 3, 2: 0, 3: 0}


def test_since_checks_each_lane_from_its_first_event_at_that_time(three_lanes):
    # The second round of writes started 3 minutes in: lane 0's events 3..6, lane 1's 3..4, lane 2's 4..5.
    since = datetime(2025, 3, 1, 0, 3, tzinfo=UTC)
    report = chain_verify(since=since)
    assert report.ok and report.checked == 4 + 2 + 2, report.problem
    AuditEvent.objects.filter(lane=1, lane_seq=2).delete()  # the one the first checked event links to
    report = chain_verify(since=since)
    assert not report.ok and report.lane == 1 and "missing" in report.problem
