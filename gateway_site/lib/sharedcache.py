"""One shared-cache client per process, for code on the request path.

`django.core.cache.cache` is context-local: under ASGI every request runs in a
fresh context and so gets a fresh cache object, which with Redis means a new
connection pool and a new TCP connection (and redis-py's driver lookup) per
request. Profiling showed that as one of the largest costs of a proxied
request. This module keeps one instance per process; redis-py's pool is
thread-safe, so the event loop and the worker threads share it.
"""
from __future__ import annotations

from typing import Any

from django.core.cache import DEFAULT_CACHE_ALIAS, BaseCache, caches
from django.core.signals import setting_changed
from django.dispatch import receiver

_instance: BaseCache | None = None


def shared_cache() -> BaseCache:
    global _instance
    if _instance is None:
        _instance = caches.create_connection(DEFAULT_CACHE_ALIAS)
    return _instance


class _SharedCacheProxy:
    """Forwards to shared_cache(), so modules can `from ... import cache` as with Django's."""

    def __getattr__(self, name: str) -> Any:
        return getattr(shared_cache(), name)


cache: Any = _SharedCacheProxy()


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs) -> None:
    # Tests that override CACHES (or where Redis is) get a client for the new settings.
    global _instance
    if setting in ("CACHES", "REDIS_URL", "TOLLGATE_REDIS_CLUSTER_NODES", "TOLLGATE_REDIS_SENTINELS"):
        _instance = None
