"""A per-process cache in front of the database, invalidated across processes.

Entries live in this worker's memory for up to `ttl` seconds. Every process keeps
a copy of a *generation* number that lives in the shared cache (Redis in
production); a change to the underlying rows bumps it, and each worker checks it
at most every `recheck` seconds, without blocking the event loop, and drops its
entries when it moved. So the hot path reads neither the database nor Redis for
a cached entry, and a revoked key stops working everywhere within `recheck`
seconds.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from gateway_site.lib.sharedcache import cache

MISSING: Any = object()


class LocalCache:
    def __init__(self, namespace: str, *, ttl: float, recheck: float, max_entries: int = 10_000) -> None:
        self.namespace = namespace
        self.ttl = ttl
        self.recheck = recheck
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._generation: Any = MISSING
        self._checked_at = 0.0
        self._loading: dict[Hashable, asyncio.Future] = {}

    @property
    def _generation_key(self) -> str:
        return f"localcache:{self.namespace}:generation"

    async def _sync_generation(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < self.recheck:
            return
        self._checked_at = now
        try:
            generation = await cache.aget(self._generation_key)
        except Exception:
            # The shared cache is unreachable: we cannot know whether entries went
            # stale, so stop trusting them and fall back to the database.
            self._entries.clear()
            self._generation = MISSING
            return
        if generation != self._generation:
            self._entries.clear()
            self._generation = generation

    async def aget(self, key: Hashable) -> Any:
        """The cached value for key, or MISSING."""
        await self._sync_generation()
        entry = self._entries.get(key)
        if entry is None:
            return MISSING
        expires, value = entry
        if expires < time.monotonic():
            self._entries.pop(key, None)
            return MISSING
        self._entries.move_to_end(key)
        return value

    async def aget_or_load(self, key: Hashable, load: Callable[[], Awaitable[Any]]) -> Any:
        """The cached value for key, or else `load()`'s, stored. Concurrent misses of one key in this
        worker share one load: a burst of requests after a start or an expiry makes one database
        read, not one each (they would queue on the worker's single database thread)."""
        value = await self.aget(key)
        if value is not MISSING:
            return value
        loop = asyncio.get_running_loop()
        pending = self._loading.get(key)
        if pending is None or pending.get_loop() is not loop:  # tests run many loops
            pending = self._loading[key] = loop.create_task(self._load(key, load))
        # shield: a caller that goes away does not cancel the load the others wait for.
        return await asyncio.shield(pending)

    async def _load(self, key: Hashable, load: Callable[[], Awaitable[Any]]) -> Any:
        try:
            value = await load()
            self.set(key, value)
            return value
        finally:
            if self._loading.get(key) is asyncio.current_task():
                del self._loading[key]

    def set(self, key: Hashable, value: Any) -> None:
        self._entries[key] = (time.monotonic() + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear_local(self) -> None:
        self._entries.clear()

    def invalidate_everywhere(self) -> None:
        """Drop this namespace's entries in every worker (within `recheck` seconds)."""
        self._entries.clear()
        try:
            cache.incr(self._generation_key)
        except ValueError:
            # incr on a missing key raises; start the counter.
            cache.set(self._generation_key, 1, timeout=None)
        # Make this process re-read the generation on its next lookup.
        self._checked_at = 0.0
