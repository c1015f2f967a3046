"""Writers on PostgreSQL take different lanes instead of queueing on one head (issue #18): real threads,
real connections, outside any test transaction (as the writer thread runs)."""
from __future__ import annotations

import threading
from datetime import UTC, datetime

import psycopg
import pytest
from django.db import connection, transaction
from django.test import override_settings

from audit import services
from audit.chain import chain_verify
from audit.models import AuditChainHead, AuditEvent
from audit.services import AuditRecord, events_append, lane_heads_ensure
from tests.servers import database_url_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def postgres_with_four_lanes():
    if connection.vendor != "postgresql":
        pytest.skip("lanes are PostgreSQL's (SQLite has one write lock)")
    with override_settings(TOLLGATE_AUDIT_LANES=4):
        lane_heads_ensure()
        yield


def record(tag: str) -> AuditRecord:
    return AuditRecord(time=datetime(2025, 1, 1, tzinfo=UTC), request_id=f"req_{tag}", endpoint="chat.completions",
                       status=200, prompt_tokens=10, completion_tokens=2, cache_read_tokens=8)


def run_threads(target, names) -> None:
    errors: list[BaseException] = []

    def run(name):
        try:
            target(name)
        except BaseException as exc:  # reported below, from the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a writer hung"
    assert not errors, errors


def test_four_writers_hold_four_lanes_at_once(monkeypatch):
    """Each writer waits, inside its transaction and with its lane held, until all four are there: on
    one shared head they could never all be inside at once (the barrier would break)."""
    barrier = threading.Barrier(4, timeout=30)
    real_chain = services._chain
    first_batch = threading.local()

    def chain_at_barrier(*args, **kwargs):
        if not getattr(first_batch, "done", False):
            first_batch.done = True
            barrier.wait()
        return real_chain(*args, **kwargs)

    monkeypatch.setattr(services, "_chain", chain_at_barrier)

    def writer(name: str) -> None:
        for i in range(6):
            events_append([record(f"{name}-{i}-{j}") for j in range(1 + i % 3)])

    run_threads(writer, "abcd")
    lanes = {}
    for lane, place in AuditEvent.objects.order_by("seq").values_list("lane", "lane_seq"):
        lanes.setdefault(lane, []).append(place)
    assert sorted(lanes) == [0, 1, 2, 3], "every lane was used"
    for lane, places in lanes.items():
        assert places == list(range(1, len(places) + 1))
        assert AuditChainHead.objects.get(pk=lane + 1).seq == len(places)
    report = chain_verify()
    assert report.ok and report.checked == 4 * (1 + 2 + 3 + 1 + 2 + 3), report.problem


def hold(lane_ids: list[int]) -> psycopg.Connection:
    """Another connection holding the heads of these lane ids (lane + 1), as a writer mid-batch does."""
    other = psycopg.connect(database_url_for(connection.settings_dict))
    other.execute("SELECT id FROM audit_auditchainhead WHERE id = ANY(%s) FOR UPDATE", [lane_ids])
    return other


@pytest.mark.parametrize("path", ["pipelined", "orm"])
def test_a_writer_skips_the_lanes_others_hold(path):
    other = hold([1, 2, 3])
    try:
        if path == "orm":
            with transaction.atomic():
                events_append([record("skips")])
        else:
            events_append([record("skips")])
    finally:
        other.rollback()
        other.close()
    assert AuditEvent.objects.get().lane == 3
    assert chain_verify().ok


def test_with_every_lane_held_a_writer_waits_for_its_own():
    other = hold([1, 2, 3, 4])
    done = threading.Event()

    def writer(_):
        events_append([record("waits")])
        done.set()

    thread = threading.Thread(target=lambda: run_threads(writer, ["w"]))
    thread.start()
    # Its own connection, in autocommit: a transaction reads pg_stat_activity once.
    probe = psycopg.connect(database_url_for(connection.settings_dict), autocommit=True)
    try:
        waiting = 0
        for _ in range(300):  # until the writer's connection waits on a row lock (bounded: 30 s)
            waiting = probe.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                    "AND datname = current_database()").fetchone()[0]
            if waiting:
                break
            done.wait(0.1)
        assert waiting == 1 and not done.is_set(), "it wrote while every lane was held"
    finally:
        probe.close()
        other.rollback()
        other.close()
    thread.join(60)
    assert done.is_set()
    assert AuditEvent.objects.get().lane_seq == 1
    assert chain_verify().ok
