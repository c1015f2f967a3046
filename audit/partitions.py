"""The audit table's partitions on PostgreSQL (docs/audit.md#partitions): created ahead, dropped by retention.

`audit_auditevent` is partitioned by RANGE(seq), not by time: a partitioned table's primary key must
include the partition key, and the admin (like every `pk=` lookup) needs the single-column key `seq`.
Partition `audit_auditevent_p<N>` holds seq N .. N+rows-1; `audit_auditevent_p0` is the table as it
was before partitioning (attached whole by migration 0008, from MINVALUE); `audit_auditevent_default`
takes any row above the last range, so an append never fails for want of a partition, and
`partitions_ensure` moves such rows into the range partition it creates for them.

DDL here waits at most LOCK_TIMEOUT for its locks and then fails (the next beat run tries again):
a DDL statement queued behind a long read would otherwise hold every append queued behind itself.
SQLite (the quickstart) keeps one plain table: every function here does nothing there.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import connection, transaction

from audit.models import AuditEvent

TABLE = AuditEvent._meta.db_table
DEFAULT = f"{TABLE}_default"
LOCK_TIMEOUT = "2s"
# Any fixed number: serialises concurrent runs of partitions_ensure (two beat runs, or beat and a migration).
_ADVISORY_LOCK = 0x70617274  # "part"
_BOUND = re.compile(r"FROM \((MINVALUE|'?-?\d+'?)\) TO \((MAXVALUE|'?-?\d+'?)\)")


@dataclass(frozen=True)
class Partition:
    """One partition; `low` None is MINVALUE (the converted table), both None the DEFAULT partition."""

    name: str
    low: int | None
    high: int | None
    is_default: bool = False

    def holds(self, seq: int) -> bool:
        return not self.is_default and (self.low is None or self.low <= seq) and (
            self.high is None or seq < self.high)


def partitioned() -> bool:
    """Whether the audit table is a partitioned table (PostgreSQL after migration 0008)."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [TABLE])
        row = cursor.fetchone()
    return row is not None and row[0] == "p"


def _bound(text: str) -> int | None:
    return None if text in ("MINVALUE", "MAXVALUE") else int(text.strip("'"))


def partitions_list() -> list[Partition]:
    """The partitions, by range (the DEFAULT partition last); empty unless partitioned."""
    if not partitioned():
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)", [TABLE])
        rows = cursor.fetchall()
    found = []
    for name, bound in rows:
        if bound == "DEFAULT":
            found.append(Partition(name, None, None, is_default=True))
            continue
        match = _BOUND.search(bound)
        if match is None:
            raise RuntimeError(f"audit partition {name} has a bound this code does not know: {bound}")
        found.append(Partition(name, _bound(match[1]), _bound(match[2])))
    return sorted(found, key=lambda p: (p.is_default, p.low is not None, p.low or 0))


def _lock_timeout(cursor) -> None:
    cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")


def _create(cursor, low: int, high: int) -> str:
    """Range partition [low, high): built apart and attached, which locks the parent only in SHARE UPDATE
    EXCLUSIVE mode (appends go on; CREATE TABLE ... PARTITION OF would lock them out). Rows of the
    range that went to the DEFAULT partition move into it first: PostgreSQL refuses the attach otherwise."""
    name = f"{TABLE}_p{low}"
    quoted, table, default = (connection.ops.quote_name(n) for n in (name, TABLE, DEFAULT))
    # Names come from the model and integers; nothing here is user input.
    cursor.execute(f"CREATE TABLE {quoted} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                   "INCLUDING STORAGE)")
    if _default_exists(cursor):
        cursor.execute(f"LOCK TABLE {default} IN ACCESS EXCLUSIVE MODE")
        cursor.execute(f"WITH moved AS (DELETE FROM {default} WHERE seq >= %s AND seq < %s RETURNING *) "  # noqa: S608
                       f"INSERT INTO {quoted} SELECT * FROM moved", [low, high])
    cursor.execute(f"ALTER TABLE {table} ATTACH PARTITION {quoted} FOR VALUES FROM ({int(low)}) TO ({int(high)})")
    return name


def _default_exists(cursor) -> bool:
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [DEFAULT])
    return bool(cursor.fetchone()[0])


def partitions_ensure(*, rows: int | None = None, ahead: int | None = None) -> list[str]:
    """Create range partitions until at least `ahead` empty ones lie above the highest stored seq
    (and one for every row the DEFAULT partition holds), and the DEFAULT partition if it is missing.
    Idempotent; returns the names created. Defaults: TOLLGATE_AUDIT_PARTITION_ROWS / _AHEAD."""
    if not partitioned():
        return []
    rows = rows or settings.TOLLGATE_AUDIT_PARTITION_ROWS
    ahead = ahead or settings.TOLLGATE_AUDIT_PARTITIONS_AHEAD
    created = []
    with transaction.atomic(), connection.cursor() as cursor:
        _lock_timeout(cursor)
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_ADVISORY_LOCK])
        if not _default_exists(cursor):
            default, table = connection.ops.quote_name(DEFAULT), connection.ops.quote_name(TABLE)
            cursor.execute(f"CREATE TABLE {default} PARTITION OF {table} DEFAULT")
            created.append(DEFAULT)
        ranges = [p for p in partitions_list() if not p.is_default]
        cursor.execute(f"SELECT coalesce(max(seq), 0) FROM {connection.ops.quote_name(TABLE)}")  # noqa: S608
        top = cursor.fetchone()[0]
        frontier = max((p.high for p in ranges if p.high is not None), default=1)
        empty = sum(1 for p in ranges if p.low is not None and p.low > top)
        while frontier <= top or empty < ahead:
            created.append(_create(cursor, frontier, frontier + rows))
            if frontier > top:
                empty += 1
            frontier += rows
    return created


def partition_drop(partition: Partition) -> None:
    """DETACH and DROP one range partition, in the caller's transaction (which records first what the
    chain needs to know about its rows). The detach locks the parent briefly (ACCESS EXCLUSIVE)."""
    if partition.is_default:
        raise ValueError("the DEFAULT partition is never dropped")
    table, quoted = connection.ops.quote_name(TABLE), connection.ops.quote_name(partition.name)
    with connection.cursor() as cursor:
        _lock_timeout(cursor)
        cursor.execute(f"ALTER TABLE {table} DETACH PARTITION {quoted}")
        cursor.execute(f"DROP TABLE {quoted}")


def partition_newest(partition: Partition) -> datetime | None:
    """The time of the partition's newest event (None if it is empty): one probe of its time index."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT max(time) FROM {connection.ops.quote_name(partition.name)}")  # noqa: S608
        return cursor.fetchone()[0]


@dataclass(frozen=True)
class PartitionStats:
    partition: Partition
    rows_estimate: int
    oldest: datetime | None
    newest: datetime | None


def partitions_stats() -> list[PartitionStats]:
    """Each partition with the planner's row estimate and its oldest and newest event time (admin health)."""
    stats = []
    with connection.cursor() as cursor:
        for partition in partitions_list():
            quoted = connection.ops.quote_name(partition.name)
            cursor.execute("SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass(%s)",
                           [partition.name])
            estimate = cursor.fetchone()[0]
            cursor.execute(f"SELECT min(time), max(time) FROM {quoted}")  # noqa: S608
            oldest, newest = cursor.fetchone()
            stats.append(PartitionStats(partition, estimate, oldest, newest))
    return stats
