"""Database calls from async code on the request path.

The proxy paths skip Django's per-request signals (gateway_site/asgi.py), which
is where Django normally returns connections and drops broken ones. So every
database call made from async proxy code goes through `run_db`: it runs the
function in the worker's thread for database work and releases the connection
afterwards (back to the pool on PostgreSQL), so a database restart costs the
next call a reconnect, never a stuck worker.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import DatabaseError, connections

P = ParamSpec("P")
R = TypeVar("R")


def connections_release() -> None:
    """Drop broken or expired connections; one inside a transaction is left to its owner."""
    for connection in connections.all(initialized_only=True):
        # Inside a transaction (a test's, or a caller's) the connection is not ours to close.
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


def _with_fresh_connection(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    connections_release()
    try:
        return fn(*args, **kwargs)
    finally:
        connections_release()


async def run_db(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a sync database function off the event loop, with a healthy connection."""
    return await sync_to_async(_with_fresh_connection)(fn, *args, **kwargs)


# --- Known down ---------------------------------------------------------------------
# After a failed database write (the audit row of a request), requests are refused up
# front instead of being served and then failing to be recorded: a stream, once
# started, could no longer become a clean 503. One probe every PROBE_SECONDS tells
# when the database is back.

PROBE_SECONDS = 0.5
_down_since: float | None = None
_last_probe = 0.0


def database_forget_down() -> None:
    """Back to assuming the database is up (tests start each case from a clean slate)."""
    global _down_since, _last_probe
    _down_since, _last_probe = None, 0.0


def database_mark_down() -> None:
    global _down_since
    if _down_since is None:
        _down_since = time.monotonic()


def _probe() -> None:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1")


async def database_usable() -> bool:
    """False while the database is known to be down; costs nothing while it is up."""
    global _down_since, _last_probe
    if _down_since is None:
        return True
    now = time.monotonic()
    if now - _last_probe < PROBE_SECONDS:
        return False
    _last_probe = now
    try:
        await run_db(_probe)
    except DatabaseError:
        return False
    _down_since = None
    return True
