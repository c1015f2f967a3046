"""Group commit: one insert for the audit rows of concurrent requests (issue #7).

Each request hands its record to this process's writer and waits until the
transaction holding its row has committed; only then is its answer released.
Records that arrive while the previous batch is being committed (or within
`TOLLGATE_AUDIT_BATCH_WINDOW_MS` of the first one; 0 by default, since a commit
takes longer than the gap between requests under load anyway) share one
transaction, so under load the cost of a commit, its fsync and the chain head's
lock is shared by the whole batch instead of paid per request. The insert itself runs in a thread: the
event loop never blocks on the database.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import AsyncToSync, sync_to_async
from django.conf import settings

from audit.services import AuditRecord, events_append

logger = logging.getLogger(__name__)


class GroupCommitWriter:
    """Per process and event loop; safe to call from any number of concurrent tasks."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[AuditRecord, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.rows = 0

    async def write(self, record: AuditRecord) -> None:
        """Return once `record` is committed; raise if its batch could not be written."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A new event loop (tests and management commands run one per call):
            # whatever belonged to the old one cannot be awaited from here.
            self._loop, self._pending, self._task = loop, [], None
        future = loop.create_future()
        self._pending.append((record, future))
        if self._task is None:
            # An empty context: the flusher outlives the request that started it,
            # so it must not inherit that request's thread-sensitive executor.
            self._task = loop.create_task(self._flush_loop(), context=contextvars.Context())
        # shield: a client that disconnects cancels its request, not the batch.
        await asyncio.shield(future)

    async def _flush_loop(self) -> None:
        window = settings.TOLLGATE_AUDIT_BATCH_WINDOW_MS / 1000.0
        batch_max = settings.TOLLGATE_AUDIT_BATCH_MAX
        batch: list[tuple[AuditRecord, asyncio.Future]] = []
        try:
            await asyncio.sleep(window)
            while self._pending:
                batch, self._pending = self._pending[:batch_max], self._pending[batch_max:]
                try:
                    await _in_db_thread([record for record, _ in batch])
                except Exception as exc:
                    logger.exception("audit batch of %d events could not be written", len(batch))
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    self.batches += 1
                    self.rows += len(batch)
                    for _, future in batch:
                        if not future.done():
                            future.set_result(None)
        except asyncio.CancelledError:
            # The loop is shutting down: nobody will answer these requests.
            for _, future in batch + self._pending:
                future.cancel()
            self._pending = []
            raise
        finally:
            self._task = None


_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")


async def _in_db_thread(records: list[AuditRecord]) -> None:
    if asyncio.get_running_loop() in AsyncToSync.loop_thread_executors:
        # Called through async_to_sync (tests, management commands): use the
        # caller's thread, and with it its connection and open transaction.
        await sync_to_async(events_append, thread_sensitive=True)(records)
    else:
        # Under the ASGI server: one dedicated thread keeps one connection.
        await asyncio.get_running_loop().run_in_executor(_executor, events_append, records)


writer = GroupCommitWriter()


async def event_write(record: AuditRecord) -> None:
    """Store one finished request durably (the proxy's single entry point into the audit log)."""
    await writer.write(record)
