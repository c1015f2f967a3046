"""gateway_site.lib.localcache: per-worker entries, and one load for a burst of misses."""
from __future__ import annotations

import asyncio

import pytest

from gateway_site.lib.localcache import LocalCache


def cache() -> LocalCache:
    return LocalCache("test-single-flight", ttl=60, recheck=60)


def test_concurrent_misses_share_one_load():
    calls = []

    async def load() -> str:
        calls.append(1)
        await asyncio.sleep(0.05)
        return "value"

    async def burst() -> list[str]:
        local = cache()
        first = await asyncio.gather(*(local.aget_or_load("k", load) for _ in range(200)))
        again = await local.aget_or_load("k", load)  # cached now
        return [*first, again]

    assert asyncio.run(burst()) == ["value"] * 201
    assert len(calls) == 1


def test_a_caller_that_leaves_does_not_cancel_the_load_of_the_others():
    async def load() -> int:
        await asyncio.sleep(0.05)
        return 7

    async def scenario() -> int:
        local = cache()
        leaver = asyncio.ensure_future(local.aget_or_load("k", load))
        stayer = asyncio.ensure_future(local.aget_or_load("k", load))
        await asyncio.sleep(0.01)
        leaver.cancel()
        return await stayer

    assert asyncio.run(scenario()) == 7


def test_a_failed_load_fails_its_waiters_and_the_next_miss_loads_again():
    attempts = []

    async def load() -> str:
        attempts.append(1)
        await asyncio.sleep(0.01)
        if len(attempts) == 1:
            raise ConnectionError("database down")
        return "back"

    async def scenario() -> tuple[list, str]:
        local = cache()
        failed = await asyncio.gather(*(local.aget_or_load("k", load) for _ in range(5)), return_exceptions=True)
        return failed, await local.aget_or_load("k", load)

    failed, recovered = asyncio.run(scenario())
    assert all(isinstance(f, ConnectionError) for f in failed)
    assert recovered == "back" and len(attempts) == 2


def test_a_load_begun_on_another_event_loop_is_not_awaited_here():
    local = cache()

    async def hanging() -> str:
        await asyncio.sleep(3600)
        return "never"

    async def begin() -> None:
        # Leaves a load in flight on a loop that then ends (as a test's loop does).
        asyncio.get_running_loop().create_task(local.aget_or_load("k", hanging))
        await asyncio.sleep(0)

    asyncio.run(begin())

    async def fresh() -> str:
        return "fresh"

    assert asyncio.run(asyncio.wait_for(local.aget_or_load("k", fresh), 2)) == "fresh"


@pytest.fixture(autouse=True)
def _no_shared_generation(monkeypatch):
    # These tests are about the loads; the shared generation check needs Redis or the cache.
    async def nothing(self) -> None:
        return None

    monkeypatch.setattr(LocalCache, "_sync_generation", nothing)
