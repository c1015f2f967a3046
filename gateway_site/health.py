"""Liveness and readiness probes for load balancers and orchestrators."""
from __future__ import annotations

from asgiref.sync import sync_to_async
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, JsonResponse

from gateway_site.lib import redisclient


async def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive and its event loop answers."""
    return JsonResponse({"status": "ok"})


def _check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return exc.__class__.__name__
    finally:
        # A failed connection must not be reused for the next check.
        connection.close_if_unusable_or_obsolete()
    return None


def _check_cache() -> str | None:
    if not redisclient.configured():
        return None
    try:
        cache.set("readyz:probe", "1", timeout=5)
        if cache.get("readyz:probe") != "1":
            return "cache did not return what was written"
    except Exception as exc:
        return exc.__class__.__name__
    return None


async def readyz(request: HttpRequest) -> JsonResponse:
    """Ready to serve: the database and (when configured) Redis are reachable."""
    database = await sync_to_async(_check_database, thread_sensitive=False)()
    redis = await sync_to_async(_check_cache, thread_sensitive=False)()
    checks = {
        "database": "ok" if database is None else f"error: {database}",
        "redis": ("ok" if redis is None else f"error: {redis}") if redisclient.configured() else "not configured",
    }
    ready = database is None and redis is None
    return JsonResponse({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)
