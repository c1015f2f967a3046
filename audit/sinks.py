"""The HTTP sink: ship audit events to an external collector, like APISIX's http-logger.

Events are read lane by lane, in chain order after a cursor per lane (the last
lane_seq the collector acknowledged: lanes commit independently, so a cursor over
`seq` could pass a row still being committed in another lane), and POSTed as a JSON
array of export records, at most TOLLGATE_AUDIT_SINK_BATCH_SIZE per request, all of
one lane. A batch that fails is retried with exponential backoff; if the collector
stays down, the cursor does not move and the events wait for the next run, so
nothing is dropped. A cursor moves only after a 2xx, with a conditional UPDATE, so
two flushers cannot both advance it; each batch carries `X-Tollgate-Batch:
<first_seq>-<last_seq>` and `X-Tollgate-Lane` (and each event its `seq`, `lane` and
`lane_seq`) for collectors that deduplicate.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

import httpx
import orjson
from django.conf import settings
from django.core.cache import cache
from django.db.models import F

from audit.exports import EXPORT_COLUMNS, export_record
from audit.models import AuditChainHead, AuditEvent, AuditSinkCursor

logger = logging.getLogger(__name__)

SINK_NAME = "http"


class SinkError(Exception):
    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def _post(client: httpx.Client, url: str, payload: bytes, batch_id: str, lane: int | None = None) -> None:
    headers = {"content-type": "application/json", "x-tollgate-batch": batch_id}
    if lane is not None:
        headers["x-tollgate-lane"] = str(lane)
    if settings.TOLLGATE_AUDIT_SINK_AUTHORIZATION:
        headers["authorization"] = settings.TOLLGATE_AUDIT_SINK_AUTHORIZATION
    try:
        response = client.post(url, content=payload, headers=headers)
    except httpx.HTTPError as exc:
        raise SinkError(f"collector unreachable: {exc.__class__.__name__}") from None
    if response.status_code >= 400:
        # 4xx other than 408/429 will not get better by sending the same batch again.
        permanent = response.status_code < 500 and response.status_code not in (408, 429)
        raise SinkError(f"collector answered {response.status_code}", permanent=permanent)


def sink_post(payload: bytes, batch_id: str) -> None:
    """POST one document (an anchor) to the collector once; SinkError if it fails."""
    with httpx.Client(timeout=settings.TOLLGATE_AUDIT_SINK_TIMEOUT_SECONDS) as client:
        _post(client, settings.TOLLGATE_AUDIT_SINK_URL, payload, batch_id)


def sink_flush(*, max_seconds: float = 50.0, sleep: Callable[[float], None] = time.sleep) -> int:
    """Deliver pending events in batches until caught up, the collector fails, or time is up."""
    url = settings.TOLLGATE_AUDIT_SINK_URL
    if not url:
        return 0
    lock_key, token = f"audit:sink:{SINK_NAME}:lock", uuid.uuid4().hex
    if not cache.add(lock_key, token, timeout=int(max_seconds) + 60):
        return 0  # another worker is flushing
    try:
        return _flush(url, max_seconds=max_seconds, sleep=sleep)
    finally:
        if cache.get(lock_key) == token:
            cache.delete(lock_key)


def _flush(url: str, *, max_seconds: float, sleep: Callable[[float], None]) -> int:
    deadline = time.monotonic() + max_seconds
    delivered = 0
    lanes = AuditChainHead.objects.order_by("id").values_list("id", flat=True)
    with httpx.Client(timeout=settings.TOLLGATE_AUDIT_SINK_TIMEOUT_SECONDS) as client:
        for lane in [head_id - 1 for head_id in lanes]:
            cursor, _ = AuditSinkCursor.objects.get_or_create(name=SINK_NAME, lane=lane)
            sent, caught_up = _flush_lane(client, url, cursor, deadline=deadline, sleep=sleep)
            delivered += sent
            if not caught_up:
                break
    return delivered


def _flush_lane(client: httpx.Client, url: str, cursor: AuditSinkCursor, *, deadline: float,
                sleep: Callable[[float], None]) -> tuple[int, bool]:
    """Deliver one lane's pending events; the count, and whether the lane is caught up."""
    retries = settings.TOLLGATE_AUDIT_SINK_RETRIES
    backoff = settings.TOLLGATE_AUDIT_SINK_BACKOFF_SECONDS
    delivered = 0
    while time.monotonic() < deadline:
        rows = list(AuditEvent.objects.filter(lane=cursor.lane, lane_seq__gt=cursor.last_seq).order_by("lane_seq")
                    .values_list(*EXPORT_COLUMNS)[: settings.TOLLGATE_AUDIT_SINK_BATCH_SIZE])
        if not rows:
            return delivered, True
        records = [export_record(row) for row in rows]
        first, last = records[0]["seq"], records[-1]["seq"]
        payload = orjson.dumps(records)
        for attempt in range(retries + 1):
            try:
                _post(client, url, payload, f"{first}-{last}", cursor.lane)
                break
            except SinkError as exc:
                error = exc
                logger.warning("audit sink: lane %d batch %s-%s, attempt %d: %s", cursor.lane, first, last,
                               attempt + 1, exc)
                if exc.permanent or attempt == retries:
                    AuditSinkCursor.objects.filter(pk=cursor.pk).update(last_error=str(error)[:1000])
                    return delivered, False
                sleep(min(backoff * 2**attempt, 60.0))
        place = records[-1]["lane_seq"]
        moved = AuditSinkCursor.objects.filter(pk=cursor.pk, last_seq=cursor.last_seq).update(
            last_seq=place, delivered=F("delivered") + len(records), last_error="")
        if moved != 1:
            logger.warning("audit sink: cursor moved under us; stopping this run")
            return delivered, False
        cursor.last_seq = place
        delivered += len(records)
    return delivered, False
