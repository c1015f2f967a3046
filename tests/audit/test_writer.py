"""Group commit: concurrent requests share a transaction; each waits for its own commit."""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from asgiref.sync import async_to_sync
from django.test import override_settings

from audit.chain import chain_verify
from audit.models import AuditEvent
from audit.services import AuditRecord
from audit.writer import GroupCommitWriter

pytestmark = pytest.mark.django_db


def record(i: int) -> AuditRecord:
    return AuditRecord(time=datetime(2025, 1, 1, tzinfo=UTC), request_id=f"req_{i}", endpoint="chat.completions",
                       status=200)


@override_settings(TOLLGATE_AUDIT_BATCH_WINDOW_MS=2)
def test_concurrent_records_share_batches_and_each_is_committed_when_awaited():
    writer = GroupCommitWriter()
    seen_after_await: list[bool] = []

    async def one(i: int) -> None:
        await writer.write(record(i))
        seen_after_await.append(await AuditEvent.objects.filter(request_id=f"req_{i}").aexists())

    async def many() -> None:
        await asyncio.gather(*(one(i) for i in range(200)))

    async_to_sync(many)()
    assert all(seen_after_await) and len(seen_after_await) == 200
    assert AuditEvent.objects.count() == 200
    assert writer.batches < 20, "concurrent requests should share transactions"
    assert chain_verify().checked == 200


@override_settings(TOLLGATE_AUDIT_BATCH_MAX=10, TOLLGATE_AUDIT_BATCH_WINDOW_MS=0)
def test_batches_are_capped():
    writer = GroupCommitWriter()

    async def many() -> None:
        await asyncio.gather(*(writer.write(record(i)) for i in range(35)))

    async_to_sync(many)()
    assert writer.batches == 4 and writer.rows == 35


def test_a_failed_batch_fails_its_requests(monkeypatch):
    writer = GroupCommitWriter()

    def broken(records):
        raise RuntimeError("database is down")

    monkeypatch.setattr("audit.writer.events_append_each", broken)

    async def one() -> None:
        await writer.write(record(1))

    with pytest.raises(RuntimeError, match="database is down"):
        async_to_sync(one)()
