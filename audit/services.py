"""Writes to the audit log: appending events to the chain, policies, retention."""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.db.models import F, Max, Min
from django.utils import timezone

from audit.chain import CHAIN_FIELDS, chain_key, event_hash
from audit.exports import FIELD_NAMES, export_chunks
from audit.models import AuditChainHead, AuditEvent, AuditExport, AuditSinkCursor, BodyMode
from audit.redaction import redact_cut, redactor
from audit.selectors import events_in_range

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class AuditRecord:
    """A finished request as the proxy hands it over: plain values, nothing redacted yet."""

    time: datetime
    request_id: str
    endpoint: str
    status: int | None = None
    error_class: str = ""
    consumer_id: int | None = None
    consumer_name: str = ""
    key_prefix: str = ""
    route: str = ""
    provider: str = ""
    upstream_model: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_micros: int = 0
    latency_us: int = 0
    ttft_us: int | None = None
    attempts: int = 0
    client_ip: str = ""
    user_agent: str = ""
    body_mode: str = BodyMode.NONE
    request_body: Any = None  # the parsed JSON request, bytes or text
    response_body: Any = None  # bytes sent to the client (already cut by capture_limit)
    usage_source: str | None = None  # "provider" | "estimated" | None (no usage)
    # Literal secrets to redact wherever they appear (e.g. the provider credential).
    secrets: tuple[str, ...] = field(default=(), repr=False)


# Request parameters kept in `metadata` mode: scalars only, never message content.
_METADATA_SKIP = frozenset({"messages", "system", "tools", "tool_choice", "functions", "contents", "prompt",
                            "input", "metadata", "user", "response_format", "prediction"})


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    return orjson.dumps(value, default=str).decode()


def _metadata(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    summary: dict[str, Any] = {}
    for name, value in body.items():
        if name in _METADATA_SKIP or not isinstance(name, str):
            continue
        if isinstance(value, bool | int | float) or value is None:
            summary[name] = value
        elif isinstance(value, str):
            summary[name] = value[:200]
    messages = body.get("messages")
    if isinstance(messages, list):
        summary["message_count"] = len(messages)
    tools = body.get("tools")
    if isinstance(tools, list):
        summary["tool_count"] = len(tools)
    return orjson.dumps(summary).decode()


def event_values(record: AuditRecord) -> tuple:
    """A record's column values in CHAIN_FIELDS order after seq and prev_hash:
    every text redacted, every value cut to its column."""
    s = record.secrets
    r = redactor()
    request_body = response_body = ""
    limit = settings.TOLLGATE_AUDIT_BODY_MAX_CHARS
    if record.body_mode == BodyMode.FULL:
        request_body = redact_cut(_as_text(record.request_body), limit=limit, secrets=s, using=r)
        response_body = redact_cut(_as_text(record.response_body), limit=limit, secrets=s, using=r)
    elif record.body_mode == BodyMode.METADATA:
        request_body = redact_cut(_metadata(record.request_body), limit=limit, secrets=s, using=r)
    return (
        record.time,
        record.request_id[:64],
        record.consumer_id,
        (record.consumer_name or "")[:100],
        r(record.key_prefix or "", s)[:16],
        r(record.route or "", s)[:200],
        (record.provider or "")[:100],
        r(record.upstream_model or "", s)[:200],
        (record.endpoint or "")[:50],
        record.status,
        (record.error_class or "")[:64],
        record.prompt_tokens,
        record.completion_tokens,
        int(record.cost_micros or 0),
        max(0, int(record.latency_us)),
        None if record.ttft_us is None else max(0, int(record.ttft_us)),
        min(max(0, record.attempts), 32767),
        (record.client_ip or "")[:45],
        r(record.user_agent or "", s)[:300],
        record.body_mode,
        request_body,
        response_body,
        record.usage_source or None,
    )


def _chain_head_locked() -> AuditChainHead:
    """The chain head, locked until the end of the transaction (created if missing)."""
    if connection.vendor == "sqlite":
        # Write first: a deferred transaction that reads before writing fails at
        # once (SQLITE_BUSY_SNAPSHOT) when another process committed meanwhile,
        # while one that starts by writing waits for the lock (busy timeout).
        AuditChainHead.objects.filter(pk=1).update(seq=F("seq"))
    head = AuditChainHead.objects.select_for_update().filter(pk=1).first()
    if head is None:
        AuditChainHead.objects.bulk_create([AuditChainHead(pk=1)], ignore_conflicts=True)
        head = AuditChainHead.objects.select_for_update().get(pk=1)
    return head


_COLUMNS = (*CHAIN_FIELDS, "hash")
_TIME = CHAIN_FIELDS.index("time")


def _insert(rows: list[tuple]) -> None:
    """Insert sealed rows in one statement (COPY on PostgreSQL); the ORM's bulk_create
    costs several times more CPU per row than the whole rest of the audit write."""
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(c) for c in _COLUMNS)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            adapt = connection.ops.adapt_datetimefield_value
            rows = [(*row[:_TIME], adapt(row[_TIME]), *row[_TIME + 1:]) for row in rows]
            placeholders = ", ".join(["%s"] * len(_COLUMNS))
            # Table and column names come from the model; every value is a bound parameter.
            cursor.executemany(f"INSERT INTO {table} ({columns}) VALUES ({placeholders})", rows)  # noqa: S608


def _chain(values: list[tuple], seq: int, prev: str) -> list[tuple]:
    """Sealed rows: each row's seq and prev_hash, then its values, then its own hash."""
    key = chain_key()
    rows = []
    for row in values:
        seq += 1
        chained = (seq, prev, *row)
        prev = event_hash(chained, key=key)
        rows.append((*chained, prev))
    return rows


def _append(values: list[tuple], progress: list[str]) -> None:
    with transaction.atomic():
        if not settings.TOLLGATE_AUDIT_SYNCHRONOUS_COMMIT and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        head = _chain_head_locked()
        rows = _chain(values, head.seq, head.hash)
        _insert(rows)
        AuditChainHead.objects.filter(pk=1).update(seq=rows[-1][0], hash=rows[-1][-1])
        progress.append("committing")


@cache
def _sql() -> dict[str, str]:
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    head = connection.ops.quote_name(AuditChainHead._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(c) for c in _COLUMNS)
    placeholders = ", ".join(["%s"] * len(_COLUMNS))
    # Table and column names come from the models; every value is a bound parameter.
    return {
        "head": f"SELECT seq, hash FROM {head} WHERE id = 1 FOR UPDATE",  # noqa: S608
        "insert": f"INSERT INTO {table} ({columns}) VALUES ",  # noqa: S608
        "row": f"({placeholders})",
        "move": f"UPDATE {head} SET seq = %s, hash = %s WHERE id = 1",  # noqa: S608
    }


# Up to this many rows one INSERT rides with the COMMIT; more go by COPY, cheaper per row (measured).
_VALUES_ROWS = 2


def _append_pipelined(values: list[tuple], progress: list[str]) -> bool:
    """`_append` on PostgreSQL in two round trips instead of six (psycopg's pipeline mode): BEGIN
    and the head's lock go out together; once the head is known, the rows, the head's move and
    COMMIT (a larger batch is copied first). For the writer thread, which holds no transaction.
    False if the head row does not exist yet (`_append` creates it)."""
    import psycopg

    sql = _sql()
    connection.ensure_connection()
    raw = connection.connection
    with connection.wrap_database_errors:
        try:
            with psycopg.Cursor(raw) as cursor:
                with raw.pipeline():
                    cursor.execute("BEGIN")
                    if not settings.TOLLGATE_AUDIT_SYNCHRONOUS_COMMIT:
                        cursor.execute("SET LOCAL synchronous_commit TO OFF")
                    cursor.execute(sql["head"])
                    head = cursor.fetchone()
                if head is None:
                    cursor.execute("ROLLBACK")
                    return False
                rows = _chain(values, *head)
                if len(rows) > _VALUES_ROWS:
                    _insert(rows)  # COPY, on this connection and in this transaction
                with raw.pipeline():
                    if len(rows) <= _VALUES_ROWS:
                        cursor.execute(sql["insert"] + ", ".join([sql["row"]] * len(rows)),
                                       [value for row in rows for value in row])
                    cursor.execute(sql["move"], (rows[-1][0], rows[-1][-1]))
                    progress.append("committing")
                    cursor.execute("COMMIT")
        except BaseException:
            if not raw.closed and raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                try:
                    raw.execute("ROLLBACK")
                except psycopg.Error:
                    pass
            raise
    return True


def events_append(records: list[AuditRecord]) -> int:
    """Append records to the chain in one transaction; returns once they are committed.

    Concurrent writers (other processes) wait on the chain head's row lock, so
    `seq` order is commit order. A stale pooled connection (the database
    restarted) is replaced once, but only for a failure before the commit began:
    a failed commit may have succeeded, and retrying it could duplicate events.
    """
    values = [event_values(record) for record in records]
    for attempt in (1, 2):
        progress: list[str] = []
        try:
            pipelined = connection.vendor == "postgresql" and not connection.in_atomic_block
            if not (pipelined and _append_pipelined(values, progress)):
                _append(values, progress)
            return len(values)
        except (OperationalError, InterfaceError) as exc:
            if attempt == 2 or connection.in_atomic_block or progress:
                raise
            logger.warning("audit write failed (%s); retrying on a fresh connection", exc)
            connection.close()
        except DatabaseError:
            if not connection.in_atomic_block:
                connection.close_if_unusable_or_obsolete()
            raise
    return len(values)



# --- Daily export -----------------------------------------------------------------


def _write_atomically(path: Path, chunks: Iterable[bytes]) -> str:
    """Write chunks to `path` via a temporary file, fsync and rename; returns the SHA-256."""
    digest = hashlib.sha256()
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as out:
        for chunk in chunks:
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    partial.replace(path)
    return digest.hexdigest()


def export_day(day: date, *, directory: Path, fmt: str) -> AuditExport:
    """Write one UTC day's events and its manifest; record it (once) in AuditExport."""
    since = datetime.combine(day, dtime.min, tzinfo=UTC)
    events = events_in_range(since=since, until=since + timedelta(days=1))
    stats: dict = {"rows": 0}
    path = directory / f"audit-{day.isoformat()}.{fmt}"
    sha256 = _write_atomically(path, export_chunks(events, fmt, stats=stats))
    bounds = events.aggregate(first=Min("seq"), last=Max("seq"))
    head = AuditChainHead.objects.filter(pk=1).values("seq", "hash").first() or {"seq": 0, "hash": ""}
    manifest = {
        "day": day.isoformat(),
        "file": path.name,
        "format": fmt,
        "rows": stats["rows"],
        "sha256": sha256,
        "first_seq": bounds["first"],
        "last_seq": bounds["last"],
        "chain_head_seq": head["seq"],
        "chain_head_hash": head["hash"],
        "fields": list(FIELD_NAMES),
        "created_at": timezone.now().isoformat(),
    }
    _write_atomically(directory / f"audit-{day.isoformat()}.manifest.json",
                      [orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"])
    export, _ = AuditExport.objects.get_or_create(
        day=day, defaults={"format": fmt, "path": str(path), "rows": stats["rows"], "sha256": sha256})
    return export


def export_daily_run(*, now: datetime | None = None) -> list[AuditExport]:
    """Export every complete day not exported yet, oldest first (idempotent; catches up).

    A day is complete TOLLGATE_AUDIT_EXPORT_DELAY_MINUTES after its end (events
    are dated when the request arrived, and are written when it finished).
    Export starts at the last exported day, or at the first event's day.
    """
    if not settings.TOLLGATE_AUDIT_EXPORT_DIR:
        return []
    directory = Path(settings.TOLLGATE_AUDIT_EXPORT_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    now = now or timezone.now()
    last_complete = (now - timedelta(minutes=settings.TOLLGATE_AUDIT_EXPORT_DELAY_MINUTES)).astimezone(UTC).date() \
        - timedelta(days=1)
    last = AuditExport.objects.order_by("-day").values_list("day", flat=True).first()
    if last is not None:
        day = last + timedelta(days=1)
    else:
        first_time = AuditEvent.objects.order_by("time").values_list("time", flat=True).first()
        if first_time is None:
            return []
        day = first_time.astimezone(UTC).date()
    done = []
    while day <= last_complete:
        done.append(export_day(day, directory=directory, fmt=settings.TOLLGATE_AUDIT_EXPORT_FORMAT))
        day += timedelta(days=1)
    return done


# --- Retention --------------------------------------------------------------------


def _exported_until() -> datetime | None:
    """The end of the last day exported without a gap, or None if nothing was exported."""
    last = AuditExport.objects.order_by("-day").values_list("day", flat=True).first()
    if last is None:
        return None
    return datetime.combine(last + timedelta(days=1), dtime.min, tzinfo=UTC)


def events_prune(*, now: datetime | None = None, chunk: int = 5000) -> int:
    """Delete events older than the retention period that were exported (and shipped); returns the count.

    Deletes a prefix of the chain (by seq) and moves the chain's start anchor
    with it, so audit_verify still checks that the oldest remaining event links
    to the last deleted one.
    """
    days = settings.TOLLGATE_AUDIT_RETENTION_DAYS
    if not days:
        return 0
    bound = (now or timezone.now()) - timedelta(days=days)
    exported = _exported_until()
    if exported is None:
        logger.warning("audit retention: nothing deleted, no daily export has been written yet")
        return 0
    bound = min(bound, exported)
    head = AuditChainHead.objects.filter(pk=1).first()
    if head is None:
        return 0
    keep_from = AuditEvent.objects.filter(time__gte=bound).order_by("seq").values_list("seq", flat=True).first()
    stop = keep_from if keep_from is not None else head.seq + 1
    if settings.TOLLGATE_AUDIT_SINK_URL:
        shipped = AuditSinkCursor.objects.filter(name="http").values_list("last_seq", flat=True).first() or 0
        stop = min(stop, shipped + 1)
    deleted = 0
    start = head.pruned_seq
    while start + 1 < stop:
        end = min(stop - 1, start + chunk)
        with transaction.atomic():
            anchor = AuditEvent.objects.filter(seq=end).values_list("hash", flat=True).first()
            if anchor is None:
                raise RuntimeError(f"audit retention: event {end} is missing; run audit_verify")
            deleted += AuditEvent.objects.filter(seq__gt=start, seq__lte=end).delete()[0]
            AuditChainHead.objects.filter(pk=1).update(pruned_seq=end, pruned_hash=anchor)
        start = end
    return deleted
