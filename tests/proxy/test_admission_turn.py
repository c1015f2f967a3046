"""A burst of requests on one worker waits its turn to be admitted (proxy.pipeline.admission_turn)
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
def test_at_most_half_the_redis_pool_admits_at_once_and_the_rest_wait(personas, demo_route, monkeypatch):
    import proxy.pipeline

    admit = proxy.pipeline.admit
    admitting, most = 0, 0

    async def counted_admit(ctx, body) -> None:
        nonlocal admitting, most
        admitting += 1
        most = max(most, admitting)
        try:
            await asyncio.sleep(0.02)  # a Redis round trip on a busy worker
            await admit(ctx, body)
        finally:
            admitting -= 1

    monkeypatch.setattr(proxy.pipeline, "admit", counted_admit)

    async def burst() -> list[int]:
        client = AsyncClient()
        headers = {"Authorization": f"Bearer {personas.alice_key}"}
        responses = await asyncio.gather(*(
            client.post("/v1/chat/completions", data=orjson.dumps(HELLO), content_type="application/json",
                        headers=headers) for _ in range(8)))
        return [r.status_code for r in responses]

    statuses = async_to_sync(burst)()
    assert statuses == [200] * 8
    assert most == 2  # TOLLGATE_REDIS_MAX_CONNECTIONS // 2: every request admitted, two at a time
