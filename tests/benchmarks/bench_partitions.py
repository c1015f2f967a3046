"""Measure the partitioned audit table (issue #18): the migration on a table holding rows, one append
per transaction on a plain vs a partitioned table, and retention by DELETE vs by dropping a partition.

Not part of the test suite. Run against a scratch PostgreSQL database (it migrates it and deletes
its audit rows):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/partition_bench \\
        .venv/bin/python tests/audit/bench_partitions.py [--rows 1000000]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_site.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-secret-key")
os.environ.setdefault("TOLLGATE_AUDIT_CHAIN_KEY", "bench-only-audit-chain-key")

import django

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test import override_settings  # noqa: E402

from audit.models import AuditChainHead  # noqa: E402
from audit.partitions import partition_drop, partitions_ensure, partitions_list  # noqa: E402
from audit.services import events_append  # noqa: E402
from tests.audit.conftest import records  # noqa: E402

FILL = """INSERT INTO audit_auditevent (seq, time, request_id, consumer_name, key_prefix, route, provider,
    upstream_model, endpoint, error_class, cost_micros, latency_us, attempts, client_ip, user_agent, body_mode,
    request_body, response_body, prev_hash, hash, lane, lane_seq)
  SELECT g, now() - interval '1 second' * (%(top)s - g), 'req_' || g, 'alice-agent', 'tg-abcdefg', 'demo',
    'sandbox', 'sandbox-model', 'chat.completions', '', 1234, 52000, 1, '127.0.0.1', 'bench', 'metadata', '', '',
    repeat('a', 64), repeat('b', 64), 0, g
  FROM generate_series(%(first)s, %(top)s) g"""


def sql(statement: str, params: dict | None = None) -> float:
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
    return time.perf_counter() - started


def appends(n: int) -> float:
    """Seconds per append of one row in its own transaction (the chain head's lock included)."""
    pending = records(n)
    # Without waiting for the WAL flush: the disk's fsync would hide what the partitioning costs.
    with override_settings(TOLLGATE_AUDIT_SYNCHRONOUS_COMMIT=False):
        started = time.perf_counter()
        for record in pending:
            events_append([record])
    return (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--appends", type=int, default=2000)
    args = parser.parse_args()
    rows = args.rows
    call_command("migrate", "audit", "0008", verbosity=0)  # before partitioning
    sql("TRUNCATE audit_auditevent, audit_auditchainhead")
    plain_append = appends(args.appends)
    sql("TRUNCATE audit_auditevent, audit_auditchainhead")
    sql(FILL, {"first": 1, "top": rows})
    sql("VACUUM ANALYZE audit_auditevent")
    size = connection.cursor()
    size.execute("SELECT pg_size_pretty(pg_total_relation_size('audit_auditevent'))")
    print(f"plain table: {rows:,} rows, {size.fetchone()[0]} with indexes")
    with override_settings(TOLLGATE_AUDIT_PARTITION_ROWS=rows // 2, TOLLGATE_AUDIT_PARTITIONS_AHEAD=2):
        started = time.perf_counter()
        call_command("migrate", "audit", verbosity=0)
        print(f"migration (attach the table as partition p0): {time.perf_counter() - started:.2f} s")
        sql(FILL, {"first": rows + 1, "top": rows + rows // 2})  # fills the first partition ahead
        partitions_ensure()
    sql("VACUUM ANALYZE audit_auditevent")
    # A DELETE of half a partition's worth of rows, as retention did, against dropping as many.
    deleted = sql("DELETE FROM audit_auditevent WHERE seq <= %(n)s", {"n": rows // 2})
    print(f"retention by DELETE of {rows // 2:,} rows: {deleted:.2f} s (and the dead rows stay until VACUUM)")
    started = time.perf_counter()
    with transaction.atomic():
        partition_drop(next(p for p in partitions_list() if p.low == rows + 1))
    print(f"retention by DETACH + DROP of a {rows // 2:,}-row partition: {time.perf_counter() - started:.3f} s")
    # Appends go on above the dropped partition, in the partition made ahead (the chain is not the point here).
    AuditChainHead.objects.update_or_create(pk=1, defaults={"seq": rows + rows // 2})
    partitioned_append = appends(args.appends)
    print(f"one append per transaction (synchronous_commit off): plain table {plain_append * 1e3:.3f} ms, "
          f"partitioned {partitioned_append * 1e3:.3f} ms ({args.appends} each)")


if __name__ == "__main__":
    main()
