"""Is the audit append cheaper from the event loop (psycopg AsyncConnection, pipeline mode) than
through the writer's thread hop (issue #18)? A prototype of the async append, measured against the
path the writer uses today; not wired into the gateway.

Not part of the test suite. Run against a scratch PostgreSQL database (it migrates it and deletes
its audit rows):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/audit_bench \\
        .venv/bin/python tests/benchmarks/bench_audit_async.py [--seconds 3]

One event loop, one task appending one event after another (each its own transaction: the writer's
batch of one), alternately through the writer's thread (today) and from the loop. Prints appends/s
and this process's CPU per append (the database server's CPU is the same for both: the same
statements in the same two round trips).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_site.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-secret-key")
os.environ.setdefault("TOLLGATE_AUDIT_CHAIN_KEY", "bench-only-audit-chain-key")

import django

django.setup()

import psycopg  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from audit import services  # noqa: E402
from audit.chain import chain_verify, head_fields  # noqa: E402
from audit.models import AuditChainHead, AuditEvent  # noqa: E402
from audit.records import event_values  # noqa: E402
from tests.benchmarks.bench_audit_append import record  # noqa: E402
from tests.servers import database_url_for  # noqa: E402


async def append_async(conn: psycopg.AsyncConnection, values: list[tuple]) -> None:
    """services._append_pipelined on an AsyncConnection: the same statements, the same two round trips."""
    sql = services._sql()
    async with conn.cursor() as cursor, conn.cursor() as numbers:
        async with conn.pipeline():
            await cursor.execute("BEGIN")
            if not settings.TOLLGATE_AUDIT_SYNCHRONOUS_COMMIT:
                await cursor.execute("SET LOCAL synchronous_commit TO OFF")
            await cursor.execute(sql["free"], [settings.TOLLGATE_AUDIT_LANES])
            await numbers.execute(sql["seqs"], [len(values)])
        head = await cursor.fetchone()
        if head is None:
            async with conn.pipeline():
                await cursor.execute(sql["wait"], [services._preferred_lane() + 1])
                await numbers.execute(sql["seqs"], [len(values)])
            head = await cursor.fetchone()
        lane_id, place, prev = head
        seqs = sorted(row[0] for row in await numbers.fetchall())
        rows = services._chain(values, seqs, lane_id - 1, place, prev)
        async with conn.pipeline():
            await cursor.execute(sql["insert"] + ", ".join([sql["row"]] * len(rows)),
                                 [value for row in rows for value in row])
            await cursor.execute(sql["move"], {"id": lane_id, **head_fields(rows[-1][services._LANE_SEQ],
                                                                              rows[-1][-1], lane=lane_id - 1)})
            await cursor.execute("COMMIT")


async def run(kind: str, tasks: int, seconds: float) -> tuple[float, float]:
    counter = iter(range(10**12))
    deadline = time.perf_counter() + seconds
    done = 0
    executor = ThreadPoolExecutor(max_workers=1)  # the writer's one thread, one connection
    url = database_url_for(connection.settings_dict)
    conns = [await psycopg.AsyncConnection.connect(url, autocommit=True) for _ in range(tasks)] \
        if kind == "async" else []

    async def task(i: int) -> None:
        nonlocal done
        loop = asyncio.get_running_loop()
        while time.perf_counter() < deadline:
            if kind == "async":
                await append_async(conns[i], [event_values(record(next(counter)))])
            else:
                results = await loop.run_in_executor(executor, services.events_append_each, [record(next(counter))])
                assert results == [None]
            done += 1

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(task(i) for i in range(tasks)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    for conn in conns:
        await conn.close()
    executor.shutdown()
    return done / wall, cpu / done * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("run it on PostgreSQL (DATABASE_URL=postgres://...)")
    call_command("migrate", verbosity=0)
    services.lane_heads_ensure()
    print(f"audit append from the event loop vs the thread hop; synchronous_commit "
          f"{'on' if settings.TOLLGATE_AUDIT_SYNCHRONOUS_COMMIT else 'off'}, {settings.TOLLGATE_AUDIT_LANES} lanes")
    print(f"{'path':>7} {'tasks':>5} {'appends/s':>10} {'CPU ms/append':>14}")
    for tasks in (1,):
        for kind in ("thread", "async", "thread", "async"):
            rate, cpu_ms = asyncio.run(run(kind, tasks, args.seconds))
            print(f"{kind:>7} {tasks:>5} {rate:>10.0f} {cpu_ms:>14.3f}", flush=True)
    report = chain_verify()
    print(f"chain verifies: {report.ok} ({report.checked} events, {report.problem or 'no problem'})")
    AuditEvent.objects.all().delete()
    AuditChainHead.objects.all().delete()


if __name__ == "__main__":
    main()
