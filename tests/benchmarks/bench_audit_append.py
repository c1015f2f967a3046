"""Audit appends per second with 1, 2 and 4 concurrent writers, on one lane and on four (issue #18).

Not part of the test suite. Run against a scratch PostgreSQL database (it migrates it and deletes its
audit rows):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/audit_bench \\
        .venv/bin/python tests/benchmarks/bench_audit_append.py [--seconds 3] [--batch 1]

Each writer is a process of its own with its own connection, as the writer thread of one gateway
worker is, appending batches of `--batch` events one after another (events_append: the pipelined
path). With one lane every batch of every writer locks the same head row; with four, a writer takes
the first head no other holds (SKIP LOCKED).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_site.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-secret-key")
os.environ.setdefault("TOLLGATE_AUDIT_CHAIN_KEY", "bench-only-audit-chain-key")
# One connection per writer process, no pool: a pool's threads do not survive a fork well (measured:
# a forked writer on a pool appended at half the rate of the same writer without one).
if "pool=" not in os.environ.get("DATABASE_URL", ""):
    url = os.environ.get("DATABASE_URL", "")
    os.environ["DATABASE_URL"] = url + ("&" if "?" in url else "?") + "pool=0"

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from audit.chain import chain_verify  # noqa: E402
from audit.models import AuditChainHead, AuditEvent  # noqa: E402
from audit.services import AuditRecord, events_append, lane_heads_ensure  # noqa: E402


def record(i: int) -> AuditRecord:
    return AuditRecord(
        time=datetime.now(UTC), request_id=f"req_bench{i:012d}", endpoint="chat.completions", status=200,
        consumer_id=1, consumer_name="bench", key_prefix="tg-abcdefg", route="demo", provider="sandbox",
        upstream_model="sandbox-model", prompt_tokens=12, completion_tokens=30, cost_micros=420, latency_us=1500,
        attempts=1, client_ip="127.0.0.1", user_agent="OpenAI/Python 1.50.0", body_mode="metadata",
        request_body={"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64},
        cache_read_tokens=8, cache_write_tokens=0, cache_write_1h_tokens=0, reasoning_tokens=0,
    )


def _disconnect() -> None:
    connection.close()
    if getattr(connection, "pool", None) is not None:
        connection.close_pool()  # a forked child must not use its parent's pooled connections


def writer(lanes: int, batch: int, start_at: float, stop_at: float, results: multiprocessing.Queue) -> None:
    settings.TOLLGATE_AUDIT_LANES = lanes
    n = os.getpid() * 10**6
    appended = 0
    while time.time() < start_at:
        time.sleep(0.001)
    while time.time() < stop_at:
        events_append([record(n + appended + j) for j in range(batch)])
        appended += batch
    _disconnect()
    results.put(appended)


def measure(lanes: int, writers: int, batch: int, seconds: float) -> float:
    settings.TOLLGATE_AUDIT_LANES = lanes
    lane_heads_ensure()
    _disconnect()
    results: multiprocessing.Queue = multiprocessing.Queue()
    start_at = time.time() + 0.5
    processes = [multiprocessing.Process(target=writer, args=(lanes, batch, start_at, start_at + seconds, results))
                 for _ in range(writers)]
    for process in processes:
        process.start()
    total = sum(results.get(timeout=seconds + 60) for _ in processes)
    for process in processes:
        process.join()
    return total / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=1, help="events per append (the writer's group commit)")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("run it on PostgreSQL (DATABASE_URL=postgres://...)")
    call_command("migrate", verbosity=0)
    print(f"audit appends/s, batches of {args.batch}, {args.seconds:.0f} s each, "
          f"synchronous_commit {'on' if settings.TOLLGATE_AUDIT_SYNCHRONOUS_COMMIT else 'off'}, "
          f"{os.cpu_count()} cores")
    print(f"{'lanes':>5} {'writers':>7} {'appends/s':>10}")
    for lanes in (1, 4):
        for writers in (1, 2, 4):
            AuditEvent.objects.all().delete()
            AuditChainHead.objects.all().delete()
            rate = measure(lanes, writers, args.batch, args.seconds)
            print(f"{lanes:>5} {writers:>7} {rate:>10.0f}", flush=True)
    report = chain_verify()
    print(f"chain verifies: {report.ok} ({report.checked} events, {report.problem or 'no problem'})")


if __name__ == "__main__":
    multiprocessing.set_start_method("fork")
    main()
