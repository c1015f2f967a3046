"""Writes to the audit log: appending events to the chain, policies, retention.

AuditRecord (from audit.records) is re-exported: the proxy hands its records over from here."""
from __future__ import annotations

import hashlib
import itertools
import logging
import os
import threading
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from functools import cache
from pathlib import Path

import orjson
from django.conf import settings
from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
    transaction,
)
from django.db.models import F, Max, Min
from django.utils import timezone

from audit.anchors import anchored_until
from audit.chain import CHAIN_FIELDS, FORMAT, chain_signing_key, event_hash, head_fields
from audit.exports import FIELD_NAMES, export_chunks
from audit.models import AuditChainHead, AuditEvent, AuditExport, AuditSinkCursor
from audit.partitions import partition_drop, partition_newest, partitioned, partitions_list
from audit.records import AuditRecord, event_values, reduced_values
from audit.selectors import events_in_range
from audit.storable import clean_text

logger = logging.getLogger(__name__)


SEQUENCE = "audit_event_seq"  # PostgreSQL: where every lane draws `seq` (created by migration 0008)
_NEXTVAL = f"SELECT nextval('{SEQUENCE}') FROM generate_series(1, %s)"  # noqa: S608 (a constant name)
_local = threading.local()
_lane_picks = itertools.count()


def _preferred_lane() -> int:
    """The lane this thread waits for when every lane is busy: spread over processes and threads."""
    pick = getattr(_local, "pick", None)
    if pick is None:
        pick = _local.pick = os.getpid() + next(_lane_picks)
    return pick % settings.TOLLGATE_AUDIT_LANES


def lane_heads_ensure() -> None:
    """Create the heads of the configured lanes that do not exist yet (idempotent)."""
    AuditChainHead.objects.bulk_create([AuditChainHead(pk=lane + 1) for lane in range(settings.TOLLGATE_AUDIT_LANES)],
                                       ignore_conflicts=True)


def _lane_locked() -> AuditChainHead:
    """The first lane head no other transaction holds, locked until the end of the transaction
    (SKIP LOCKED: a writer never queues behind another while a lane is free); when all are busy,
    this thread's preferred lane, waited for. Heads are created if missing."""
    if connection.vendor == "sqlite":
        # Write first: a deferred transaction that reads before writing fails at
        # once (SQLITE_BUSY_SNAPSHOT) when another process committed meanwhile,
        # while one that starts by writing waits for the lock (busy timeout).
        AuditChainHead.objects.filter(pk=1).update(seq=F("seq"))
    heads = AuditChainHead.objects.filter(pk__lte=settings.TOLLGATE_AUDIT_LANES).order_by("pk")
    for _ in range(2):
        head = heads.select_for_update(skip_locked=True).first() or \
            AuditChainHead.objects.select_for_update().filter(pk=_preferred_lane() + 1).first()
        if head is not None:
            return head
        lane_heads_ensure()
    raise RuntimeError("audit: no chain head to lock")


def _seqs(count: int) -> list[int]:
    """`count` new values of `seq`, ascending; call with a lane locked, so that seq grows along each lane.
    PostgreSQL draws them from a sequence (no lock; a rolled back batch leaves a gap); SQLite, which
    holds its one write lock here, continues from the largest."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(_NEXTVAL, [count])
            return sorted(row[0] for row in cursor.fetchall())
        table = connection.ops.quote_name(AuditEvent._meta.db_table)
        cursor.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {table}")  # noqa: S608 (the model's table name)
        last = cursor.fetchone()[0]
    return list(range(last + 1, last + 1 + count))


def seq_sequence_sync() -> None:
    """Move PostgreSQL's `seq` sequence past the largest stored seq (after rows were inserted by hand
    or restored without it); nothing on SQLite."""
    if connection.vendor != "postgresql":
        return
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT setval('{SEQUENCE}', GREATEST(COALESCE((SELECT MAX(seq) FROM {table}), 0), "  # noqa: S608
                       f"(SELECT last_value FROM {SEQUENCE}), 1))")


_COLUMNS = (*CHAIN_FIELDS, "key_id", "hash")
_TIME = CHAIN_FIELDS.index("time")
_LANE_SEQ = CHAIN_FIELDS.index("lane_seq")


def _insert(rows: list[tuple]) -> None:
    """Insert sealed rows in one statement (COPY on PostgreSQL); the ORM's bulk_create
    costs several times more CPU per row than the whole rest of the audit write."""
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(c) for c in _COLUMNS)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # The COPY bypasses Django's cursor wrapper: its errors are mapped here, so a refused
            # value is a DataError and a lost connection an OperationalError, as for any query.
            with connection.wrap_database_errors, cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            adapt = connection.ops.adapt_datetimefield_value
            rows = [(*row[:_TIME], adapt(row[_TIME]), *row[_TIME + 1:]) for row in rows]
            placeholders = ", ".join(["%s"] * len(_COLUMNS))
            # Table and column names come from the model; every value is a bound parameter.
            cursor.executemany(f"INSERT INTO {table} ({columns}) VALUES ({placeholders})", rows)  # noqa: S608


def _chain(values: list[tuple], seqs: list[int], lane: int, place: int, prev: str) -> list[tuple]:
    """Sealed rows of one lane, in _COLUMNS order: each row's seq and prev_hash, its values, its
    format, lane and place in the lane, then the key id and its own hash."""
    key_id, key = chain_signing_key()
    rows = []
    for row, seq in zip(values, seqs, strict=True):
        place += 1
        chained = (seq, prev, *row, FORMAT, lane, place)
        prev = event_hash(chained, key=key)
        rows.append((*chained, key_id, prev))
    return rows


def _append(values: list[tuple], progress: list[str]) -> None:
    with transaction.atomic():
        if not settings.TOLLGATE_AUDIT_SYNCHRONOUS_COMMIT and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        head = _lane_locked()
        rows = _chain(values, _seqs(len(values)), head.lane, head.seq, head.hash)
        _insert(rows)
        AuditChainHead.objects.filter(pk=head.pk).update(
            **head_fields(rows[-1][_LANE_SEQ], rows[-1][-1], lane=head.lane))
        progress.append("committing")


@cache
def _sql() -> dict[str, str]:
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    head = connection.ops.quote_name(AuditChainHead._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(c) for c in _COLUMNS)
    placeholders = ", ".join(["%s"] * len(_COLUMNS))
    # Table and column names come from the models; every value is a bound parameter.
    return {
        "free": f"SELECT id, seq, hash FROM {head} WHERE id <= %s ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",  # noqa: S608
        "wait": f"SELECT id, seq, hash FROM {head} WHERE id = %s FOR UPDATE",  # noqa: S608
        "seqs": _NEXTVAL,
        "insert": f"INSERT INTO {table} ({columns}) VALUES ",  # noqa: S608
        "row": f"({placeholders})",
        "move": f"UPDATE {head} SET seq = %(seq)s, hash = %(hash)s, key_id = %(key_id)s, mac = %(mac)s "  # noqa: S608
                f"WHERE id = %(id)s",
    }


# Up to this many rows one INSERT rides with the COMMIT; more go by COPY, cheaper per row (measured).
_VALUES_ROWS = 2


def _append_pipelined(values: list[tuple], progress: list[str]) -> bool:
    """`_append` on PostgreSQL in two round trips instead of seven (psycopg's pipeline mode): BEGIN,
    the first free lane's lock and the new seqs go out together; once the head is known, the rows,
    the head's move and COMMIT (a larger batch is copied first). When every lane is busy, one more
    round trip waits for this thread's lane. For the writer thread, which holds no transaction.
    False if the lane heads do not exist yet (`_append` creates them)."""
    import psycopg

    sql = _sql()
    connection.ensure_connection()
    raw = connection.connection
    with connection.wrap_database_errors:
        try:
            with psycopg.Cursor(raw) as cursor, psycopg.Cursor(raw) as numbers:
                with raw.pipeline():
                    cursor.execute("BEGIN")
                    if not settings.TOLLGATE_AUDIT_SYNCHRONOUS_COMMIT:
                        cursor.execute("SET LOCAL synchronous_commit TO OFF")
                    cursor.execute(sql["free"], [settings.TOLLGATE_AUDIT_LANES])
                    numbers.execute(sql["seqs"], [len(values)])
                head = cursor.fetchone()
                if head is None:
                    # Every lane busy: wait for ours, and draw seqs once it is held (seq grows along a lane).
                    with raw.pipeline():
                        cursor.execute(sql["wait"], [_preferred_lane() + 1])
                        numbers.execute(sql["seqs"], [len(values)])
                    head = cursor.fetchone()
                if head is None:
                    cursor.execute("ROLLBACK")
                    return False
                lane_id, place, prev = head
                rows = _chain(values, sorted(row[0] for row in numbers.fetchall()), lane_id - 1, place, prev)
                if len(rows) > _VALUES_ROWS:
                    _insert(rows)  # COPY, on this connection and in this transaction
                with raw.pipeline():
                    if len(rows) <= _VALUES_ROWS:
                        cursor.execute(sql["insert"] + ", ".join([sql["row"]] * len(rows)),
                                       [value for row in rows for value in row])
                    cursor.execute(sql["move"], {"id": lane_id, **head_fields(rows[-1][_LANE_SEQ], rows[-1][-1],
                                                                                lane=lane_id - 1)})
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


def _append_committed(values: list[tuple]) -> None:
    """Append values to the chain in one transaction; returns once they are committed.

    Concurrent writers take different lanes (a writer waits only when every lane is
    held), so `lane_seq` order is commit order within a lane. A stale pooled connection (the database
    restarted) is replaced once, but only for a failure before the commit began:
    a failed commit may have succeeded, and retrying it could duplicate events.
    """
    for attempt in (1, 2):
        progress: list[str] = []
        try:
            pipelined = connection.vendor == "postgresql" and not connection.in_atomic_block
            if not (pipelined and _append_pipelined(values, progress)):
                _append(values, progress)
            return
        except (OperationalError, InterfaceError) as exc:
            if attempt == 2 or connection.in_atomic_block or progress:
                raise
            logger.warning("audit write failed (%s); retrying on a fresh connection", exc)
            connection.close()
        except DatabaseError:
            if not connection.in_atomic_block:
                connection.close_if_unusable_or_obsolete()
            raise


class AuditRowRefused(Exception):
    """The database refused even the reduced form of one request's row. Deliberately not a
    DatabaseError: the database is up, and the proxy takes a DatabaseError for an outage."""


def _is_data_error(exc: BaseException) -> bool:
    """Whether the rows' values caused `exc` (so a smaller batch can succeed), rather than the
    database or the connection (an outage, every row's alike: OperationalError, InterfaceError...)."""
    import psycopg

    if isinstance(exc, DataError | IntegrityError | psycopg.DataError | psycopg.IntegrityError):
        return True
    if isinstance(exc, DatabaseError | psycopg.Error):
        return False
    # A value the driver or the chain's HMAC cannot encode (a lone surrogate: UnicodeEncodeError,
    # orjson's TypeError), or an out-of-range number the driver refuses before sending it.
    return isinstance(exc, UnicodeError | TypeError | ValueError | OverflowError)


def _first_line(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def events_append_each(records: list[AuditRecord]) -> list[Exception | None]:
    """Append records to the chain; for each, None once its row is committed, or the exception
    that kept it out. Never raises for a database error: the caller answers each request.

    Normally one transaction holds them all. If the database refuses the batch because of a
    value (DataError, IntegrityError, or a value the driver cannot encode), the batch is split
    in halves and each half retried, down to the row at fault, which is then written in its
    reduced form (`reduced_values`): no request loses its row, or gets an error, because of
    another's. Each retry chains its rows anew under a lane head's lock (any free lane: a
    retry may land in another lane than the first try), so each lane's `lane_seq` and
    `prev_hash` stay contiguous. An outage (OperationalError, InterfaceError: the database is down or the
    connection lost) is every row's: each row not yet committed gets that error, as before.
    """
    values = [event_values(record) for record in records]
    results: list[Exception | None] = [None] * len(records)
    pending = [(0, len(records))]  # a stack of [lo, hi) ranges, the earliest on top: seq keeps arrival order
    while pending:
        lo, hi = pending.pop()
        try:
            _append_committed(values[lo:hi])
            continue
        except Exception as exc:
            if not _is_data_error(exc):
                for start, end in [(lo, hi), *pending]:
                    results[start:end] = [exc] * (end - start)
                break
            refused = exc
        if hi - lo > 1:
            mid = (lo + hi) // 2
            pending += [(mid, hi), (lo, mid)]
            continue
        record = records[lo]
        logger.warning("audit: the database refused the row of request %r (%s); storing its reduced form",
                       clean_text(str(record.request_id))[:64], refused.__class__.__name__)
        try:
            _append_committed([reduced_values(record, reason=_first_line(refused))])
        except Exception as exc:
            if not _is_data_error(exc):
                for start, end in [(lo, hi), *pending]:
                    results[start:end] = [exc] * (end - start)
                break
            logger.error("audit: the database refused even the reduced row of request %r: %s",
                         clean_text(str(record.request_id))[:64], _first_line(exc))
            results[lo] = AuditRowRefused(_first_line(exc))
    return results


def events_append(records: list[AuditRecord]) -> int:
    """Append records to the chain (as `events_append_each`); raises the first error that kept
    a row out, after writing every row that could be. Returns the number of rows written."""
    results = events_append_each(records)
    for error in results:
        if error is not None:
            raise error
    return len(records)


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
    heads = list(AuditChainHead.objects.order_by("id").values("id", "seq", "hash"))
    head = next((h for h in heads if h["id"] == 1), {"seq": 0, "hash": ""})
    manifest = {
        "day": day.isoformat(),
        "file": path.name,
        "format": fmt,
        "rows": stats["rows"],
        "sha256": sha256,
        "first_seq": bounds["first"],
        "last_seq": bounds["last"],
        "chain_head_seq": head["seq"],  # lane 0's, as before lanes
        "chain_head_hash": head["hash"],
        "chain_heads": [{"lane": h["id"] - 1, "seq": h["seq"], "hash": h["hash"]} for h in heads],
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
    """Remove events older than the retention period that were exported (and shipped); returns the count.

    Removes a prefix of each lane and moves the lane's start marker with it (`lane_prune_mark`), so
    audit_verify still checks that the oldest remaining event of each lane links to the last removed
    one. PostgreSQL drops whole partitions, once a signed anchor covers them too (`_partitions_prune`);
    SQLite deletes rows in chunks, lane by lane.
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
    if partitioned():
        return _partitions_prune(bound=bound)
    return sum(_lane_prune(head, bound=bound, chunk=chunk) for head in AuditChainHead.objects.order_by("id"))


def _shipped_lane_seq(lane: int) -> int | None:
    """The last event of the lane the sink has acknowledged; None without a sink."""
    if not settings.TOLLGATE_AUDIT_SINK_URL:
        return None
    return AuditSinkCursor.objects.filter(name="http", lane=lane).values_list("last_seq", flat=True).first() or 0


def _lane_prune(head: AuditChainHead, *, bound: datetime, chunk: int) -> int:
    events = AuditEvent.objects.filter(lane=head.lane)
    keep_from = events.filter(time__gte=bound).order_by("lane_seq").values_list("lane_seq", flat=True).first()
    stop = keep_from if keep_from is not None else head.seq + 1
    shipped = _shipped_lane_seq(head.lane)
    if shipped is not None:
        stop = min(stop, shipped + 1)
    deleted = 0
    start = head.pruned_seq
    while start + 1 < stop:
        end = min(stop - 1, start + chunk)
        with transaction.atomic():
            lane_prune_mark(lane=head.lane, through=end)
            deleted += events.filter(lane_seq__gt=start, lane_seq__lte=end).delete()[0]
        start = end
    return deleted


def _partitions_prune(*, bound: datetime) -> int:
    """Drop each partition whose events are all older than `bound`, shipped, and below the newest
    signed anchor, oldest first; returns the number of events dropped. Each drop and the lanes' new
    starts commit together. (A partition's newest time is one probe of its time index, where finding
    the first event to keep, as the DELETE path does, would read every older one.)"""
    anchored = anchored_until()
    stop = anchored + 1
    for head in AuditChainHead.objects.order_by("id"):
        shipped = _shipped_lane_seq(head.lane)
        if shipped is None:
            break
        unshipped = AuditEvent.objects.filter(lane=head.lane, lane_seq__gt=shipped).order_by(
            "lane_seq").values_list("seq", flat=True).first()
        if unshipped is not None:
            stop = min(stop, unshipped)
    if anchored == 0:
        logger.warning("audit retention: nothing dropped, no signed anchor yet (TOLLGATE_AUDIT_ANCHOR_KEY_FILE)")
    dropped = 0
    for partition in partitions_list():
        if partition.is_default or partition.high is None or partition.high > stop:
            break
        newest = partition_newest(partition)
        if newest is not None and newest >= bound:
            break
        try:
            with transaction.atomic():
                removed = AuditEvent.objects.filter(seq__lt=partition.high).filter(
                    **({"seq__gte": partition.low} if partition.low is not None else {})).count()
                lanes_prune_mark_below(seq=partition.high)
                partition_drop(partition)
        except OperationalError as exc:  # the lock timeout: a long read holds the table; next run
            logger.warning("audit retention: partition %s not dropped this time: %s", partition.name, exc)
            break
        dropped += removed
    return dropped


def lane_prune_mark(*, lane: int, through: int) -> None:
    """Record that lane `lane` now starts after its event `through`: call it in the transaction that
    removes that event and every one before it in the lane (rows deleted, or a partition dropped),
    so verification links the lane's oldest remaining event to the removed one's hash."""
    hash_ = AuditEvent.objects.filter(lane=lane, lane_seq=through).values_list("hash", flat=True).first()
    if hash_ is None:
        raise RuntimeError(f"audit retention: event {through} of lane {lane} is missing; run audit_verify")
    AuditChainHead.objects.filter(pk=lane + 1, pruned_seq__lt=through).update(pruned_seq=through, pruned_hash=hash_)


def lanes_prune_mark_below(*, seq: int) -> None:
    """`lane_prune_mark` for every lane before the events with seq < `seq` are removed at once (a
    dropped partition): seq grows along each lane, so they are a prefix of every lane."""
    for head in AuditChainHead.objects.order_by("id"):
        last = AuditEvent.objects.filter(lane=head.lane, seq__lt=seq).aggregate(last=Max("lane_seq"))["last"]
        if last is not None and last > head.pruned_seq:
            lane_prune_mark(lane=head.lane, through=last)
