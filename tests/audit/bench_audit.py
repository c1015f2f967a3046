"""Measure the audit log's cost: the group-commit write per request, and the export rate.

Not part of the test suite. Run against a scratch database (it migrates it and
deletes its audit rows):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/audit_bench \\
        .venv/bin/python tests/audit/bench_audit.py [--rows 200000]

It drives the same writer the gateway uses, from one event loop (one worker),
with 1, 16 and 64 concurrent "requests" each writing one event after another.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_site.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-secret-key")
os.environ.setdefault("TOLLGATE_AUDIT_CHAIN_KEY", "bench-only-audit-chain-key")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402

from audit.exports import export_chunks  # noqa: E402
from audit.models import AuditChainHead, AuditEvent  # noqa: E402
from audit.selectors import events_in_range  # noqa: E402
from audit.services import AuditRecord, events_append  # noqa: E402
from audit.writer import GroupCommitWriter  # noqa: E402


def record(i: int) -> AuditRecord:
    return AuditRecord(
        time=datetime.now(UTC), request_id=f"req_bench{i:012d}", endpoint="chat.completions", status=200,
        consumer_id=1, consumer_name="bench", key_prefix="tg-abcdefg", route="demo", provider="sandbox",
        upstream_model="sandbox-model", prompt_tokens=12, completion_tokens=30, cost_micros=420, latency_us=1500,
        attempts=1, client_ip="127.0.0.1", user_agent="OpenAI/Python 1.50.0", body_mode="metadata",
        request_body={"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64},
    )


async def run_clients(clients: int, seconds: float, window_ms: float) -> dict:
    settings.TOLLGATE_AUDIT_BATCH_WINDOW_MS = window_ms
    writer = GroupCommitWriter()
    latencies: list[float] = []
    counter = iter(range(10**12))
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await writer.write(record(next(counter)))
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "clients": clients, "window_ms": window_ms, "rows_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000, "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "rows_per_batch": writer.rows / max(1, writer.batches),
    }


def export_rate(rows: int) -> dict:
    have = AuditEvent.objects.count()
    batch = [record(i) for i in range(5000)]
    while have < rows:
        events_append(batch[: min(5000, rows - have)])
        have = AuditEvent.objects.count()
    result = {"rows": rows}
    for fmt in ("jsonl", "csv"):
        started = time.perf_counter()
        size = sum(len(chunk) for chunk in export_chunks(events_in_range(), fmt))
        elapsed = time.perf_counter() - started
        result[f"{fmt}_rows_per_s"] = rows / elapsed
        result[f"{fmt}_mb"] = size / 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    AuditEvent.objects.all().delete()
    AuditChainHead.objects.all().delete()
    print(f"database: {settings.DATABASES['default']['ENGINE']}")
    for synchronous in (True, False):
        settings.TOLLGATE_AUDIT_SYNCHRONOUS_COMMIT = synchronous
        for window in (0.0, 1.0):
            for clients in (1, 16, 64):
                r = asyncio.run(run_clients(clients, args.seconds, window))
                print(f"sync commit {'on ' if synchronous else 'off'}, window {r['window_ms']:.0f} ms, "
                      f"{r['clients']:>2} clients: {r['rows_per_s']:>7,.0f} rows/s, write p50 {r['p50_ms']:.2f} ms, "
                      f"p99 {r['p99_ms']:.2f} ms, {r['rows_per_batch']:.1f} rows/batch")
    AuditEvent.objects.all().delete()
    AuditChainHead.objects.all().delete()
    r = export_rate(args.rows)
    print(f"export of {r['rows']:,} rows: JSONL {r['jsonl_rows_per_s']:,.0f} rows/s ({r['jsonl_mb']:.0f} MB), "
          f"CSV {r['csv_rows_per_s']:,.0f} rows/s ({r['csv_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
