"""Group commit: one insert for the audit rows of concurrent requests (issue #7).

Each request hands its record to this process's writer and waits until the
transaction holding its row has committed; only then is its answer released.
Records that arrive while the previous batch is being committed (or within
`TOLLGATE_AUDIT_BATCH_WINDOW_MS` of the first one; 0 by default, since a commit
takes longer than the gap between requests under load anyway) share one
transaction, so under load the cost of a commit, its fsync and a lane head's
lock is shared by the whole batch instead of paid per request; the writers of other
workers and nodes hold other lanes meanwhile (audit.chain, issue #18). The insert itself runs in a thread: the
event loop never blocks on the database.

Each request gets its own outcome (issue #15): a row the database refuses because of its values
is isolated and stored in a reduced form (audit.services.events_append_each), so its batch's other
requests are answered as usual, and no data error reaches them as a DatabaseError, which the proxy
would take for an outage. An outage (connection refused or lost) still fails every row it kept out.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import AsyncToSync, sync_to_async
from django.conf import settings

from audit.services import AuditRecord, events_append_each

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
                    results = await _in_db_thread([record for record, _ in batch])
                except Exception as exc:
                    logger.exception("audit batch of %d events could not be written", len(batch))
                    results = [exc] * len(batch)
                failed = sum(error is not None for error in results)
                if failed:
                    logger.error("audit: %d of a batch of %d events could not be written: %s", failed, len(batch),
                                 next(error for error in results if error is not None))
                self.batches += 1
                self.rows += len(batch) - failed
                for (_, future), error in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(error)
        except asyncio.CancelledError:
            # The loop is shutting down: nobody will answer these requests.
            for _, future in batch + self._pending:
                future.cancel()
            self._pending = []
            raise
        finally:
            self._task = None


_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")


async def _in_db_thread(records: list[AuditRecord]) -> list[Exception | None]:
    """Each record's outcome: None once committed, or the error that kept it out."""
    if asyncio.get_running_loop() in AsyncToSync.loop_thread_executors:
        # Called through async_to_sync (tests, management commands): use the
        # caller's thread, and with it its connection and open transaction.
        return await sync_to_async(events_append_each, thread_sensitive=True)(records)
    # Under the ASGI server: one dedicated thread keeps one connection.
    return await asyncio.get_running_loop().run_in_executor(_executor, events_append_each, records)


writer = GroupCommitWriter()


async def event_write(record: AuditRecord) -> None:
    """Store one finished request durably (the proxy's single entry point into the audit log)."""
    await writer.write(record)
