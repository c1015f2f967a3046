"""Budgets and rate limits through the real server (gunicorn, uvicorn workers) on PostgreSQL and Redis."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import httpx
import pytest
import redis
from django.conf import settings
from django.db import connection

from budgets import counters
from budgets.keys import key_issue
from budgets.models import Budget, BudgetReservation, BudgetUsage, Consumer, RateLimit
from proxy.admission import estimate_prompt_tokens
from proxy.models import Deployment, ModelRoute, Provider
from proxy.sandbox import expected_usage
from tests.budgets.conftest import requires_postgres_and_redis
from tests.servers import database_url_for, free_port, sandbox_and_gateway, server_env

# Transactional: the server processes must see the rows this test writes.
pytestmark = [pytest.mark.e2e, requires_postgres_and_redis, pytest.mark.django_db(transaction=True)]

PROMPT = "Count the budget, every token of it. " * 10
BODY = {"model": "budgeted", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 5}


@contextmanager
def running_gateway(workers: int) -> Iterator[SimpleNamespace]:
    sandbox_port = free_port()
    env = server_env(DATABASE_URL=database_url_for(connection.settings_dict))
    provider = Provider.objects.create(name=f"budget-sandbox-{sandbox_port}", kind="sandbox",
                                       base_url=f"http://127.0.0.1:{sandbox_port}/v1",
                                       extra_headers={"x-sandbox-latency-ms": "50", "x-sandbox-chunk-delay-ms": "10"})
    route, _ = ModelRoute.objects.get_or_create(model="budgeted")
    Deployment.objects.filter(route=route).delete()
    Deployment.objects.create(route=route, provider=provider, upstream_model="sandbox-model")
    try:
        with sandbox_and_gateway(env=env, sandbox_port=sandbox_port, workers=workers) as running:
            yield running
    finally:
        ModelRoute.objects.filter(model="budgeted").delete()
        provider.delete()


async def fire(url: str, key: str, bodies: list[dict]) -> list[httpx.Response]:
    # No keep-alive: every request opens its own connection, so both workers get traffic.
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def one(body: dict) -> httpx.Response:
            response = await client.post("/v1/chat/completions", json=body,
                                         headers={"Authorization": f"Bearer {key}"})
            await response.aread()
            return response

        return await asyncio.gather(*(one(body) for body in bodies))


@pytest.fixture
def consumer(server_database, transactional_db) -> SimpleNamespace:
    created = Consumer.objects.create(name=f"budget-e2e-{free_port()}")
    return SimpleNamespace(consumer=created, key=key_issue(consumer=created, name="e2e").plaintext)


def test_concurrent_requests_never_overspend_a_token_budget(consumer):
    reserve = estimate_prompt_tokens(BODY) + BODY["max_tokens"]
    usage = expected_usage("openai", BODY)
    actual = usage.prompt_tokens + usage.completion_tokens
    limit = 10 * reserve  # admits about 10 of 50 (a little more: each settles below its hold)
    tokens = Budget.objects.create(consumer=consumer.consumer, metric="tokens", limit=limit, period="day")
    with running_gateway(workers=2) as gateway:
        bodies = [{**BODY, "stream": i % 2 == 1} for i in range(50)]
        responses = asyncio.run(fire(gateway.url, consumer.key, bodies))
        time.sleep(1.5)  # the workers write their database copy every 0.5 s
    statuses = [r.status_code for r in responses]
    served = statuses.count(200)
    assert statuses.count(429) + served == 50, statuses
    assert 10 <= served <= limit // actual, statuses
    for refused in (r for r in responses if r.status_code == 429):
        assert refused.json()["error"]["code"] == "budget_exceeded"
        assert "retry-after" in refused.headers
    usage_row = BudgetUsage.objects.get(budget=tokens)
    live = redis.Redis.from_url(settings.REDIS_URL)
    hash_key, holds_key = counters.budget_keys(counters.budget_slot(tokens), tokens.pk, usage_row.period_start)
    live_used, live_reserved = (int(v) for v in live.hmget(hash_key, "used", "reserved"))
    # Exact: each served request charged its real usage, streamed or not, and nothing more.
    assert usage_row.used == live_used == served * actual
    assert live_used <= limit
    # No hold outlived its request.
    assert live_reserved == 0 and live.zcard(holds_key) == 0
    assert not BudgetReservation.objects.filter(budget=tokens).exists()


def _served_under_rate_limit(consumer, workers: int) -> int:
    RateLimit.objects.create(consumer=consumer.consumer, requests=5, window_seconds=86_400)
    with running_gateway(workers=workers) as gateway:
        responses = asyncio.run(fire(gateway.url, consumer.key, [BODY] * 12))
    statuses = [r.status_code for r in responses]
    assert statuses.count(429) + statuses.count(200) == 12, statuses
    return statuses.count(200)


def test_a_rate_limit_is_the_same_with_one_worker(consumer):
    assert _served_under_rate_limit(consumer, workers=1) == 5


def test_a_rate_limit_is_the_same_with_two_workers(consumer):
    assert _served_under_rate_limit(consumer, workers=2) == 5
