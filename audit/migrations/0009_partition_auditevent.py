"""On PostgreSQL, audit_auditevent becomes a table partitioned by RANGE(seq) (issue #18, audit/partitions.py).

The existing table is not copied: it is renamed and attached whole as the first partition,
audit_auditevent_p0 (seq from MINVALUE up to the next multiple of TOLLGATE_AUDIT_PARTITION_ROWS),
so its rows, indexes and constraints stay where they are. The attach reads the table once to check
the bound (a sequential scan, no write), while the migration holds the table's lock: appends wait
for it. Then the DEFAULT partition and TOLLGATE_AUDIT_PARTITIONS_AHEAD empty partitions above it.
Going back copies every row into a plain table again. SQLite: nothing changes.

Self-contained on purpose (no import of audit.partitions): a migration must keep doing what it did.
"""
from django.conf import settings
from django.db import migrations

TABLE = "audit_auditevent"
FIRST = "audit_auditevent_p0"
DEFAULT = "audit_auditevent_default"


def _is_partitioned(cursor) -> bool:
    cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [TABLE])
    row = cursor.fetchone()
    return row is not None and row[0] == "p"


def _indexes(cursor) -> list[tuple[str, str, bool]]:
    """(name, CREATE INDEX statement, is the primary key) of the audit table's indexes."""
    cursor.execute(
        "SELECT i.relname, pg_get_indexdef(x.indexrelid), x.indisprimary FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = to_regclass(%s) ORDER BY i.relname", [TABLE])
    return cursor.fetchall()


def _recreate(cursor, indexes: list[tuple[str, str, bool]]) -> None:
    for name, definition, primary in indexes:
        if primary:
            cursor.execute(f'ALTER TABLE "{TABLE}" ADD CONSTRAINT "{name}" PRIMARY KEY (seq)')
        else:
            cursor.execute(definition.replace(" ON ONLY ", " ON "))


def partition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    rows = getattr(settings, "TOLLGATE_AUDIT_PARTITION_ROWS", 5_000_000)
    ahead = getattr(settings, "TOLLGATE_AUDIT_PARTITIONS_AHEAD", 2)
    with schema_editor.connection.cursor() as cursor:
        if _is_partitioned(cursor):
            return
        cursor.execute(f'LOCK TABLE "{TABLE}" IN ACCESS EXCLUSIVE MODE')
        cursor.execute(f'SELECT coalesce(max(seq), 0) FROM "{TABLE}"')  # noqa: S608
        top = cursor.fetchone()[0]
        # The first seq above the stored ones that starts a partition (seq 1, rows + 1, 2 * rows + 1, ...).
        high = ((top + rows - 1) // rows if top > 0 else 1) * rows + 1
        indexes = _indexes(cursor)
        cursor.execute(f'ALTER TABLE "{TABLE}" RENAME TO "{FIRST}"')
        # Index names are unique per schema: the partitioned table's indexes take the Django names.
        for name, _, _ in indexes:
            short = name.removeprefix(f"{TABLE}_").removeprefix("audit_")
            cursor.execute(f'ALTER INDEX "{name}" RENAME TO "{f"{FIRST}_{short}"[:63]}"')
        cursor.execute(f'CREATE TABLE "{TABLE}" (LIKE "{FIRST}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
                       "INCLUDING STORAGE INCLUDING COMMENTS) PARTITION BY RANGE (seq)")
        _recreate(cursor, indexes)
        # The old table's indexes match the new ones and are attached to them, not rebuilt.
        cursor.execute(f'ALTER TABLE "{TABLE}" ATTACH PARTITION "{FIRST}" FOR VALUES FROM (MINVALUE) TO ({high})')
        cursor.execute(f'CREATE TABLE "{DEFAULT}" PARTITION OF "{TABLE}" DEFAULT')
        for low in range(high, high + ahead * rows, rows):
            cursor.execute(f'CREATE TABLE "{TABLE}_p{low}" PARTITION OF "{TABLE}" '
                           f"FOR VALUES FROM ({low}) TO ({low + rows})")


def unpartition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        if not _is_partitioned(cursor):
            return
        cursor.execute(f'LOCK TABLE "{TABLE}" IN ACCESS EXCLUSIVE MODE')
        indexes = _indexes(cursor)
        plain = f"{TABLE}_plain"
        cursor.execute(f'CREATE TABLE "{plain}" (LIKE "{TABLE}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
                       "INCLUDING STORAGE INCLUDING COMMENTS)")
        cursor.execute(f'INSERT INTO "{plain}" SELECT * FROM "{TABLE}"')  # noqa: S608
        cursor.execute(f'DROP TABLE "{TABLE}"')  # and its partitions
        cursor.execute(f'ALTER TABLE "{plain}" RENAME TO "{TABLE}"')
        _recreate(cursor, indexes)


class Migration(migrations.Migration):

    dependencies = [
        ('audit', '0008_chain_format_lanes'),
    ]

    operations = [
        migrations.RunPython(partition, unpartition, elidable=False),
    ]
