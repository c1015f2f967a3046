"""The gateway's own health: worker heartbeats, dependencies, and when background jobs last ran.

Each gateway worker writes a heartbeat (host, pid, start time) to the shared cache
every TOLLGATE_HEARTBEAT_SECONDS from a task started at ASGI lifespan startup;
Celery beat has a worker stamp the cache the same way (gateway_site.tasks), and
the budget reset job stamps its runs (both through gateway_site.lib.stamps, so that
no app imports this module). The admin's health page and the scrape-time metrics
(gateway_site/metrics.py) read them through `status_report()`; nothing here reads
the metrics, so the arrow runs one way.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from prometheus_client import Gauge

from gateway_site.lib import redisclient
from gateway_site.lib.stamps import last_stamp

logger = logging.getLogger(__name__)

WORKERS_KEY = "ops:workers"
# Workers not seen for this many heartbeats are shown as down, and forgotten after an hour.
STALE_AFTER_BEATS = 3
FORGET_AFTER_SECONDS = 3600

# Sampled by each worker's heartbeat below; exposed at /metrics with every other metric.
AUDIT_BACKLOG = Gauge("tollgate_audit_backlog", "Audit events waiting for their group commit (sampled).",
                      multiprocess_mode="livesum")


# --- Worker heartbeats --------------------------------------------------------------------


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _redis():
    # Django's Redis cache exposes no hash operations; a hash gives each worker its own
    # field, so concurrent heartbeats never overwrite each other.
    return cache._cache.get_client(WORKERS_KEY, write=True)  # type: ignore[attr-defined]


def heartbeat_write(started: float) -> None:
    entry = {"host": socket.gethostname(), "pid": os.getpid(), "started": started, "seen": time.time()}
    if redisclient.configured():
        client, key = _redis(), cache.make_key(WORKERS_KEY)
        client.hset(key, worker_id(), json.dumps(entry))
        client.expire(key, FORGET_AFTER_SECONDS)
    else:  # a local-memory cache is one process's: nobody else writes this key
        workers = cache.get(WORKERS_KEY) or {}
        workers[worker_id()] = entry
        cache.set(WORKERS_KEY, workers, timeout=FORGET_AFTER_SECONDS)


def heartbeat_remove() -> None:
    if redisclient.configured():
        _redis().hdel(cache.make_key(WORKERS_KEY), worker_id())
    else:
        workers = cache.get(WORKERS_KEY) or {}
        workers.pop(worker_id(), None)
        cache.set(WORKERS_KEY, workers, timeout=FORGET_AFTER_SECONDS)


def _worker_entries() -> list[dict]:
    if redisclient.configured():
        client, key = _redis(), cache.make_key(WORKERS_KEY)
        raw = client.hgetall(key)
        entries = []
        for name, value in raw.items():
            entry = json.loads(value)
            if time.time() - entry.get("seen", 0) > FORGET_AFTER_SECONDS:
                client.hdel(key, name)
            else:
                entries.append(entry)
        return entries
    return list((cache.get(WORKERS_KEY) or {}).values())


def audit_backlog_sample() -> None:
    """Publish this worker's group-commit queue length (the heartbeat calls it every few seconds)."""
    from audit.writer import writer

    AUDIT_BACKLOG.set(len(writer._pending))


async def heartbeat_loop() -> None:
    """Runs in every gateway worker for its lifetime (started by gateway_site.asgi)."""
    started = time.time()
    write = sync_to_async(heartbeat_write, thread_sensitive=False)
    while True:
        try:
            await write(started)
        except Exception:
            logger.warning("worker heartbeat could not be written", exc_info=True)
        audit_backlog_sample()
        await asyncio.sleep(settings.TOLLGATE_HEARTBEAT_SECONDS)


# --- The report ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str
    millis: float


@dataclass(frozen=True)
class Worker:
    host: str
    pid: int
    started: datetime
    seen: datetime
    up: bool


@dataclass(frozen=True)
class StatusReport:
    workers: list[Worker]
    database: Check
    redis: Check | None  # None: not configured (local-memory cache)
    celery_heartbeat: datetime | None
    budget_reset: datetime | None
    audit_export: datetime | None
    audit_export_day: str | None
    now: datetime = field(default_factory=lambda: datetime.now(tz=UTC))


def _timed(check) -> Check:
    started = time.perf_counter()
    try:
        detail = check()
    except Exception as exc:
        return Check(False, f"{exc.__class__.__name__}: {str(exc)[:200]}", (time.perf_counter() - started) * 1000)
    return Check(True, detail, (time.perf_counter() - started) * 1000)


def database_check() -> Check:
    def probe() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return connection.vendor

    try:
        return _timed(probe)
    finally:
        # A broken connection must not serve the next check (inside a transaction it is not ours).
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


def redis_check() -> Check | None:
    if not redisclient.configured():
        return None

    def probe() -> str:
        _redis().ping()
        return "ping"

    return _timed(probe)


def workers(now: float | None = None) -> list[Worker]:
    now = now or time.time()
    stale = STALE_AFTER_BEATS * settings.TOLLGATE_HEARTBEAT_SECONDS
    out = [
        Worker(host=e["host"], pid=e["pid"], started=datetime.fromtimestamp(e["started"], tz=UTC),
               seen=datetime.fromtimestamp(e["seen"], tz=UTC), up=now - e["seen"] <= stale)
        for e in _worker_entries()
    ]
    return sorted(out, key=lambda w: (not w.up, w.host, w.pid))


def status_report() -> StatusReport:
    """Sync: reads the database and the cache (a scrape or an admin page, never the request path)."""
    from audit.models import AuditExport

    database = database_check()
    redis = redis_check()
    cache_ok = redis is None or redis.ok
    export = AuditExport.objects.order_by("-created_at").first() if database.ok else None
    return StatusReport(
        workers=workers() if cache_ok else [],
        database=database,
        redis=redis,
        celery_heartbeat=last_stamp("celery_heartbeat") if cache_ok else None,
        budget_reset=last_stamp("budget_reset") if cache_ok else None,
        audit_export=export.created_at if export else None,
        audit_export_day=export.day.isoformat() if export else None,
    )
