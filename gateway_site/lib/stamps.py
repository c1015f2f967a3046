"""When a periodic job last ran: one shared-cache entry per job, written by the job itself.

On the ground floor so that any app's Celery task can stamp its run without importing the
roof; gateway_site.status reads the stamps back for the admin's health page and metrics.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from datetime import UTC, datetime

from django.core.cache import cache

logger = logging.getLogger(__name__)


def _stamp_key(job: str) -> str:
    return f"ops:last:{job}"


def stamp(job: str) -> None:
    """Record that `job` ran now, on this host (one cache write; never raises)."""
    try:
        cache.set(_stamp_key(job), {"at": time.time(), "host": socket.gethostname(), "pid": os.getpid()},
                  timeout=None)
    except Exception:
        logger.warning("could not record the run of %s", job, exc_info=True)


def last_stamp(job: str) -> datetime | None:
    """When `job` last stamped its run; None if it never did (or the cache lost it)."""
    value = cache.get(_stamp_key(job))
    if not isinstance(value, dict) or "at" not in value:
        return None
    return datetime.fromtimestamp(value["at"], tz=UTC)
