"""Database calls from async code on the request path.

The proxy paths skip Django's per-request signals (gateway_site/asgi.py), which
is where Django normally returns connections and drops broken ones. So every
database call made from async proxy code goes through `run_db`: it runs the
function in the worker's thread for database work and releases the connection
afterwards (back to the pool on PostgreSQL), so a database restart costs the
next call a reconnect, never a stuck worker.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import connections

P = ParamSpec("P")
R = TypeVar("R")


def _release_connections() -> None:
    for connection in connections.all(initialized_only=True):
        # Inside a transaction (a test's, or a caller's) the connection is not ours to close.
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


def _with_fresh_connection(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    _release_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        _release_connections()


async def run_db(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a sync database function off the event loop, with a healthy connection."""
    return await sync_to_async(_with_fresh_connection)(fn, *args, **kwargs)
