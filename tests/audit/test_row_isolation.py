"""A row the database refuses costs only that row (issue #15): its batch's other rows are written
intact, the chain stays contiguous, the refused row is stored in its reduced form, and a data
error never reaches another request as a DatabaseError. An outage is still every row's."""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson
import pytest
from asgiref.sync import async_to_sync
from django.db import DatabaseError, OperationalError, connection

from audit import services
from audit.chain import CHAIN_FIELDS, chain_verify
from audit.models import AuditChainHead, AuditEvent
from audit.services import AuditRecord, AuditRowRefused, events_append, events_append_each
from audit.writer import GroupCommitWriter

ENDPOINT = CHAIN_FIELDS.index("endpoint") - 2  # event_values starts after seq and prev_hash
ROUTE = CHAIN_FIELDS.index("route") - 2


def record(tag: str) -> AuditRecord:
    return AuditRecord(time=datetime(2025, 1, 1, tzinfo=UTC), request_id=f"req_{tag}", endpoint="chat.completions",
                       status=200, error_class="", consumer_id=7, consumer_name="alice", key_prefix="tg-abcdefg",
                       route="demo", provider="sandbox", upstream_model="m", prompt_tokens=3, completion_tokens=4,
                       client_ip="127.0.0.1", user_agent="pytest", body_mode="metadata",
                       request_body={"model": "demo", "messages": []})


@pytest.fixture
def poison(monkeypatch):
    """Rows tagged "poison" reach the database as the sanitizer never lets them: a NUL in the
    route on PostgreSQL, no endpoint (NOT NULL) on either database. `reduced` too poisons the
    reduced form."""
    real_values, real_reduced = services.event_values, services.reduced_values
    state = {"reduced": False}

    def bad(values: tuple) -> tuple:
        values = list(values)
        values[ENDPOINT] = None
        if connection.vendor == "postgresql":
            values[ROUTE] = "demo\x00"
        return tuple(values)

    def event_values(record):
        values = real_values(record)
        return bad(values) if "poison" in record.request_id else values

    def reduced_values(record, *, reason):
        values = real_reduced(record, reason=reason)
        return bad(values) if state["reduced"] else values

    monkeypatch.setattr("audit.services.event_values", event_values)
    monkeypatch.setattr("audit.services.reduced_values", reduced_values)
    return state


def check_batch(tags: list[str]) -> None:
    rows = list(AuditEvent.objects.order_by("seq"))
    assert [row.request_id for row in rows] == [f"req_{tag}" for tag in tags], "one row each, in arrival order"
    # A refused batch leaves gaps in seq (drawn from a sequence), none in the lane's places.
    assert [row.lane_seq for row in rows] == list(range(1, len(tags) + 1))
    assert {row.lane for row in rows} == {0}
    assert AuditChainHead.objects.get(pk=1).seq == len(tags)
    report = chain_verify()
    assert report.ok and report.checked == len(tags), report.problem
    for row in rows:
        if "poison" in row.request_id:
            assert (row.error_class, row.status, row.consumer_id, row.key_prefix, row.endpoint) == (
                "audit_reduced", 200, 7, "tg-abcdefg", "chat.completions")
            assert row.route == row.user_agent == row.upstream_model == ""
            assert orjson.loads(row.request_body)["_tollgate"].startswith("audit row reduced: ")
        else:  # intact: as if the poisoned rows had never been in its batch
            assert (row.error_class, row.route, row.user_agent, row.prompt_tokens) == ("", "demo", "pytest", 3)
            assert orjson.loads(row.request_body) == {"model": "demo", "message_count": 0}


TAGS = ["a", "b", "poison-1", "c", "d", "e", "f", "g", "poison-2"]


@pytest.mark.django_db
def test_in_a_transaction_only_the_poisoned_rows_are_reduced(poison):
    # Inside a transaction (tests, management commands): savepoints, the ORM's path.
    assert events_append_each([record(tag) for tag in TAGS]) == [None] * len(TAGS)
    check_batch(TAGS)


@pytest.mark.django_db(transaction=True)
def test_on_the_writer_thread_path_only_the_poisoned_rows_are_reduced(poison):
    # Outside any transaction, as the writer's thread runs (pipelined on PostgreSQL).
    AuditChainHead.objects.get_or_create(pk=1)
    events_append([record("first")])
    events_append([record(tag) for tag in TAGS])
    events_append([record("poison-alone")])
    events_append([record("last")])
    check_batch(["first", *TAGS, "poison-alone", "last"])


@pytest.mark.django_db
def test_a_row_refused_even_reduced_fails_alone_and_not_as_a_database_error(poison):
    poison["reduced"] = True
    results = events_append_each([record(tag) for tag in ("a", "poison", "b")])
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], AuditRowRefused) and not isinstance(results[1], DatabaseError)
    assert list(AuditEvent.objects.order_by("seq").values_list("request_id", flat=True)) == ["req_a", "req_b"]
    assert chain_verify().ok


@pytest.mark.django_db
def test_an_outage_is_every_rows(monkeypatch):
    def refused(values):
        raise OperationalError("connection refused")

    monkeypatch.setattr("audit.services._append_committed", refused)
    results = events_append_each([record(tag) for tag in ("a", "b", "c")])
    assert all(isinstance(error, OperationalError) for error in results)
    with pytest.raises(OperationalError):
        events_append([record("d")])


@pytest.mark.django_db
def test_an_outage_while_isolating_a_row_fails_the_rows_not_yet_written(monkeypatch, poison):
    real = services._append_committed
    calls = []

    def flaky(values):
        calls.append(len(values))
        if len(calls) == 3:  # the batch, its first half (written), then the second half: the database is gone
            raise OperationalError("server closed the connection unexpectedly")
        real(values)

    monkeypatch.setattr("audit.services._append_committed", flaky)
    results = events_append_each([record(tag) for tag in ("a", "b", "poison", "c")])
    assert results[:2] == [None, None]
    assert all(isinstance(error, OperationalError) for error in results[2:])
    assert list(AuditEvent.objects.values_list("request_id", flat=True).order_by("seq")) == ["req_a", "req_b"]


@pytest.mark.django_db
def test_the_writer_answers_every_request_of_a_batch_with_a_poisoned_row(poison):
    writer = GroupCommitWriter()
    outcomes: dict[str, str] = {}

    async def one(tag: str) -> None:
        try:
            await writer.write(record(tag))
            outcomes[tag] = "stored"
        except Exception as exc:
            outcomes[tag] = exc.__class__.__name__

    async def many() -> None:
        await asyncio.gather(*(one(f"poison-{i}" if i % 20 == 7 else f"ok-{i}") for i in range(60)))

    async_to_sync(many)()
    assert set(outcomes.values()) == {"stored"} and len(outcomes) == 60
    assert AuditEvent.objects.count() == 60
    assert AuditEvent.objects.filter(error_class="audit_reduced").count() == 3
    assert chain_verify().ok


@pytest.mark.django_db
def test_the_writer_still_fails_its_requests_on_an_outage(monkeypatch):
    def refused(values):
        raise OperationalError("connection refused")

    monkeypatch.setattr("audit.services._append_committed", refused)
    writer = GroupCommitWriter()

    async def one() -> None:
        await writer.write(record("x"))

    with pytest.raises(DatabaseError):
        async_to_sync(one)()
