"""A burst of requests on one worker waits its turn to be admitted and settled (proxy.pipeline.redis_turn)
instead of queueing for the Redis pool until admission gives up and refuses it as if Redis were down."""
from __future__ import annotations

import asyncio

import orjson
import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, override_settings

HELLO = {"model": "demo", "messages": [{"role": "user", "content": "hello"}]}


@pytest.mark.django_db
@override_settings(TOLLGATE_REDIS_MAX_CONNECTIONS=4)
def test_at_most_three_quarters_of_the_redis_pool_admit_or_settle_at_once(personas, demo_route, monkeypatch):
    import proxy.pipeline

    admit, settle_start = proxy.pipeline.admit, proxy.pipeline.settle_start
    using_redis, most, settled = 0, 0, 0

    async def counted(call) -> None:
        nonlocal using_redis, most
        using_redis += 1
        most = max(most, using_redis)
        try:
            await asyncio.sleep(0.02)  # a Redis round trip on a busy worker
            await call()
        finally:
            using_redis -= 1

    async def counted_admit(ctx, body) -> None:
        await counted(lambda: admit(ctx, body))

    def counted_settle(ctx) -> asyncio.Task:
        async def settle() -> None:
            nonlocal settled
            settled += 1
            await settle_start(ctx)
        return asyncio.get_running_loop().create_task(counted(settle))

    monkeypatch.setattr(proxy.pipeline, "admit", counted_admit)
    monkeypatch.setattr(proxy.pipeline, "settle_start", counted_settle)

    async def burst() -> list[int]:
        client = AsyncClient()
        headers = {"Authorization": f"Bearer {personas.alice_key}"}
        responses = await asyncio.gather(*(
            client.post("/v1/chat/completions", data=orjson.dumps(HELLO), content_type="application/json",
                        headers=headers) for _ in range(8)))
        return [r.status_code for r in responses]

    statuses = async_to_sync(burst)()
    assert statuses == [200] * 8
    assert settled == 8
    assert most == 3  # three quarters of TOLLGATE_REDIS_MAX_CONNECTIONS: every request served, three at a time
