from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from audit.models import AuditEvent
from audit.services import AuditRecord, events_append


def records(n: int, *, start: datetime | None = None, step: timedelta = timedelta(seconds=1),
            consumer: str = "alice-agent", **values) -> list[AuditRecord]:
    start = start or datetime(2025, 3, 1, tzinfo=UTC)
    fields = {"endpoint": "chat.completions", "status": 200, "consumer_id": 1, "consumer_name": consumer,
              "key_prefix": "tg-abcdefg", "route": "demo", "provider": "sandbox", "upstream_model": "sandbox-model",
              "prompt_tokens": 10, "completion_tokens": 5, "cost_micros": 1234, "latency_us": 52_000,
              "attempts": 1, "client_ip": "127.0.0.1", "user_agent": "pytest", **values}
    return [AuditRecord(time=start + i * step, request_id=f"req_test{i:08d}", **fields) for i in range(n)]


def add_events(n: int, *, batch: int = 5000, **kwargs) -> None:
    """n chained events (written in batches, as the writer would)."""
    pending = records(n, **kwargs)
    for i in range(0, n, batch):
        events_append(pending[i:i + batch])


def all_events() -> list[AuditEvent]:
    return list(AuditEvent.objects.order_by("seq"))


def partitions_relayout(rows: int, ahead: int = 2) -> list[str]:
    """The empty audit table's partitions made anew, `rows` events each, from seq 1 (PostgreSQL;
    nothing on SQLite). Inside a test's transaction, rolled back with it."""
    from django.db import connection, transaction

    from audit.partitions import partition_drop, partitions_ensure, partitions_list
    from audit.services import lane_heads_ensure

    with transaction.atomic():
        for partition in partitions_list():
            if not partition.is_default:
                partition_drop(partition)
    if connection.vendor == "postgresql":
        # The heads first: an append that finds none draws seqs it then gives up (gaps are allowed,
        # but these tests name partitions by seq).
        lane_heads_ensure()
        with connection.cursor() as cursor:
            cursor.execute("SELECT setval('audit_event_seq', 1, false)")
    return partitions_ensure(rows=rows, ahead=ahead)


@pytest.fixture
def anchor_key(tmp_path, settings) -> None:
    """Anchors signed with a key of this test's own (TOLLGATE_AUDIT_ANCHOR_KEY_FILE)."""
    from audit.anchors import private_key_new

    key_file = tmp_path / "anchor-key.pem"
    key_file.write_bytes(private_key_new())
    settings.TOLLGATE_AUDIT_ANCHOR_KEY_FILE = str(key_file)


@pytest.fixture(autouse=True)
def seq_from_one(request):
    """Each test's events start at seq 1, as they did before lanes: PostgreSQL's `seq` sequence
    is not rolled back with a test's transaction (nor reset by the flush of a transactional test)."""
    names = set(request.fixturenames)
    if request.node.get_closest_marker("django_db") is None and not names & {"db", "transactional_db"}:
        return
    request.getfixturevalue("_django_db_helper")
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT setval('audit_event_seq', COALESCE((SELECT MAX(seq) FROM audit_auditevent), 0) + 1,"
                           " false)")


def add_v1_events(n: int, **kwargs) -> None:
    """n events sealed as the gateway did before format versions and lanes (issues #16, #18): format
    version 1's columns and hash (audit.chain.CHAIN_FIELDS_V1), one chain whose place is seq."""
    from audit.chain import CHAIN_FIELDS_V1, chain_signing_key, event_hash, head_fields
    from audit.models import AuditChainHead
    from audit.records import event_values
    from audit.services import seq_sequence_sync

    key_id, key = chain_signing_key()
    head, _ = AuditChainHead.objects.get_or_create(pk=1)
    seq, prev = head.seq, head.hash
    for record in records(n, **kwargs):
        seq += 1
        values = (seq, prev, *event_values(record)[:len(CHAIN_FIELDS_V1) - 2])
        prev = event_hash(values, key=key)
        AuditEvent.objects.create(**dict(zip(CHAIN_FIELDS_V1, values, strict=True)), lane=0, lane_seq=seq,
                                  key_id=key_id, hash=prev)
    AuditChainHead.objects.filter(pk=1).update(**head_fields(seq, prev))
    seq_sequence_sync()
