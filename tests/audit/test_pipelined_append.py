"""The writer thread's append on PostgreSQL: two pipelined round trips, same chain guarantees."""
from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from django.db import connection

from audit import services
from audit.chain import CHAIN_FIELDS, chain_verify
from audit.models import AuditChainHead, AuditEvent
from audit.services import _VALUES_ROWS, AuditRecord, events_append, lane_heads_ensure

pytestmark = pytest.mark.django_db(transaction=True)  # outside any transaction, as the writer thread runs


@pytest.fixture(autouse=True)
def postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip("the pipelined append is PostgreSQL's")


@pytest.fixture
def pipelined_only(monkeypatch):
    """The lane heads exist, so every append must take the pipelined path, never the ORM's."""
    lane_heads_ensure()

    def orm_append(*args):
        raise AssertionError("the ORM path was taken")

    monkeypatch.setattr("audit.services._append", orm_append)


def record(tag: str, status: object = 200) -> AuditRecord:
    return AuditRecord(time=datetime(2025, 1, 1, tzinfo=UTC), request_id=f"req_{tag}", endpoint="chat.completions",
                       status=status, body_mode="metadata", request_body={"model": "m", "messages": []})


def test_concurrent_writers_extend_one_unbroken_chain(pipelined_only):
    # Batch sizes on both sides of _VALUES_ROWS: the INSERT and the COPY paths.
    sizes = [1, 2, _VALUES_ROWS + 1, 7]
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            for i in range(15):
                size = sizes[i % len(sizes)]
                assert not connection.in_atomic_block
                events_append([record(f"{name}-{i}-{j}") for j in range(size)])
        except BaseException as exc:  # reported below, from the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    expected = 3 * sum(sizes[i % len(sizes)] for i in range(15))
    assert AuditEvent.objects.count() == expected
    # Spread over lanes: each lane's places run 1..n without a gap, and its head names its last.
    places: dict[int, list[int]] = {}
    for lane, place in AuditEvent.objects.order_by("seq").values_list("lane", "lane_seq"):
        places.setdefault(lane, []).append(place)
    heads = dict(AuditChainHead.objects.values_list("id", "seq"))
    for lane, seen in places.items():
        assert seen == list(range(1, len(seen) + 1))
        assert heads[lane + 1] == len(seen)
    report = chain_verify()
    assert report.ok and report.checked == expected


def test_a_row_the_database_refuses_is_reduced_and_its_batch_is_written(pipelined_only, monkeypatch):
    # What the sanitizer (audit/storable.py) would have caught: a raw string in the status column.
    real, status = services.event_values, CHAIN_FIELDS.index("status") - 2  # values start after seq, prev_hash

    def unsanitized(record):
        values = real(record)
        return (*values[:status], "not a number", *values[status + 1:]) if "bad" in record.request_id else values

    monkeypatch.setattr("audit.services.event_values", unsanitized)
    events_append([record("first")])
    events_append([record("bad")])  # the INSERT fails inside the pipeline
    events_append([record("ok-1"), record("bad-copy"), *(record(f"ok-{i}") for i in range(2, _VALUES_ROWS + 2))])
    events_append([record("after")])
    stored = dict(AuditEvent.objects.values_list("request_id", "error_class"))
    assert len(stored) == 1 + 1 + _VALUES_ROWS + 2 + 1
    assert stored["req_bad"] == stored["req_bad-copy"] == "audit_reduced"
    assert {rid for rid, error in stored.items() if error} == {"req_bad", "req_bad-copy"}
    assert chain_verify().ok


def test_a_missing_chain_head_is_created():
    AuditChainHead.objects.all().delete()
    events_append([record("one"), record("two"), record("three")])
    events_append([record("four")])
    assert AuditChainHead.objects.get(pk=1).seq == 4
    assert chain_verify().checked == 4
